"""Time conversion, preprocessing and map-back on a 1 mm BraTS study and the 5.5 mm TCIA case.

Both studies are written as DICOM by studygen first (not timed). Timed: ``convert_series`` of each
of the four series, ``prepare`` (registration, resampling, brain extraction; "auto" methods) and
``map_back`` onto the T1c. Also the peak resident memory of this process. The issue's budget is
<= 30 s on 2 CPU cores for everything outside the network's forward passes (these steps plus
outputs and sending). On a shared machine compare ``cpu_s`` (CPU seconds of all threads) too.
Run: ``.venv/bin/python -m bench.preprocess_bench [--case brats|tcia]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BRATS_CASE = "Brats18_CBICA_AME_1"
TCIA_CASE = "tcia_native/TCGA-FG-6692"


def data_root() -> Path:
    value = os.environ.get("GLIOMASEG_TEST_DATA")
    path = Path(value) if value else REPO.parent / "shared" / "datasets"
    if not path.is_dir():
        sys.exit(f"preprocess_bench: real data not found at {path}; set GLIOMASEG_TEST_DATA")
    return path


def run_case(name: str, data: Path, out: Path, **prepare_kw: str) -> dict:
    from dicom_node.studygen import write_brats_case, write_tcia_native_case
    from worker.convert import convert_series
    from worker.mapback import map_back
    from worker.preprocess import prepare

    if name == "brats":
        study = write_brats_case(data / "brats" / BRATS_CASE, out)
    else:
        study = write_tcia_native_case(data / TCIA_CASE, out)
    row: dict = {"case": name, "cpus": os.cpu_count(), "load_1min": os.getloadavg()[0]}
    t0, c0 = time.perf_counter(), time.process_time()
    volumes = {}
    for role, series in study.series.items():
        t = time.perf_counter()
        volumes[role] = convert_series(series.paths, out)
        row[f"convert_{role}_s"] = round(time.perf_counter() - t, 2)
        row[f"slices_{role}"] = volumes[role].shape[0]
    row["convert_s"] = round(time.perf_counter() - t0, 2)
    t = time.perf_counter()
    prepared = prepare(volumes, **prepare_kw)
    row["prepare_s"] = round(time.perf_counter() - t, 2)
    row["prepare_steps_s"] = prepared.timings_s
    row["grid"] = list(prepared.grid.size)
    row["notes"] = prepared.notes
    labels = prepared.brain_mask & (prepared.images["T1c"] > np.median(prepared.images["T1c"]))
    t = time.perf_counter()
    map_back(labels.astype(np.uint8), prepared, volumes["T1c"])
    row["map_back_s"] = round(time.perf_counter() - t, 2)
    row["total_s"] = round(row["convert_s"] + row["prepare_s"] + row["map_back_s"], 2)
    # CPU seconds of this process (all threads): on a busy shared machine the wall time is
    # inflated by other processes; on an idle 2-core one it lies between cpu_s / 2 and cpu_s.
    row["cpu_s"] = round(time.process_time() - c0, 2)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        prog="bench.preprocess_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--case", choices=["brats", "tcia", "both"], default="both")
    args = parser.parse_args(argv)
    data = data_root()
    rows = []
    for name in ("brats", "tcia") if args.case == "both" else (args.case,):
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            row = run_case(name, data, Path(tmp))
        rows.append(row)
        print(json.dumps(row), flush=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"preprocess_bench: peak RSS {peak_mb:.0f} MB")
    for row in rows:
        print(
            f"  {row['case']}: convert {row['convert_s']} s, prepare {row['prepare_s']} s "
            f"{row['prepare_steps_s']}, map_back {row['map_back_s']} s, total {row['total_s']} s, CPU {row['cpu_s']} s "
            f"(load {row['load_1min']:.1f} on {row['cpus']} CPUs)"
        )
    return rows


if __name__ == "__main__":
    main()
