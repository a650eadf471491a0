"""Web latency on this machine, in-process (FastAPI TestClient: no network, real SQLite and spool).

Run: ``.venv/bin/python -m bench.web_bench [--jobs N]``. Measures the jobs list page query,
a /metrics scrape computed from N jobs (the first reads every job, later ones
only the jobs updated since), the viewer's first load of a 240x240x155
volume (NIfTI read, reorientation, windowing), one slice PNG (image + labels, warm), and the
fallback that rebuilds the viewer volume from the reference series and the DICOM-SEG.
With GLIOMASEG_TEST_DATA set the volume is a BraTS case, else a synthetic head.
Prints one JSON object and writes bench/results/web.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CASE = "Brats18_CBICA_ABM_1"


def _median_s(fn: Any, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 4)


def _volume() -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    root = os.environ.get("GLIOMASEG_TEST_DATA")
    case = Path(root) / "brats" / CASE if root else None
    if case is not None and case.is_dir():
        import nibabel as nib

        img: Any = nib.load(case / f"{CASE}_t1ce.nii.gz")
        seg: Any = nib.load(case / f"{CASE}_seg.nii.gz")
        return (
            np.asanyarray(img.dataobj),
            np.asarray(seg.dataobj, np.uint8),
            img.affine,
            f"BraTS {CASE}",
        )
    shape = (240, 240, 155)
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    r = ((i - 120) / 80) ** 2 + ((j - 120) / 95) ** 2 + ((k - 77) / 70) ** 2
    image = np.where(r < 1, 500 + 100 * np.cos(8 * r), 0).astype(np.int16)
    d = np.sqrt(((i - 150) / 25) ** 2 + ((j - 100) / 25) ** 2 + ((k - 80) / 20) ** 2)
    labels = np.select([d < 0.35, d < 0.6, d < 1.0], [1, 4, 2], 0).astype(np.uint8)
    return image, labels, np.diag([-1.0, -1.0, 1.0, 1.0]), "synthetic"


@dataclass
class _Native:
    labels: np.ndarray
    datasets: list


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2000)
    args = ap.parse_args(argv)

    import nibabel as nib
    import pydicom
    from fastapi.testclient import TestClient

    from config.settings import Settings
    from dicom_node.jobs import JobState, JobStore
    from dicom_node.studygen import write_study
    from web.app import create_app
    from web.fromdicom import write_viewer_files
    from worker.outputs.seg import build_seg

    out: dict[str, Any] = {"jobs": args.jobs}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        settings = Settings(spool={"root": str(tmp / "spool")}, web={"token": "bench"})
        (tmp / "spool").mkdir()
        store = JobStore(settings.database_url)
        t0 = time.perf_counter()
        for n in range(args.jobs):
            job = store.create(f"1.2.3.{n}", calling_ae=f"AE{n % 5}", calling_ip="10.0.0.1")
            store.update(
                job.id,
                steps=[{"step": s, "elapsed_s": 1.0 + n % 7} for s in ("convert", "prepare", "segment", "outputs", "send")],
                deliveries=[{"peer": "PACS", "ok": n % 10 != 0}],
            )  # fmt: skip
            store.set_state(job.id, JobState.delivered if n % 10 else JobState.delivery_failed)
        out["fill_db_s"] = round(time.perf_counter() - t0, 2)
        app = create_app(settings, store=store)
        app.state.collector.cache_s = 0
        client = TestClient(app)
        auth = {"Authorization": "Bearer bench"}
        out["jobs_list_25_s"] = _median_s(
            lambda: client.get("/api/jobs?limit=25", headers=auth), 20
        )
        out["jobs_list_filtered_s"] = _median_s(
            lambda: client.get(
                "/api/jobs?limit=25&state=delivery_failed&calling_ae=AE3", headers=auth
            ),
            20,
        )
        t0 = time.perf_counter()
        client.get("/metrics", headers=auth)
        out["metrics_first_scrape_s"] = round(time.perf_counter() - t0, 3)  # reads every job
        out["metrics_later_scrape_s"] = _median_s(lambda: client.get("/metrics", headers=auth), 5)

        image, labels, affine, source = _volume()
        out["volume"] = f"{source} {image.shape}"
        job = store.create("1.2.3.viewer", calling_ae="AE", calling_ip="10.0.0.1")
        d = tmp / "spool" / "outputs" / job.id
        d.mkdir(parents=True)
        nib.save(nib.Nifti1Image(image, affine), d / "reference.nii.gz")
        nib.save(nib.Nifti1Image(labels, affine), d / "labels.nii.gz")
        t0 = time.perf_counter()
        meta = client.get(f"/api/jobs/{job.id}/viewer", headers=auth).json()
        out["viewer_first_load_s"] = round(time.perf_counter() - t0, 3)
        n_ax = meta["planes"]["axial"]["slices"]
        ks = iter(list(range(0, n_ax, max(1, n_ax // 30))) * 3)

        def slice_pair() -> None:
            k = next(ks)
            for layer in ("image", "labels"):
                client.get(f"/api/jobs/{job.id}/slices/axial/{k}.png?layer={layer}", headers=auth)

        out["slice_png_pair_warm_s"] = _median_s(slice_pair, 30)

        written = write_study({"T1c": (image, affine)}, tmp / "study")
        datasets = [pydicom.dcmread(p) for p in written.series["T1c"].paths]
        iop = np.asarray(datasets[0].ImageOrientationPatient, float)
        normal = np.cross(iop[:3], iop[3:])
        datasets.sort(
            key=lambda x: float(np.dot(normal, np.asarray(x.ImagePositionPatient, float)))
        )
        native = np.zeros((len(datasets), datasets[0].Rows, datasets[0].Columns), np.uint8)
        native[len(datasets) // 2, 50:80, 60:90] = 2
        seg_path = tmp / "seg.dcm"
        build_seg(_Native(native, datasets), model_version="bench").save_as(seg_path)
        t0 = time.perf_counter()
        write_viewer_files(written.series["T1c"].paths, seg_path, tmp / "rebuilt")
        out["viewer_rebuild_from_dicom_s"] = round(time.perf_counter() - t0, 2)
        store.close()
    print(json.dumps(out, indent=2))
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / "web.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
