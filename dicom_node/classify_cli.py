"""``gliomaseg classify DIR [--json]``: which series is T1, T1c, T2 and FLAIR, and why."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from config.cli import settings_from


@click.command("classify")
@click.argument(
    "directory", type=click.Path(exists=True, file_okay=False, dir_okay=True, path_type=Path)
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print {"roles": {...}, "series": [...]} as JSON.',
)
@click.pass_context
def classify(ctx: click.Context, directory: Path, as_json: bool) -> None:
    """Classify the DICOM series under DIRECTORY (recursive) with the configured admin rules.

    Prints the chosen series per role and a reason for every series. Exit status 0 when
    DIRECTORY holds DICOM series (even if a role is missing), 1 when it holds none.
    """
    from dicom_node.classify import assign_roles, series_infos_from_dir

    settings = settings_from(ctx)
    infos = series_infos_from_dir(directory)
    if not infos:
        click.echo(f"gliomaseg: no DICOM series found under {directory}", err=True)
        sys.exit(1)
    result = assign_roles(infos, settings.classify.rules)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    numbers = {d.series_uid: d for d in result.series}
    for role, uid in result.roles.items():
        if uid is None:
            click.echo(f"{role.value:6s} missing")
        else:
            d = numbers[uid]
            click.echo(f"{role.value:6s} series {d.series_number} '{d.description}'  {uid}")
    click.echo("")
    for d in result.series:
        shown = d.role.value if d.role is not None else "-"
        click.echo(f"#{d.series_number!s:>5} {shown:6s} {d.description[:40]:40s} {d.reason}")
    if result.missing():
        click.echo("")
        click.echo("missing: " + ", ".join(r.value for r in result.missing()))
