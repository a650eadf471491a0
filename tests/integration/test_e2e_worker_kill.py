"""A GPU-queue worker killed (SIGKILL, whole process) during inference: the job completes once.

Short limits keep this quick: task time limit 40 s, broker visibility timeout 45 s; the study is
the 5 mm version of the case (quicker conversion and outputs, same inference grid). The killed
worker never acknowledged its message; a restarted worker puts it back once the visibility timeout
has passed, runs the model again, and the job ends delivered with one SEG series in Orthanc.
"Inference is running" is read from the broker itself: the segment message of this job sits in
Redis's unacknowledged set while the GPU worker executes it. The killed worker is a prefork one
(parent and pool child both killed), its replacement a solo one: both load the model at start.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import redis

from dicom_node.jobs import JobStore
from dicom_node.studygen import write_brats_case
from tests.conftest import wait_for
from tests.peers import Orthanc, Service, storescu
from worker.app import SEGMENT_JOB

pytestmark = [pytest.mark.integration, pytest.mark.data, pytest.mark.slow]

CASE = "Brats18_TCIA02_370_1"  # a validation case of the shipped model
TERMINAL = ("delivered", "failed", "delivery_failed")


def segment_in_flight(client: redis.Redis, job_id: str) -> bool:
    """True while a worker holds (unacknowledged) the segment message of ``job_id``."""
    for raw in client.hvals("unacked"):
        try:
            message = json.loads(raw)[0]  # kombu keeps [message, exchange, routing_key]
        except (ValueError, TypeError, IndexError):
            continue
        headers = message.get("headers", {})
        if headers.get("task") == SEGMENT_JOB and job_id in str(headers.get("argsrepr", "")):
            return True
    return False


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, orthanc: Orthanc):
    svc = Service.configure(
        Path(tmp_path_factory.mktemp("kill-service")),
        pacs=orthanc,
        extra_env={
            "GLIOMASEG_QUEUE__TASK_TIME_LIMIT_S": "40",
            "GLIOMASEG_QUEUE__VISIBILITY_TIMEOUT_S": "45",
        },
    )
    svc.start_node()
    svc.start_worker("worker-cpu", "--queues", "cpu", "--concurrency", "1")
    # prefork here (the model loads in the pool child after fork); the replacement below is solo
    svc.start_worker("worker-gpu", "--queues", "gpu", "--concurrency", "1")
    yield svc
    svc.stop_all()


def test_a_worker_killed_during_inference_completes_the_job_once(
    datasets: Path, orthanc: Orthanc, service: Service, tmp_path: Path
) -> None:
    study = write_brats_case(datasets / "brats" / CASE, tmp_path / "study", slice_mm=5.0)
    storescu("127.0.0.1", service.dicom_port, "GLIOMASEG", study.paths, calling_aet="MODALITY")
    store = JobStore(service.database_url)
    job = wait_for(lambda: next(iter(store.list(study_uid=study.study_uid)), None), timeout_s=120)
    client = redis.Redis.from_url(service.env["GLIOMASEG_QUEUE__BROKER_URL"])

    def inference_running() -> bool:
        current = store.get(job.id)
        assert current.state not in TERMINAL, (current.state, current.reason, service.logs())
        done = {s["step"] for s in current.steps if s["status"] == "ok"}
        return "preprocess" in done and "segment" not in done and segment_in_flight(client, job.id)

    wait_for(inference_running, timeout_s=300, interval_s=0.05)
    service.kill("worker-gpu", signal.SIGKILL)
    assert "segment" not in {s["step"] for s in store.get(job.id).steps}, "killed too late"

    service.start_worker("worker-gpu-2", "--queues", "gpu", "--pool", "solo")

    def ended():
        current = store.get(job.id)
        return current if current.state in TERMINAL else None

    final = wait_for(ended, timeout_s=400, interval_s=0.5)
    assert final.state == "delivered", (final.reason, service.logs())
    ok_steps = [s["step"] for s in final.steps if s["status"] == "ok"]
    assert ok_steps.count("segment") == 1
    assert ok_steps.count("outputs") == 1
    by_modality = orthanc.series_by_modality(study.study_uid)
    assert len(by_modality["SEG"]) == 1 and len(by_modality["SEG"][0]["Instances"]) == 1
    assert len(by_modality["SR"]) == 1
