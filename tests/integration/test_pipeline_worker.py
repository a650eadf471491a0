"""A real `gliomaseg worker` on real Redis, fed the way the node feeds it (send_task by name).

Bad jobs fail with their reason and are never retried; `gliomaseg retry` queues a failed job
again; `gliomaseg resend` refuses a job that has no outputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.enqueue import CeleryEnqueuer
from dicom_node.jobs import JobState, JobStore
from dicom_node.spool import Spool
from tests.conftest import wait_for
from tests.peers import Service

pytestmark = pytest.mark.integration

ROLES = ("T1", "T1c", "T2", "FLAIR")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory):
    svc = Service.configure(tmp_path_factory.mktemp("worker-service"))
    svc.start_worker("worker-cpu", "--queues", "cpu", "--concurrency", "1")
    yield svc
    svc.stop_all()


@pytest.fixture(scope="module")
def store(service: Service) -> JobStore:
    return JobStore(service.database_url)


def enqueue(service: Service, job_id: str) -> None:
    s = service.settings()
    enqueuer = CeleryEnqueuer(s.queue.broker_url, s.queue.cpu_queue)
    try:
        enqueuer.send(job_id)
    finally:
        enqueuer.close()


def ended(store: JobStore, job_id: str, states=("failed", "delivered", "delivery_failed")):
    def check():
        job = store.get(job_id)
        return job if job.state in states else None

    return check


def test_missing_sequence_fails_with_reason_and_retry_requeues(
    service: Service, store: JobStore
) -> None:
    roles = {"T1": "1.2.826.0.1.1", "T1c": "1.2.826.0.1.2", "T2": "1.2.826.0.1.3", "FLAIR": None}
    job = store.create(
        "1.2.826.0.1",
        calling_ae="MODALITY",
        calling_ip="127.0.0.1",
        roles=roles,
        state=JobState.queued,
    )
    enqueue(service, job.id)
    done = wait_for(ended(store, job.id), timeout_s=90)
    assert done.state == "failed", service.logs()
    assert "missing: FLAIR" in done.reason
    assert done.attempts == 1

    out = service.gliomaseg("resend", job.id)
    assert out.returncode != 0 and "no outputs to send" in out.stderr

    out = service.gliomaseg("retry", job.id)
    assert out.returncode == 0, out.stderr
    assert "queued again" in out.stdout
    wait_for(
        lambda: store.get(job.id).attempts == 2 and store.get(job.id).state == "failed",
        timeout_s=60,
    )
    assert [e["event"] for e in store.audit_events(job.id)].count("retry") == 1

    out = service.gliomaseg("retry", "no-such-job")
    assert out.returncode != 0 and "no job" in out.stderr


def test_a_corrupt_series_fails_with_a_reason(service: Service, store: JobStore) -> None:
    spool = Spool(Path(service.env["GLIOMASEG_SPOOL__ROOT"]))
    study = "1.2.826.0.2"
    roles = {}
    for i, role in enumerate(ROLES):
        series = f"{study}.{i}"
        roles[role] = series
        for k in range(3):
            spool.store(study, series, f"{series}.{k}", b"\x00" * 128 + b"DICM" + b"garbage" * 50)
    job = store.create(
        study, calling_ae="MODALITY", calling_ip="127.0.0.1", roles=roles, state=JobState.queued
    )
    enqueue(service, job.id)
    done = wait_for(ended(store, job.id), timeout_s=90)
    assert done.state == "failed", service.logs()
    assert done.reason and "internal error" not in done.reason, done.reason
    convert = [s for s in done.steps if s["step"] == "convert"]
    assert convert and convert[-1]["status"] == "failed"


# -- bad studies built from a real case (5 mm, to keep conversion quick) -------------------------

CASE = "Brats18_CBICA_AME_1"


def spool_study(service: Service, store: JobStore, study) -> str:
    """Put a studygen study into the service's spool as the node would; a queued job for it."""
    import pydicom

    spool = Spool(Path(service.env["GLIOMASEG_SPOOL__ROOT"]))
    roles = {}
    for role, series in study.series.items():
        roles[role] = series.series_uid
        for path in series.paths:
            sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            spool.store(study.study_uid, series.series_uid, str(sop), path.read_bytes())
    job = store.create(
        study.study_uid,
        calling_ae="MODALITY",
        calling_ip="127.0.0.1",
        roles=roles,
        state=JobState.queued,
    )
    return job.id


def brats_volumes(datasets: Path) -> dict:
    import nibabel as nib

    suffix = {"T1": "t1", "T1c": "t1ce", "T2": "t2", "FLAIR": "flair"}
    out = {}
    for role, s in suffix.items():
        img = nib.load(datasets / "brats" / CASE / f"{CASE}_{s}.nii.gz")
        out[role] = (img.get_fdata(dtype="float32"), img.affine)
    return out


@pytest.mark.data
def test_a_series_with_truncated_pixel_data_fails_naming_it(
    service: Service, store: JobStore, datasets: Path, tmp_path: Path
) -> None:
    from dicom_node.studygen import write_study

    study = write_study(brats_volumes(datasets), tmp_path / "study", slice_mm=5.0)
    victim = study.series["T2"].paths[len(study.series["T2"].paths) // 2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 5000])  # cut inside PixelData
    job_id = spool_study(service, store, study)
    enqueue(service, job_id)
    done = wait_for(ended(store, job_id), timeout_s=180)
    assert done.state == "failed", service.logs()
    assert "T2" in done.reason and "internal error" not in done.reason, done.reason


@pytest.mark.data
def test_wildly_different_fields_of_view_fail_with_a_reason(
    service: Service, store: JobStore, datasets: Path, tmp_path: Path
) -> None:
    from dicom_node.studygen import write_study

    volumes = brats_volumes(datasets)
    flair, affine = volumes["FLAIR"]
    moved = affine.copy()
    moved[:3, 3] += (0.0, 0.0, 400.0)  # 40 cm away along the body axis: no overlap with T1c
    volumes["FLAIR"] = (flair, moved)
    study = write_study(volumes, tmp_path / "study", slice_mm=5.0)
    job_id = spool_study(service, store, study)
    enqueue(service, job_id)
    done = wait_for(ended(store, job_id), timeout_s=240)
    assert done.state == "failed", (done.state, [s["detail"] for s in done.steps])
    assert "FLAIR" in done.reason and "field of view" in done.reason, done.reason
    assert [s["step"] for s in done.steps if s["status"] == "failed"] == ["preprocess"]
