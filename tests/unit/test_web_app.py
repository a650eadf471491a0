"""The web app through its HTTP interface (FastAPI TestClient), on a real SQLite JobStore and spool."""

from __future__ import annotations

import io
import logging
import zipfile
from datetime import UTC, datetime, timedelta

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from config.settings import Settings
from dicom_node.jobs import JobState, JobStore
from dicom_node.spool import Spool
from web.app import create_app

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    settings = Settings(
        spool={"root": str(root / "spool")},
        web={"token": TOKEN},
        peers={"PACS": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}},
        outputs={"destinations": ["PACS"]},
        queue={"broker_url": "memory://"},  # unit tests talk to no server
    )
    spool = Spool(settings.spool.root)
    store = JobStore(settings.database_url)
    app = create_app(settings, store=store)
    return settings, spool, store, TestClient(app)


def _mr_file(path, study, series, sop, name="CANARY^PHI", pid="PHI-0042"):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.StudyDate = name, pid, "20260101"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def job(env):
    """A delivered job with spooled headers, steps, volumes, viewer files and DICOM outputs."""
    settings, spool, store, _ = env
    study, series = "1.2.826.0.1.99.1", "1.2.826.0.1.99.1.1"
    spool.store(
        study, series, "1.2.826.0.1.99.1.1.1", _mr_file(None, study, series, "1.2.826.0.1.99.1.1.1")
    )
    j = store.create(
        study, calling_ae="MRSCANNER", calling_ip="10.1.2.3", roles={"T1c": series},
        classification=[{"series_uid": series, "series_number": 7, "description": "t1_mprage_KM",
                         "role": "T1c", "reason": "T1-weighted, contrast agent given"}],
    )  # fmt: skip
    store.audit("study_received", job_id=j.id, detail={"calling_ae": "MRSCANNER"})
    store.set_state(j.id, JobState.queued)
    store.audit("job_queued", job_id=j.id, detail={})
    store.add_step(j.id, {"step": "prepare", "started": "2026-01-01T10:00:00+00:00",
                          "ended": "2026-01-01T10:00:04+00:00", "elapsed_s": 4.0, "status": "ok", "detail": ""})  # fmt: skip
    store.add_step(j.id, {"step": "segment", "started": "2026-01-01T10:00:05+00:00",
                          "ended": "2026-01-01T10:00:07+00:00", "elapsed_s": 2.5, "status": "ok", "detail": ""})  # fmt: skip
    out = spool.outputs_dir(j.id)
    labels = np.zeros((16, 20, 12), np.uint8)
    labels[5:10, 6:12, 3:8] = 2
    labels[6:9, 8:10, 4:7] = 4
    affine = np.diag([-1.0, -1.0, 3.0, 1.0])
    nib.save(
        nib.Nifti1Image(np.random.default_rng(1).random((16, 20, 12)).astype(np.float32), affine),
        out / "reference.nii.gz",
    )
    nib.save(nib.Nifti1Image(labels, affine), out / "labels.nii.gz")
    (out / "seg").mkdir()
    (out / "seg" / "seg.dcm").write_bytes(b"seg bytes")
    (out / "sr.dcm").write_bytes(b"sr bytes")
    store.update(j.id, volumes_ml={"whole_tumor": 1.2, "edema": 0.9, "enhancing": 0.3},
                 outputs={"files": [str(out / "sr.dcm")]},
                 deliveries=[{"peer": "PACS", "ts": "2026-01-01T10:00:09+00:00", "ok": True, "detail": "2 sent"}])  # fmt: skip
    store.set_state(j.id, JobState.delivered)
    return store.get(j.id)


