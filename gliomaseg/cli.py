"""``gliomaseg``: one command, a subcommand per capability.

Each subcommand lives with the package it starts and is imported only when used, so
``gliomaseg config check`` or ``gliomaseg node`` never import torch.
"""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click command
SUBCOMMANDS: dict[str, str] = {
    "config": "config.cli:config_group",
    "node": "dicom_node.cli:node",
    "echo": "dicom_node.cli:echo",
    "classify": "dicom_node.classify_cli:classify",
    "jobs": "dicom_node.cli:jobs",
    "job": "dicom_node.cli:job",
    "worker": "worker.cli:worker",
    "serve": "worker.cli:serve",
    "resend": "worker.cli:resend",
    "retry": "worker.cli:retry",
    "prepare": "model.cli:prepare",
    "train": "model.cli:train",
    "evaluate": "model.cli:evaluate",
    "segment": "model.cli:segment",
    "web": "web.cli:web",
    "demo": "web.demo:demo",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None  # not built yet
            raise
        return getattr(module, attr, None)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="GLIOMASEG_CONFIG",
    help="TOML configuration file (env GLIOMASEG_CONFIG). Environment variables override it.",
)
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """gliomaseg: automatic glioma segmentation next to your PACS."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


def main() -> None:
    cli(obj={})
