"""Build time of each output object for a 155-slice 240 x 240 series (2 CPU cores target).

Run: ``.venv/bin/python -m bench.outputs_bench [--repeat N]``. With GLIOMASEG_TEST_DATA set, the
series is a BraTS case (T1c + ground-truth labels) written by dicom_node.studygen; otherwise a
synthetic head with a synthetic tumour of similar size. Prints one JSON object: seconds per step
(median of the repeats; the first, cold run is reported apart, since it loads highdicom's tables),
object sizes in bytes, instance counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

BRATS_CASE = "Brats18_CBICA_ABM_1"


def _series(tmp: Path) -> tuple[np.ndarray, list[pydicom.Dataset], str]:
    from dicom_node.studygen import write_study

    root = os.environ.get("GLIOMASEG_TEST_DATA")
    case = Path(root) / "brats" / BRATS_CASE if root else None
    if case is not None and case.is_dir():
        import nibabel as nib

        img: Any = nib.load(case / f"{BRATS_CASE}_t1ce.nii.gz")
        seg: Any = nib.load(case / f"{BRATS_CASE}_seg.nii.gz")
        volume, affine = np.asanyarray(img.dataobj), img.affine
        labels_ijk = np.asarray(seg.dataobj, np.uint8)
        source = f"BraTS {BRATS_CASE}"
    else:
        shape = (240, 240, 155)
        i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
        r = ((i - 120) / 80) ** 2 + ((j - 120) / 95) ** 2 + ((k - 77) / 70) ** 2
        volume = np.where(r < 1, 500 + 100 * np.cos(8 * r), 0).astype(np.int16)
        affine = np.diag([-1.0, -1.0, 1.0, 1.0])
        d = np.sqrt(((i - 150) / 25) ** 2 + ((j - 100) / 25) ** 2 + ((k - 80) / 20) ** 2)
        labels_ijk = np.select([d < 0.35, d < 0.6, d < 1.0], [1, 4, 2], 0).astype(np.uint8)
        source = "synthetic"
    written = write_study({"T1c": (volume, affine)}, tmp / "study")
    datasets: list[pydicom.Dataset] = [pydicom.dcmread(p) for p in written.series["T1c"].paths]
    # studygen: instance k holds array[:, :, k]; pixel [row r, column c] = array[c, r, k]
    labels = np.ascontiguousarray(labels_ijk.transpose(2, 1, 0))
    return labels, datasets, source


def main(argv: list[str] | None = None) -> dict:
    from worker.outputs.overlay import build_overlay
    from worker.outputs.seg import build_seg
    from worker.outputs.sr import build_sr
    from worker.outputs.volumes import region_volumes_ml
    from worker.outputs.writer import write_datasets

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    class Native:
        def __init__(self, labels: np.ndarray, datasets: list[pydicom.Dataset]) -> None:
            self.labels, self.datasets = labels, datasets

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        labels, datasets, source = _series(tmp)
        native = Native(labels, datasets)
        runs: list[dict[str, float]] = []
        sizes: dict[str, int] = {}
        counts: dict[str, int] = {}
        for run in range(max(1, args.repeat) + 1):
            t: dict[str, float] = {}
            t0 = time.perf_counter()
            volumes = region_volumes_ml(labels, datasets)
            t["volumes_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            seg = build_seg(native, model_version="bench")
            t["seg_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            sr = build_sr(volumes, seg, datasets, model_version="bench")
            t["sr_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            sc = build_overlay(labels, datasets, model_version="bench", volumes_ml=volumes)
            t["overlay_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            sc_all = build_overlay(
                labels, datasets, model_version="bench", volumes_ml=volumes, slices="all"
            )
            t["overlay_all_slices_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = tmp / f"out{run}"
            paths = {
                "seg": write_datasets([seg], out / "seg"),
                "sr": write_datasets([sr], out / "sr"),
                "overlay": write_datasets(sc, out / "sc"),
            }
            t["write_s"] = time.perf_counter() - t0
            t["total_s"] = sum(t.values()) - t["overlay_all_slices_s"]
            runs.append(t)
            sizes = {k: sum(p.stat().st_size for p in v) for k, v in paths.items()}
            counts = {
                "slices": len(datasets),
                "seg_frames": int(seg.NumberOfFrames),
                "overlay_instances": len(sc),
                "overlay_all_instances": len(sc_all),
            }
        warm = runs[1:]
        result = {
            "bench": "outputs",
            "series": f"{source}, {len(datasets)} x {labels.shape[1]} x {labels.shape[2]}",
            "cpus": os.cpu_count(),
            "cold_s": {k: round(v, 3) for k, v in runs[0].items()},
            "median_s": {k: round(statistics.median(r[k] for r in warm), 3) for k in runs[0]},
            "bytes": sizes,
            "counts": counts,
            "volumes_ml": volumes,
        }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
