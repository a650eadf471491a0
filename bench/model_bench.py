"""Inference time and peak memory for one 240x240x155 BraTS case, with and without mirror TTA.

Each configuration runs in a fresh process so that its peak resident memory (ru_maxrss) is its own.
Writes ``bench/results/model_bench.json`` and prints a table. Needs a bundle (default: the shipped
one) and a case (default: $GLIOMASEG_TEST_DATA/brats/Brats18_TCIA02_370_1).

    .venv/bin/python -m bench.model_bench [--case DIR] [--bundle DIR] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_CASE = "brats/Brats18_TCIA02_370_1"


def one(case: Path, bundle: Path, device: str, tta: bool, threads: int) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from model.bundle import load_bundle
    from model.data import case_files, load_case
    from model.inference import predict_case

    b = load_bundle(bundle, device=device)
    c = load_case(case_files(case), with_labels=False)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if b.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    labels = predict_case(b, c.images, c.spacing_mm, tta=tta)
    if b.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    out = {
        "device": str(b.device),
        "tta": tta,
        "threads": torch.get_num_threads(),
        "shape": list(labels.shape),
        "inference_s": round(seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_loading_mb": round(rss_before, 1),
    }
    if b.device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", type=Path, default=None)
    p.add_argument(
        "--bundle",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "model/bundles/default",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--one", choices=["tta", "notta"], help=argparse.SUPPRESS)
    args = p.parse_args(argv if argv is not None else sys.argv[1:])
    case = args.case
    if case is None:
        root = os.environ.get("GLIOMASEG_TEST_DATA")
        if not root:
            print("model_bench: skipped (set GLIOMASEG_TEST_DATA or pass --case)")
            return 0
        case = Path(root) / DEFAULT_CASE
    if args.one:
        print(json.dumps(one(case, args.bundle, args.device, args.one == "tta", args.threads)))
        return 0
    rows = []
    for mode in ("notta", "tta"):
        cmd = [sys.executable, "-m", "bench.model_bench", "--one", mode, "--case", str(case),
               "--bundle", str(args.bundle), "--device", args.device, "--threads", str(args.threads)]  # fmt: skip
        res = subprocess.run(
            cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent
        )
        if res.returncode != 0:
            print(res.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    report = {"case": case.name, "bundle": str(args.bundle), "cpu_count": os.cpu_count(), "load_avg_1min": load,
              "targets": {"cpu_no_tta_s": 60, "peak_gb": 3}, "runs": rows}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "model_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'device':8} {'tta':5} {'threads':7} {'seconds':>8} {'peak RSS MB':>12}")
    for r in rows:
        print(
            f"{r['device']:8} {r['tta']!s:5} {r['threads']:7} {r['inference_s']:8.1f} {r['peak_rss_mb']:12.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
