"""``gliomaseg config check`` and the helper every subcommand uses to read its settings."""

from __future__ import annotations

import json
import sys

import click

from config.errors import ConfigError
from config.logs import setup_logging
from config.settings import Settings, load_settings


def settings_from(ctx: click.Context, *, logs: bool = True) -> Settings:
    """Load the settings once per process (from --config / env), or exit 1 with every error."""
    root = ctx.find_root()
    root.ensure_object(dict)
    cached = root.obj.get("settings")
    if cached is not None:
        return cached
    try:
        settings = load_settings(root.obj.get("config_path"))
    except ConfigError as exc:
        click.echo(f"gliomaseg: {exc}", err=True)
        sys.exit(1)
    if logs:
        setup_logging(settings.logging.level)
    root.obj["settings"] = settings
    return settings


@click.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML-like text.")
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Print the effective configuration (secrets masked), or every error (exit 1)."""
    settings = settings_from(ctx, logs=False)
    data = settings.masked()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for section, values in data.items():
        click.echo(f"[{section}]")
        if isinstance(values, dict):
            for key, value in values.items():
                click.echo(f"{key} = {json.dumps(value)}")
        click.echo("")
