"""Click commands ``gliomaseg prepare``, ``train``, ``evaluate`` and ``segment``."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

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
@click.option("--scan-quality-aug/--no-scan-quality-aug", default=False, show_default=True,
              help="Also augment with Gaussian noise, blur and a simulated low resolution "
                   "(nnU-Net's probabilities: 0.1, 0.2, 0.25).")  # fmt: skip
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
@click.option("--init-from", "init_from", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Without a checkpoint in WORK, start from this bundle's weights "
                                 "(e.g. the shipped one) instead of from zero.")  # fmt: skip
@click.pass_context
def train(ctx: click.Context, data: Path, out: Path, work: Path | None, steps: int, patch: str, batch_size: int,
          lr: float, tumour_prob: float, val_every: int, base_filters: int, depth: int, norm: str, seed: int,
          threads: int, device: str, validation: str | None, version: str, budget_min: float,
          init_from: Path | None, scan_quality_aug: bool) -> None:  # fmt: skip
    """Train the 3D U-Net on a prepared .npz; the best weights go to the bundle folder OUT."""
    settings_from(ctx)
    from model.network import NetworkConfig
    from model.train import DEFAULT_VALIDATION, TrainConfig
    from model.train import train as run

    cfg = TrainConfig(
        steps=steps, budget_min=budget_min, patch_size=_triple(patch, int), batch_size=batch_size, lr=lr, tumour_prob=tumour_prob,
        val_every=val_every, scan_quality_aug=scan_quality_aug, seed=seed, threads=threads, device=device, version=version,
        validation=tuple(validation.split(",")) if validation else DEFAULT_VALIDATION,
        network=NetworkConfig(base_filters=base_filters, depth=depth, norm=norm),
    )  # fmt: skip
    div = cfg.network.divisor
    if any(p % div for p in cfg.patch_size):
        raise click.BadParameter(
            f"patch sizes must be multiples of {div} for depth {depth}; got {cfg.patch_size}"
        )
    work = work or out.parent / f"{out.name}-work"
    best = run(data, out, work, cfg, init_from=init_from)
    click.echo(json.dumps(best, indent=2))


def _load_bundle_or_exit(path: Path, device: str):
    from config.errors import BundleError
    from model.bundle import load_bundle

    try:
        return load_bundle(path, device=device)
    except BundleError as exc:
        click.echo(f"gliomaseg: {exc}", err=True)
        sys.exit(2)


@click.command("evaluate")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of BraTS case folders (either naming); cases without labels are skipped.")  # fmt: skip
@click.option("--bundle", "bundle_path", type=click.Path(path_type=Path), default=None,
              help="Model bundle folder (default: settings model.bundle).")  # fmt: skip
@click.option("--json", "json_out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cases", default=None, help="Comma-separated case ids to evaluate (default: all).")
@click.option(
    "--tta/--no-tta",
    default=None,
    help="Mirror test-time augmentation (default: settings model.tta).",
)
@click.pass_context
def evaluate(ctx: click.Context, data_dir: Path, bundle_path: Path | None, json_out: Path, cases: str | None,
             tta: bool | None) -> None:  # fmt: skip
    """Segment every labelled case in DATA and report BraTS Dice, HD95, sensitivity, specificity, volumes."""
    settings = settings_from(ctx)
    import time

    from model.data import find_cases, load_case
    from model.inference import predict_case
    from model.metrics import evaluate_case, mean_metrics

    bundle = _load_bundle_or_exit(bundle_path or settings.model.bundle, settings.model.device)
    if settings.model.threads:
        import torch

        torch.set_num_threads(settings.model.threads)
    use_tta = settings.model.tta if tta is None else tta
    wanted = set(cases.split(",")) if cases else None
    results = []
    for files in find_cases(data_dir):
        if wanted is not None and files.case_id not in wanted:
            continue
        if files.seg is None:
            click.echo(f"warning: {files.case_id}: no label file, skipped", err=True)
            continue
        case = load_case(files)
        assert case.labels is not None  # files.seg was checked above
        t0 = time.monotonic()
        pred = predict_case(bundle, case.images, case.spacing_mm, tta=use_tta)
        seconds = time.monotonic() - t0
        m = evaluate_case(pred, case.labels, case.spacing_mm)
        results.append({"case": files.case_id, **m, "inference_s": round(seconds, 2)})
        d = m["dice"]
        click.echo(f"{files.case_id}: Dice WT {d['WT']:.3f} TC {d['TC']:.3f} ET {d['ET']:.3f} "
                   f"HD95 WT {m['hd95']['WT']:.1f} mm ({seconds:.1f} s)")  # fmt: skip
    report: dict[str, Any] = {
        "bundle": {"name": bundle.name, "version": bundle.version, "path": str(bundle.path)},
        "settings": {"tta": use_tta, "device": str(bundle.device)},
        "mean": mean_metrics(results),
        "cases": results,
    }
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(report, indent=2) + "\n")
    if results:
        d = report["mean"]["dice"]
        click.echo(
            f"mean over {len(results)} cases: Dice WT {d['WT']:.3f} TC {d['TC']:.3f} ET {d['ET']:.3f}"
        )
    else:
        click.echo("no labelled cases found", err=True)


@click.command("segment")
@click.argument(
    "case_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option("--t1", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--t1c", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--t2", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--flair", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--name",
    default=None,
    help="Case name for the output files (default: folder or T1c file name).",
)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--bundle", "bundle_path", type=click.Path(path_type=Path), default=None)
@click.option("--tta/--no-tta", default=None)
@click.pass_context
def segment(ctx: click.Context, case_dir: Path | None, t1: Path | None, t1c: Path | None, t2: Path | None,
            flair: Path | None, name: str | None, out_dir: Path, bundle_path: Path | None,
            tta: bool | None) -> None:  # fmt: skip
    """Segment one case without a PACS: OUT/<case>_seg.nii.gz (labels 1/2/4, T1c grid) + an overlay PNG."""
    settings = settings_from(ctx)
    from model.data import CaseError, CaseFiles, case_files, load_case
    from model.inference import predict_case
    from model.render import overlay_png, write_labels_like

    given = {"T1": t1, "T1c": t1c, "T2": t2, "FLAIR": flair}
    if case_dir is not None:
        if any(given.values()):
            raise click.UsageError("give either CASE_DIR or --t1/--t1c/--t2/--flair, not both")
        try:
            files = case_files(case_dir)
        except CaseError as exc:
            raise click.UsageError(str(exc)) from exc
    else:
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise click.UsageError(
                f"need CASE_DIR or all of --t1 --t1c --t2 --flair; missing {', '.join(missing)}"
            )
        stem = t1c.name.split(".nii")[0]  # type: ignore[union-attr]
        files = CaseFiles(name or stem, "2018", {k: v for k, v in given.items()}, None)  # type: ignore[misc]
    try:
        case = load_case(files, with_labels=False)
    except CaseError as exc:
        raise click.UsageError(str(exc)) from exc
    bundle = _load_bundle_or_exit(bundle_path or settings.model.bundle, settings.model.device)
    use_tta = settings.model.tta if tta is None else tta
    labels = predict_case(bundle, case.images, case.spacing_mm, tta=use_tta)
    case_name = name or files.case_id
    out_dir.mkdir(parents=True, exist_ok=True)
    seg_path = write_labels_like(labels, files.images["T1c"], out_dir / f"{case_name}_seg.nii.gz")
    png_path = overlay_png(
        case.images["T1c"], case.images["FLAIR"], labels, out_dir / f"{case_name}_overlay.png"
    )
    vols = {k: float((labels == v).sum() * float(__import__("numpy").prod(case.spacing_mm)) / 1000)
            for k, v in (("necrotic", 1), ("edema", 2), ("enhancing", 4))}  # fmt: skip
    click.echo(
        f"wrote {seg_path} and {png_path}; volumes ml: "
        + ", ".join(f"{k} {v:.1f}" for k, v in vols.items())
    )
