"""Click commands ``gliomaseg prepare``, ``train``, ``evaluate`` and ``segment``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from config.cli import settings_from

log = logging.getLogger(__name__)


def _triple(value: str, kind=float) -> tuple:
    parts = [kind(v) for v in value.replace("x", ",").split(",") if v.strip()]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3:
        raise click.BadParameter(f"need one value or three (a,b,c); got {value!r}")
    return tuple(parts)


@click.command("prepare")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of BraTS case folders (2017-2021 or 2023+ naming).")  # fmt: skip
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The .npz to write.")  # fmt: skip
@click.option(
    "--spacing-mm", default="2", show_default=True, help="Training voxel size, one value or three."
)
@click.pass_context
def prepare(ctx: click.Context, data_dir: Path, out: Path, spacing_mm: str) -> None:
    """Crop, resample, normalise and quantise labelled BraTS cases into one compressed .npz."""
    settings_from(ctx)
    from tqdm import tqdm

    from model.prepare import prepare_dataset

    meta = prepare_dataset(
        data_dir, out, _triple(spacing_mm), progress=lambda it: tqdm(it, desc="prepare")
    )
    click.echo(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {len(meta['cases'])} cases)")


@click.command("train")
@click.option("--data", "data", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The .npz written by `gliomaseg prepare`.")  # fmt: skip
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Bundle folder that receives the best weights.")  # fmt: skip
@click.option("--work", "work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for checkpoint.pt and train_log.jsonl (default: OUT/../<name>-work). "
                   "Training resumes from its checkpoint.")  # fmt: skip
@click.option("--steps", default=3000, show_default=True)
@click.option(
    "--budget-min",
    default=0.0,
    show_default=True,
    help="If > 0, the LR schedule and the run also end after this many minutes of training.",
)
@click.option(
    "--patch", default="80", show_default=True, help="Patch size in voxels, one value or three."
)
@click.option("--batch-size", default=1, show_default=True)
@click.option("--lr", default=2e-3, show_default=True)
@click.option(
    "--tumour-prob", default=0.33, show_default=True, help="Share of patches centred on tumour."
)
@click.option("--val-every", default=150, show_default=True)
@click.option("--base-filters", default=16, show_default=True)
@click.option("--depth", default=4, show_default=True)
@click.option(
    "--norm",
    default="instance",
    type=click.Choice(["instance", "batch", "group"]),
    show_default=True,
)
@click.option("--seed", default=42, show_default=True)
@click.option(
    "--threads", default=2, show_default=True, help="CPU threads for torch (0: torch's default)."
)
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--validation",
    default=None,
    help="Comma-separated validation case ids (default: the 3 fixed ones).",
)
@click.option("--version", "version", default="0.1.0", show_default=True)
@click.pass_context
def train(ctx: click.Context, data: Path, out: Path, work: Path | None, steps: int, patch: str, batch_size: int,
          lr: float, tumour_prob: float, val_every: int, base_filters: int, depth: int, norm: str, seed: int,
          threads: int, device: str, validation: str | None, version: str, budget_min: float) -> None:  # fmt: skip
    """Train the 3D U-Net on a prepared .npz; the best weights go to the bundle folder OUT."""
    settings_from(ctx)
    from model.network import NetworkConfig
    from model.train import DEFAULT_VALIDATION, TrainConfig
    from model.train import train as run

    cfg = TrainConfig(
        steps=steps, budget_min=budget_min, patch_size=_triple(patch, int), batch_size=batch_size, lr=lr, tumour_prob=tumour_prob,
        val_every=val_every, seed=seed, threads=threads, device=device, version=version,
        validation=tuple(validation.split(",")) if validation else DEFAULT_VALIDATION,
        network=NetworkConfig(base_filters=base_filters, depth=depth, norm=norm),
    )  # fmt: skip
    div = cfg.network.divisor
    if any(p % div for p in cfg.patch_size):
        raise click.BadParameter(
            f"patch sizes must be multiples of {div} for depth {depth}; got {cfg.patch_size}"
        )
    work = work or out.parent / f"{out.name}-work"
    best = run(data, out, work, cfg)
    click.echo(json.dumps(best, indent=2))
