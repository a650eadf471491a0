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
