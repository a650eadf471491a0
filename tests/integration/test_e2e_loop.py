"""The whole loop with a real PACS: storescu -> node -> worker -> Orthanc.

One BraTS validation case (never a training case of the shipped model), made into a Siemens-style
DICOM study by dicom_node.studygen, is stored into the node with DCMTK storescu. One pipeline run
serves every assertion: SEG, SR and overlay series in Orthanc in the same study, the SEG read back
from Orthanc against the ground truth, dciodvfy on every object, no PHI in logs or job records,
and a second run of the same job that adds no series to Orthanc.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from dicom_node.jobs import JobStore
from dicom_node.studygen import StudyWritten, write_brats_case
from tests.conftest import wait_for
from tests.peers import Orthanc, Service, storescu

pytestmark = [pytest.mark.integration, pytest.mark.data, pytest.mark.slow]

# A validation case of the shipped model (model/bundles/default/metadata.json lists them).
CASE = "Brats18_CBICA_AME_1"
CANARY = "CANARY^PHI"
TERMINAL = ("delivered", "failed", "delivery_failed")
WT_DICE_MIN = 0.8


@dataclass
class Run:
    pacs: Orthanc
    service: Service
    store: JobStore
    study: StudyWritten
    job: Any
    ground_truth: np.ndarray  # voxel array of the case (i, j, k)


def job_for_study(store: JobStore, study_uid: str, states=TERMINAL):
    def check():
        jobs = [j for j in store.list(study_uid=study_uid) if j.state in states]
        return jobs[0] if jobs else None

    return check


def dciodvfy_errors(path: Path) -> list[str]:
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def wt_dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else float(2 * (a & b).sum() / denom)


@pytest.fixture(scope="module")
def run(datasets: Path, orthanc: Orthanc, e2e_service: Service, tmp_path_factory) -> Run:
    case_dir = datasets / "brats" / CASE
    study = write_brats_case(
        case_dir, tmp_path_factory.mktemp("study"), patient_name=CANARY, patient_id="CANARY-0001"
    )
    storescu("127.0.0.1", e2e_service.dicom_port, "GLIOMASEG", study.paths, calling_aet="MODALITY")
    store = JobStore(e2e_service.database_url)
    job = wait_for(job_for_study(store, study.study_uid), timeout_s=600, interval_s=0.5)
    gt = np.asanyarray(nib.load(case_dir / f"{CASE}_seg.nii.gz").dataobj)
    return Run(orthanc, e2e_service, store, study, job, gt)


def test_the_job_is_delivered_with_every_step_timed(run: Run) -> None:
    job = run.job
    assert job.state == "delivered", (job.reason, run.service.logs())
    steps = {s["step"]: s for s in job.steps if s["status"] == "ok"}
    for name in ("convert", "preprocess", "segment", "map_back", "outputs", "send"):
        assert name in steps and steps[name]["elapsed_s"] >= 0, name
    assert job.volumes_ml["whole_tumor"] > 0
    assert [d["ok"] for d in job.deliveries] == [True]
    print("\nsteps (s):", json.dumps({k: v["elapsed_s"] for k, v in steps.items()}))
    print("volumes_ml:", json.dumps(job.volumes_ml))


def test_seg_sr_and_overlay_series_are_in_the_source_study_in_orthanc(run: Run) -> None:
    written = run.job.outputs["series"]["T1c"]
    assert set(written) == {"seg", "sr", "overlay"}
    in_pacs = {s["SeriesInstanceUID"]: s for s in run.pacs.series_in_study(run.study.study_uid)}
    for kind, uid in written.items():
        assert uid in in_pacs, f"{kind} series not in Orthanc"
    assert in_pacs[written["seg"]]["Modality"] == "SEG"
    assert in_pacs[written["sr"]]["Modality"] == "SR"
    assert len(in_pacs[written["overlay"]]["Instances"]) >= 1


def test_the_seg_read_back_from_orthanc_overlaps_the_ground_truth(run: Run) -> None:
    seg_uid = run.job.outputs["series"]["T1c"]["seg"]
    [series] = [
        s
        for s in run.pacs.series_in_study(run.study.study_uid)
        if s["SeriesInstanceUID"] == seg_uid
    ]
    [instance] = series["Instances"]
    seg = hd.seg.Segmentation.from_dataset(
        pydicom.dcmread(io.BytesIO(run.pacs.instance_file(instance)))
    )
    t1c_sops = run.study.series["T1c"].sop_uids  # instance k = voxel slice k
    masks = seg.get_pixels_by_source_instance(
        t1c_sops,
        combine_segments=False,
        skip_overlap_checks=True,
        assert_missing_frames_are_empty=True,
    )
    predicted_wt = masks.any(axis=-1)  # (k, row, column)
    truth_wt = np.transpose(
        run.ground_truth > 0, (2, 1, 0)
    )  # pixel [r, c] of slice k = voxel [c, r, k]
    dice = wt_dice(predicted_wt, truth_wt)
    print(f"\nWT Dice of the SEG read back from Orthanc vs ground truth ({CASE}): {dice:.3f}")
    assert dice >= WT_DICE_MIN


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_every_object_written_passes_dciodvfy(run: Run) -> None:
    files = [Path(p) for p in run.job.outputs["files"]]
    assert files
    bad = {
        str(p.relative_to(p.parents[2])): errors for p in files if (errors := dciodvfy_errors(p))
    }
    assert bad == {}


def test_no_patient_identifier_in_logs_or_job_records(run: Run) -> None:
    assert CANARY not in run.service.logs()
    assert "CANARY-0001" not in run.service.logs()
    record = json.dumps(run.store.get(run.job.id).model_dump(mode="json"))
    assert CANARY not in record and "CANARY-0001" not in record


def test_pacs_down_then_resend_and_a_second_run_adds_no_series(run: Run) -> None:
    """Second run of the same job with Orthanc stopped during send: retries, delivery_failed with
    the outputs kept; `gliomaseg resend` once Orthanc is back; the study holds the same series."""
    before = sorted(s["SeriesInstanceUID"] for s in run.pacs.series_in_study(run.study.study_uid))
    instances_before = run.pacs.instance_count()
    run.pacs.stop()
    try:
        out = run.service.gliomaseg("retry", "--force", run.job.id)
        assert out.returncode == 0, out.stderr

        def ended_again():
            job = run.store.get(run.job.id)
            return job if job.state in TERMINAL and job.attempts >= 2 else None

        job = wait_for(ended_again, timeout_s=600, interval_s=0.5)
    finally:
        run.pacs.restart()
    assert job.state == "delivery_failed", job.reason
    retries = int(run.service.env["GLIOMASEG_OUTPUTS__SEND_RETRIES"])
    failed = [d for d in job.deliveries if not d["ok"]]
    assert len(failed) == retries + 1  # the first attempt and every retry
    assert f"gliomaseg resend {job.id}" in job.reason
    assert all(Path(p).is_file() for p in job.outputs["files"])  # outputs kept

    out = run.service.gliomaseg("resend", run.job.id)
    assert out.returncode == 0, out.stdout + out.stderr
    assert run.store.get(run.job.id).state == "delivered"
    after = sorted(s["SeriesInstanceUID"] for s in run.pacs.series_in_study(run.study.study_uid))
    assert after == before
    assert run.pacs.instance_count() == instances_before
