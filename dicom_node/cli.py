"""``gliomaseg node``, ``echo``, ``jobs`` and ``job`` (``classify`` lives in classify_cli.py)."""

from __future__ import annotations

import json
import signal
import sys
from datetime import datetime
from typing import Any

import click

from config.cli import settings_from
from config.errors import GliomasegError, TransientError
from config.settings import Peer


@click.command("node")
@click.pass_context
def node(ctx: click.Context) -> None:
    """Run the DICOM listener: receive, spool, decide completion, queue jobs."""
    settings = settings_from(ctx)
    from dicom_node.service import Node

    n = Node(settings)

    def _stop(signum: int, _frame: Any) -> None:
        n._stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    n.serve_forever()


@click.command("echo")
@click.argument("target", nargs=-1, required=True)
@click.option("--calling-ae", default=None, help="Our AE title (default: dicom.ae_title).")
@click.option("--timeout", "timeout_s", default=10.0, show_default=True, help="Seconds.")
@click.pass_context
def echo(
    ctx: click.Context, target: tuple[str, ...], calling_ae: str | None, timeout_s: float
) -> None:
    """C-ECHO a peer: a configured peer NAME, or HOST PORT AE_TITLE."""
    settings = settings_from(ctx)
    from dicom_node import scu

    if len(target) == 1:
        peer = settings.peer(target[0])
    elif len(target) == 3:
        try:
            peer = Peer(ae_title=target[2], host=target[0], port=int(target[1]))
        except Exception as exc:
            raise click.UsageError(
                f"expected HOST PORT AE_TITLE, got {' '.join(target)}: {exc}"
            ) from None
    else:
        raise click.UsageError("give a configured peer NAME, or HOST PORT AE_TITLE")
    try:
        scu.echo(peer, calling_ae=calling_ae or settings.dicom.ae_title, timeout_s=timeout_s)
    except TransientError as exc:
        click.echo(f"gliomaseg echo: {exc}", err=True)
        sys.exit(1)
    click.echo(f"C-ECHO {peer.ae_title}@{peer.host}:{peer.port}: Success")


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@click.command("jobs")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.option("--state", default=None, help="Only jobs in this state.")
@click.option("--calling-ae", default=None, help="Only jobs from this calling AE title.")
@click.option("--since", default=None, help="Created at or after (ISO time).")
@click.option("--limit", default=100, show_default=True)
@click.pass_context
def jobs(
    ctx: click.Context,
    as_json: bool,
    state: str | None,
    calling_ae: str | None,
    since: str | None,
    limit: int,
) -> None:
    """List jobs, newest first."""
    settings = settings_from(ctx)
    from dicom_node.jobs import JobState, JobStore

    if state is not None and state not in JobState.__members__:
        raise click.BadParameter(
            f"{state!r}; expected one of {', '.join(JobState)}", param_hint="--state"
        )
    store = JobStore(settings.database_url)
    found = store.list(state=state, calling_ae=calling_ae, since=_when(since), limit=limit)
    if as_json:
        click.echo(json.dumps([j.summary() for j in found], indent=2))
        return
    if not found:
        click.echo("no jobs")
        return
    click.echo(f"{'id':16}  {'state':15}  {'created':25}  {'from':16}  reason")
    for j in found:
        click.echo(
            f"{j.id:16}  {j.state.value:15}  {j.created.isoformat(timespec='seconds'):25}  "
            f"{j.calling_ae or '-':16}  {j.reason or ''}"
        )


@click.command("job")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (job + audit events).")
@click.pass_context
def job(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show one job: state, roles, steps, outputs, deliveries and its audit trail."""
    settings = settings_from(ctx)
    from dicom_node.jobs import JobStore

    store = JobStore(settings.database_url)
    try:
        j = store.get(job_id)
    except GliomasegError as exc:
        click.echo(f"gliomaseg job: {exc}", err=True)
        sys.exit(1)
    data = j.to_json()
    data["audit"] = store.audit_events(job_id=j.id)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if isinstance(value, list | dict):
            click.echo(f"{key}:")
            for line in json.dumps(value, indent=2).splitlines():
                click.echo(f"  {line}")
        else:
            click.echo(f"{key}: {value}")