def test_only_healthz_answers_without_the_token(env):
    *_, client = env
    assert client.get("/healthz").json() == {"status": "ok", "database": "ok"}
    for path in ("/api/jobs", "/metrics", "/openapi.json", "/api/config", "/api/peers"):
        r = client.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/api/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    page = client.get("/", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2F"


def test_login_form_sets_an_httponly_cookie(env):
    settings, *_ = env
    client = TestClient(env[3].app)
    bad = client.post("/login", data={"token": "nope", "next": "/"}, follow_redirects=False)
    assert bad.status_code == 401 and "not valid" in bad.text
    ok = client.post(
        "/login", data={"token": TOKEN, "next": "//evil.example/"}, follow_redirects=False
    )
    assert ok.status_code == 303 and ok.headers["location"] == "/"  # no open redirect
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert client.get("/api/jobs").status_code == 200
    client.post("/logout")
    assert client.get("/api/jobs").status_code == 401


def test_generated_token_when_none_is_configured(tmp_path, capsys):
    settings = Settings(spool={"root": str(tmp_path / "spool")})
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    app = create_app(settings, store=store)
    token = app.state.token
    assert len(token) >= 24
    assert token in capsys.readouterr().err
    assert (tmp_path / "spool" / "web_token").stat().st_mode & 0o077 == 0
    again = create_app(settings, store=store)
    assert again.state.token == token, "a restart keeps the generated token"
    assert (
        TestClient(app).get("/api/jobs", headers={"Authorization": f"Bearer {token}"}).status_code
        == 200
    )


def test_jobs_list_filters_and_pages(env, job):
    _, _, store, client = env
    for i in range(5):
        j = store.create(
            f"1.2.3.{i}", calling_ae="OTHERAE" if i % 2 else "MRSCANNER", calling_ip="10.0.0.9"
        )
        if i == 4:
            store.set_state(j.id, JobState.failed, reason="need T1, T1c, T2, FLAIR; found T1")
    data = client.get("/api/jobs", headers=AUTH, params={"limit": 2}).json()
    assert data["total"] == 6 and len(data["jobs"]) == 2
    assert data["jobs"][0]["study_uid"] == "1.2.3.4", "newest first"
    page3 = client.get("/api/jobs", headers=AUTH, params={"limit": 2, "offset": 4}).json()
    assert len(page3["jobs"]) == 2 and page3["jobs"][-1]["id"] == job.id
    failed = client.get("/api/jobs", headers=AUTH, params={"state": "failed"}).json()
    assert [j["study_uid"] for j in failed["jobs"]] == ["1.2.3.4"]
    other = client.get("/api/jobs", headers=AUTH, params={"calling_ae": "OTHERAE"}).json()
    assert other["total"] == 2
    today = datetime.now(UTC).date()
    assert client.get("/api/jobs", headers=AUTH, params={"since": str(today)}).json()["total"] == 6
    tomorrow = today + timedelta(days=1)
    assert (
        client.get("/api/jobs", headers=AUTH, params={"since": str(tomorrow)}).json()["total"] == 0
    )
    assert client.get("/api/jobs", headers=AUTH, params={"until": str(today)}).json()["total"] == 6


def test_bad_filters_say_what_is_expected(env):
    *_, client = env
    r = client.get("/api/jobs", headers=AUTH, params={"state": "finished"})
    assert r.status_code == 422 and "got 'finished'" in r.json()["detail"]
    r = client.get("/api/jobs", headers=AUTH, params={"since": "yesterday"})
    assert r.status_code == 422 and "YYYY-MM-DD" in r.json()["detail"]


def test_job_detail_patient_and_audit(env, job):
    *_, client = env
    d = client.get(f"/api/jobs/{job.id}", headers=AUTH).json()
    assert d["has_viewer"] and d["has_labels"] and d["n_dicom_outputs"] == 2
    assert d["job"]["state"] == "delivered" and d["job"]["volumes_ml"]["whole_tumor"] == 1.2
    p = client.get(f"/api/jobs/{job.id}/patient", headers=AUTH).json()
    assert p["patient_name"] == "CANARY PHI" and p["patient_id"] == "PHI-0042"
    events = client.get(f"/api/jobs/{job.id}/audit", headers=AUTH).json()
    assert [e["event"] for e in events] == ["study_received", "job_queued"]
    assert client.get("/api/jobs/nope", headers=AUTH).status_code == 404


def test_job_page_shows_everything_and_logs_no_phi(env, job, caplog):
    *_, client = env
    with caplog.at_level(logging.DEBUG):
        html = client.get(f"/jobs/{job.id}", headers=AUTH).text
    for text in ("CANARY PHI", "PHI-0042", "t1_mprage_KM", "T1-weighted, contrast agent given",
                 "Whole tumour", "1.2 ml", "Segmentation", "2.5 s", "Sent to PACS", "study_received",
                 'id="viewer"', "Download label map", "Resend outputs"):  # fmt: skip
        assert text in html, text
    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert "CANARY" not in logged and "PHI-0042" not in logged


def test_viewer_slices_are_pngs_of_the_right_size(env, job):
    from PIL import Image

    *_, client = env
    meta = client.get(f"/api/jobs/{job.id}/viewer", headers=AUTH).json()
    ax = meta["planes"]["axial"]
    assert (ax["slices"], ax["rows"], ax["columns"]) == (12, 20, 16)
    assert meta["planes"]["sagittal"]["row_mm"] == 3.0
    r = client.get(
        f"/api/jobs/{job.id}/slices/axial/{ax['initial']}.png",
        headers=AUTH,
        params={"layer": "labels"},
    )
    assert r.headers["content-type"] == "image/png"
    img = np.asarray(Image.open(io.BytesIO(r.content)))
    assert img.shape == (20, 16) and set(np.unique(img)) == {0, 2, 4}
    assert client.get(f"/api/jobs/{job.id}/slices/axial/99.png", headers=AUTH).status_code == 422
    assert client.get(f"/api/jobs/{job.id}/slices/oblique/1.png", headers=AUTH).status_code == 422


def test_downloads(env, job):
    *_, client = env
    r = client.get(f"/api/jobs/{job.id}/labels.nii.gz", headers=AUTH)
    assert r.status_code == 200 and r.content[:2] == b"\x1f\x8b"
    z = client.get(f"/api/jobs/{job.id}/outputs.zip", headers=AUTH)
    assert z.headers["content-disposition"].endswith(f'{job.id}-dicom.zip"')
    names = zipfile.ZipFile(io.BytesIO(z.content)).namelist()
    assert sorted(names) == ["seg/seg.dcm", "sr.dcm"]


def test_jobs_without_outputs_have_no_downloads(env):
    _, _, store, client = env
    j = store.create("1.2.9", calling_ae="X", calling_ip="1.1.1.1")
    assert client.get(f"/api/jobs/{j.id}/labels.nii.gz", headers=AUTH).status_code == 404
    assert client.get(f"/api/jobs/{j.id}/outputs.zip", headers=AUTH).status_code == 404
    assert client.get(f"/api/jobs/{j.id}/viewer", headers=AUTH).status_code == 404
    assert "The viewer appears when" in client.get(f"/jobs/{j.id}", headers=AUTH).text


def test_retry_refuses_a_job_that_did_not_fail(env, job):
    *_, client = env
    r = client.post(f"/api/jobs/{job.id}/retry", headers=AUTH)
    assert r.status_code == 409 and "only failed or delivery_failed" in r.json()["detail"]


def test_config_is_masked_and_peers_listed(env):
    *_, client = env
    cfg = client.get("/api/config", headers=AUTH).json()
    assert cfg["web"]["token"] == "********"
    page = client.get("/config", headers=AUTH).text
    assert TOKEN not in page and "********" in page
    assert client.get("/api/peers", headers=AUTH).json() == [
        {
            "name": "PACS",
            "ae_title": "ORTHANC",
            "host": "127.0.0.1",
            "port": 4242,
            "destination": True,
        }
    ]
    assert client.post("/api/peers/NOPE/echo", headers=AUTH).status_code == 404


def test_openapi_documents_every_endpoint_the_pages_use(env):
    *_, client = env
    spec = client.get("/openapi.json", headers=AUTH).json()
    paths = set(spec["paths"])
    for p in ("/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/audit", "/api/jobs/{job_id}/viewer",
              "/api/jobs/{job_id}/slices/{plane}/{index}.png", "/api/jobs/{job_id}/retry",
              "/api/jobs/{job_id}/resend", "/api/jobs/{job_id}/labels.nii.gz",
              "/api/jobs/{job_id}/outputs.zip", "/api/uploads", "/api/config", "/api/peers",
              "/api/peers/{name}/echo", "/healthz", "/metrics"):  # fmt: skip
        assert p in paths, p
        assert all(op.get("summary") for op in spec["paths"][p].values()), p
    docs = client.get("/api-docs", headers=AUTH).text
    assert "/api/uploads" in docs and "multipart/form-data" in docs


def test_pages_render(env):
    *_, client = env
    for path in ("/", "/upload", "/config", "/peers", "/api-docs"):
        r = client.get(path, headers=AUTH)
        assert r.status_code == 200 and "<nav>" in r.text, path
    for asset in ("app.css", "jobs.js", "job.js", "viewer.js", "upload.js", "peers.js"):
        assert client.get(f"/static/{asset}").status_code == 200


def test_metrics_count_jobs_steps_and_deliveries(env, job):
    *_, client = env
    client.app.state.collector.cache_s = 0
    text = client.get("/metrics", headers=AUTH).text
    assert 'gliomaseg_jobs{state="delivered"} 1.0' in text
    assert 'gliomaseg_step_duration_seconds_count{step="segment"} 1.0' in text
    assert 'gliomaseg_step_duration_seconds_bucket{le="2.5",step="segment"} 1.0' in text
    assert 'gliomaseg_deliveries_total{outcome="ok",peer="PACS"} 1.0' in text
    assert "gliomaseg_studies_completed_total 1.0" in text


def test_configuration_changes_are_audited_at_start(tmp_path):
    (tmp_path / "spool").mkdir()

    def start(port: int) -> TestClient:
        settings = Settings(
            spool={"root": str(tmp_path / "spool")}, web={"token": TOKEN}, dicom={"port": port}
        )
        return TestClient(create_app(settings, store=JobStore(settings.database_url)))

    start(11112)
    start(11112)  # unchanged: nothing new
    client = start(104)
    events = client.app.state.store.audit_events(event="config")
    assert len(events) == 2
    assert events[0]["detail"]["previous_hash"] is None
    assert events[1]["detail"]["changed"] == {"dicom.port": [11112, 104]}
    assert TOKEN not in str(events) and events[1]["detail"]["settings"]["web.token"] == "********"
    page = client.get("/config", headers=AUTH).text
    assert "dicom.port" in page and "first recorded configuration" in page


def test_outputs_zip_is_streamed_in_pieces(tmp_path):
    import io
    import zipfile

    from web.app import _zip_stream

    rng = np.random.default_rng(0)
    files = []
    for name, n in (("seg.dcm", 3_000_000), ("sr.dcm", 10), ("sc/1.dcm", 2_500_000)):
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.integers(0, 255, n, dtype=np.uint8).tobytes())  # incompressible
        files.append(p)
    pieces = list(_zip_stream(files, tmp_path, chunk=2**19))
    assert max(len(x) for x in pieces) < 2**20  # never the whole archive at once
    z = zipfile.ZipFile(io.BytesIO(b"".join(pieces)))
    assert z.testzip() is None
    assert sorted(z.namelist()) == ["sc/1.dcm", "seg.dcm", "sr.dcm"]
    assert z.read("sc/1.dcm") == files[2].read_bytes()
