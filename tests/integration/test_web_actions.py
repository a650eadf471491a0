"""The web's actions against real peers: Redis (retry, upload hand-off, queue depth), Orthanc (C-ECHO)."""

from __future__ import annotations

import io
import uuid
import zipfile

import pytest
import redis
from fastapi.testclient import TestClient

from config.settings import Settings
from dicom_node.jobs import JobState, JobStore
from tests.conftest import free_port
from tests.peers import Orthanc
from worker.mapback import NativeLabels

pytestmark = pytest.mark.integration

TOKEN = "actions-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BROKER = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="module")
def env(tmp_path_factory, orthanc: Orthanc):
    tag = uuid.uuid4().hex[:8]
    root = tmp_path_factory.mktemp("web-actions")
    settings = Settings(
        spool={"root": str(root / "spool")},
        web={"token": TOKEN},
        queue={"broker_url": BROKER, "cpu_queue": f"webtest-{tag}.cpu", "gpu_queue": f"webtest-{tag}.gpu"},
        peers={
            "PACS": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
            "DEAD": {"ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port()},
        },
        outputs={"destinations": ["PACS"]},
    )  # fmt: skip
    from web.app import create_app

    app = create_app(settings)
    client = TestClient(app)
    client.app.state.collector.cache_s = 0
    r = redis.Redis.from_url(BROKER)
    yield settings, app.state.store, client, r
    r.delete(settings.queue.cpu_queue, settings.queue.gpu_queue)


def test_echo_a_real_pacs_and_a_dead_port(env):
    _, store, client, _ = env
    ok = client.post("/api/peers/pacs/echo", headers=AUTH).json()
    assert ok["ok"] and ok["peer"] == "PACS" and ok["elapsed_s"] > 0
    dead = client.post("/api/peers/DEAD/echo", headers=AUTH).json()
    assert not dead["ok"] and "NOBODY" in dead["detail"]
    assert [e["detail"]["ok"] for e in store.audit_events(event="web_echo")] == [True, False]


def test_retry_requeues_a_failed_job_on_the_broker(env):
    settings, store, client, r = env
    job = store.create("1.2.3.99", calling_ae="MR", calling_ip="10.0.0.1")
    store.set_state(job.id, JobState.failed, reason="worker lost")
    before = r.llen(settings.queue.cpu_queue)
    resp = client.post(f"/api/jobs/{job.id}/retry", headers=AUTH)
    assert resp.status_code == 200, resp.text
    assert resp.json()["job"]["state"] == "queued"
    assert r.llen(settings.queue.cpu_queue) == before + 1
    assert store.get(job.id).enqueued is not None
    events = [e["event"] for e in store.audit_events(job_id=job.id)]
    assert "retry" in events and "web_retry" in events and "job_enqueued" in events
    text = client.get("/metrics", headers=AUTH).text
    assert f'gliomaseg_queue_depth{{queue="{settings.queue.cpu_queue}"}} {before + 1}.0' in text


def test_resend_refuses_a_job_without_outputs(env):
    _, store, client, _ = env
    job = store.create("1.2.3.98", calling_ae="MR", calling_ip="10.0.0.1")
    store.set_state(job.id, JobState.delivery_failed, reason="PACS down")
    r = client.post(f"/api/jobs/{job.id}/resend", headers=AUTH)
    assert r.status_code == 409 and "no outputs to send" in r.json()["detail"]


def _study_zip(n_series_roles=("T1", "T2")) -> tuple[bytes, str]:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    study = generate_uid()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, desc in enumerate(n_series_roles):
            series = generate_uid()
            for i in range(3):
                ds = Dataset()
                ds.file_meta = FileMetaDataset()
                ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                sop = generate_uid()
                ds.file_meta.MediaStorageSOPInstanceUID = sop
                ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
                ds.Modality, ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = (
                    "MR",
                    desc,
                    k + 1,
                    i + 1,
                )
                ds.PatientName = "CANARY^PHI"
                out = io.BytesIO()
                ds.save_as(out, enforce_file_format=True)
                zf.writestr(f"dicom/s{k}/i{i}.dcm", out.getvalue())
        zf.writestr("dicom/README.txt", "not dicom")
    return buf.getvalue(), study


def test_upload_of_an_incomplete_study_fails_with_the_missing_sequences(env):
    settings, store, client, r = env
    data, study = _study_zip(("t1_se_tra", "t2_tse_tra"))
    before = r.llen(settings.queue.cpu_queue)
    resp = client.post(
        "/api/uploads", headers=AUTH, files=[("files", ("study.zip", data, "application/zip"))]
    )
    assert resp.status_code == 201, resp.text
    job = resp.json()["job"]
    assert (
        job["source"] == "upload"
        and job["study_uid"] == study
        and job["calling_ae"] == "WEB-UPLOAD"
    )
    assert job["state"] == "failed" and "missing" in job["reason"]
    assert r.llen(settings.queue.cpu_queue) == before, "an incomplete study is not queued"
    upload = [e for e in store.audit_events(job_id=job["id"]) if e["event"] == "upload"][0]
    assert upload["detail"]["instances"] == 6 and upload["detail"]["skipped_files"] == 1
    assert "CANARY" not in str(store.audit_events(job_id=job["id"]))


def test_upload_of_four_nifti_volumes_is_queued_on_the_broker(env, tmp_path):
    import nibabel as nib
    import numpy as np

    settings, store, client, r = env
    before = r.llen(settings.queue.cpu_queue)
    rng = np.random.default_rng(0)
    files = []
    for s in ("t1", "t1ce", "t2", "flair"):
        img = nib.Nifti1Image(
            (rng.random((24, 24, 12)) * 800).astype(np.int16), np.diag([-2.0, -2.0, 4.0, 1.0])
        )
        path = tmp_path / f"case_{s}.nii.gz"
        nib.save(img, path)
        files.append(("files", (path.name, path.read_bytes(), "application/gzip")))
    resp = client.post("/api/uploads", headers=AUTH, files=files)
    assert resp.status_code == 201, resp.text
    job = resp.json()["job"]
    assert job["state"] == "queued", job
    assert set(job["roles"]) == {"T1", "T1c", "T2", "FLAIR"} and all(job["roles"].values())
    assert r.llen(settings.queue.cpu_queue) == before + 1
    spooled = JobStore(settings.database_url).get(job["id"])
    assert spooled.source == "upload"


def test_resend_delivers_kept_outputs_to_the_pacs(env, orthanc: Orthanc, tmp_path):

    import numpy as np
    import pydicom

    from dicom_node import studygen
    from tests.conftest import wait_for
    from worker.outputs.seg import build_seg

    settings, store, client, _ = env
    vol = (np.random.default_rng(5).random((16, 16, 6)) * 500).astype(np.float32)
    written = studygen.write_study(
        {"T1c": (vol, np.diag([1.0, 1.0, 3.0, 1.0]))}, tmp_path / "study"
    )
    datasets = [pydicom.dcmread(p) for p in written.series["T1c"].paths]
    datasets.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    labels = np.zeros((len(datasets), 16, 16), np.uint8)
    labels[2, 4:8, 4:8] = 2
    seg_path = tmp_path / "seg.dcm"
    build_seg(NativeLabels(labels, datasets), model_version="resend-test").save_as(seg_path)
    job = store.create(written.study_uid, calling_ae="MR", calling_ip="10.0.0.1")
    store.update(job.id, outputs={"files": [str(seg_path)], "dir": str(tmp_path)})
    store.set_state(job.id, JobState.delivery_failed, reason="PACS was down")
    r = client.post(f"/api/jobs/{job.id}/resend", headers=AUTH)
    assert r.status_code == 200, r.text
    done = wait_for(
        lambda: store.get(job.id).state == JobState.delivered and store.get(job.id), timeout_s=60
    )
    assert done.deliveries[-1]["peer"] == "PACS" and done.deliveries[-1]["ok"]
    assert any(s["Modality"] == "SEG" for s in orthanc.series_in_study(written.study_uid))
    assert {"resend", "web_resend"} <= {e["event"] for e in store.audit_events(job_id=job.id)}
