"""A clinical-style study through the whole loop: the TCIA native case (Siemens names, 5.5 mm
axial 2D series on their own grids, skull on) -> node -> worker -> Orthanc.

Valid outputs (dciodvfy, in Orthanc in the source study), a tumour inside the brain mask the
worker computed, volumes in a plausible range.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dicom_node.jobs import JobStore
from dicom_node.spool import Spool
from dicom_node.studygen import write_tcia_native_case
from tests.conftest import wait_for
from tests.peers import Orthanc, Service, storescu

pytestmark = [pytest.mark.integration, pytest.mark.data, pytest.mark.slow]

TERMINAL = ("delivered", "failed", "delivery_failed")


@pytest.fixture(scope="module")
def tcia(datasets: Path, orthanc: Orthanc, e2e_service: Service, tmp_path_factory):
    study = write_tcia_native_case(
        datasets / "tcia_native" / "TCGA-FG-6692", tmp_path_factory.mktemp("tcia")
    )
    storescu("127.0.0.1", e2e_service.dicom_port, "GLIOMASEG", study.paths, calling_aet="MODALITY")
    store = JobStore(e2e_service.database_url)

    def ended():
        jobs = [j for j in store.list(study_uid=study.study_uid) if j.state in TERMINAL]
        return jobs[0] if jobs else None

    job = wait_for(ended, timeout_s=600, interval_s=0.5)
    return study, job, store


def test_the_clinical_study_is_delivered(tcia, e2e_service: Service) -> None:
    study, job, _ = tcia
    assert job.state == "delivered", (job.reason, e2e_service.logs())
    print("\nTCIA steps (s):", json.dumps({s["step"]: s["elapsed_s"] for s in job.steps}))
    print("TCIA volumes_ml:", json.dumps(job.volumes_ml))
    print("TCIA preprocess:", [s["detail"] for s in job.steps if s["step"] == "preprocess"])


def test_outputs_are_valid_and_in_the_source_study(tcia, orthanc: Orthanc) -> None:
    study, job, _ = tcia
    in_pacs = {s["SeriesInstanceUID"] for s in orthanc.series_in_study(study.study_uid)}
    assert set(job.outputs["series"]["T1c"].values()) <= in_pacs
    if shutil.which("dciodvfy"):
        for path in job.outputs["files"]:
            proc = subprocess.run(["dciodvfy", path], capture_output=True, text=True, timeout=120)
            errors = [x for x in (proc.stdout + proc.stderr).splitlines() if x.startswith("Error")]
            assert errors == [], path


def test_the_tumour_lies_inside_the_brain_mask_and_volumes_are_plausible(
    tcia, e2e_service: Service
) -> None:
    _, job, _ = tcia
    work = Spool(Path(e2e_service.env["GLIOMASEG_SPOOL__ROOT"])).work_dir(job.id)
    prepared = pickle.loads((work / "prepared.pkl").read_bytes())["prepared"]
    labels = np.load(work / "labels.npy")
    mask = np.asarray(prepared.brain_mask, dtype=bool)
    assert mask.shape == labels.shape
    voxel_ml = float(np.prod(prepared.spacing_mm)) / 1000.0
    brain_ml = mask.sum() * voxel_ml
    assert 900 <= brain_ml <= 2000, f"brain mask {brain_ml:.0f} mL"
    tumour = labels > 0
    inside = (tumour & mask).sum() / max(1, tumour.sum())
    print(f"\nTCIA brain mask {brain_ml:.0f} mL; tumour voxels inside the mask: {inside:.3f}")
    assert tumour.any()
    assert inside >= 0.98
    wt = job.volumes_ml["whole_tumor"]
    assert 1.0 <= wt <= 300.0, f"whole tumour {wt} mL"
    assert job.volumes_ml["tumor_core"] <= wt + 1e-6
