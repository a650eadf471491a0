"""``gliomaseg web``: serve the dashboard and REST API alone (``gliomaseg serve`` runs it too)."""

from __future__ import annotations

import click

from config.cli import settings_from


@click.command("web")
@click.option("--bind", default=None, help="Address to listen on (default: web.bind, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="TCP port (default: web.port, 8080).")
@click.pass_context
def web(ctx: click.Context, bind: str | None, port: int | None) -> None:
    """Serve the web dashboard and REST API (needs GLIOMASEG_WEB__TOKEN, else one is generated)."""
    import uvicorn

    from web.app import create_app

    settings = settings_from(ctx)
    app = create_app(settings)
    host = bind or settings.web.bind
    port = port or settings.web.port
    click.echo(f"gliomaseg web: http://{host}:{port}/", err=True)
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
