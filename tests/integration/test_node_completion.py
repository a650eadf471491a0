"""Completion with a controllable clock, in-process node, real storescu and real Redis.

The node runs in this process (``Node.start(loop=False)``) so the test drives the clock and the
completion passes; instances arrive from DCMTK storescu; jobs are handed to a real Redis
(database 11, a queue name unique to this test run).
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis

from config.settings import (
    CompletionSettings,
    DicomSettings,
    QueueSettings,
    Settings,
    SpoolSettings,
)
from dicom_node.enqueue import TASK_NAME
from dicom_node.jobs import JobState
from dicom_node.service import Node
from dicom_node.studygen import write_study
from tests.conftest import free_port, wait_for
from tests.node_support import make_series, run_storescu, store_statuses

pytestmark = pytest.mark.integration

REDIS_DB = 11


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def volumes(roles: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    return {r: (rng.integers(0, 800, (24, 24, 5)).astype(np.int16), affine) for r in roles}


def settings_for(tmp: Path, broker_url: str, queue: str, **completion: float) -> Settings:
    return Settings(
        dicom=DicomSettings(port=free_port(), ae_title="GLIOMASEG"),
        spool=SpoolSettings(root=tmp / "spool", min_free_mb=0),
        queue=QueueSettings(broker_url=broker_url, cpu_queue=queue),
        completion=CompletionSettings(
            series_quiet_s=completion.get("quiet", 60), study_force_s=completion.get("force", 900)
        ),
    )


def queued_job_ids(r: redis.Redis, queue: str) -> list[str]:
    ids = []
    for raw in r.lrange(queue, 0, -1):
        msg = json.loads(raw)
        assert msg["headers"]["task"] == TASK_NAME
        args = json.loads(base64.b64decode(msg["body"]))[0]
        ids.append(args[0])
    return ids


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    full = write_study(volumes(["T1", "T1c", "T2", "FLAIR"]), root / "full", vendor="siemens")
    no_flair = write_study(volumes(["T1", "T1c", "T2"]), root / "noflair", vendor="ge")
    return full, no_flair


def all_paths(study) -> list[Path]:
    return [p for s in study.series.values() for p in s.paths]


def test_quiet_period_force_complete_and_late_instances(tmp_path, studies):
    full, no_flair = studies
    queue = f"node-test-{uuid.uuid4().hex[:8]}.cpu"
    r = redis.Redis(db=REDIS_DB)
    clock = Clock()
    node = Node(settings_for(tmp_path, f"redis://127.0.0.1:6379/{REDIS_DB}", queue), clock=clock)
    node.start(loop=False)
    try:
        done = run_storescu(node.port, all_paths(full) + all_paths(no_flair))
        assert done.returncode == 0, done.stderr
        assert store_statuses(done.stdout + done.stderr).count("Success") == 35
        jobs = {j.study_uid: j for j in node.store.list()}
        assert {j.state for j in jobs.values()} == {JobState.waiting}
        full_job, nf_job = jobs[full.study_uid], jobs[no_flair.study_uid]

        clock.t += 59
        node.tick()
        assert node.store.get(full_job.id).state is JobState.waiting

        clock.t += 1  # 60 s quiet: the complete study is ready, the other waits for FLAIR
        node.tick()
        queued = node.store.get(full_job.id)
        assert queued.state is JobState.queued and queued.enqueued is not None
        assert queued.roles == {
            role: full.series[role].series_uid for role in ("T1", "T1c", "T2", "FLAIR")
        }
        assert len(queued.classification) == 4
        assert queued_job_ids(r, queue) == [full_job.id]
        assert node.store.get(nf_job.id).state is JobState.waiting

        clock.t += 900  # force-complete: FLAIR never came
        node.tick()
        failed = node.store.get(nf_job.id)
        assert failed.state is JobState.failed
        assert failed.reason.startswith("FLAIR missing")

        # A late instance of the started study is recorded, not reprocessed.
        extra = tmp_path / "late"
        make_series(extra, 1, study_uid=full.study_uid)
        assert run_storescu(node.port, sorted(extra.iterdir())).returncode == 0
        node.tick()
        after = node.store.get(full_job.id)
        assert after.late_instances == 1 and after.state is JobState.queued
        assert queued_job_ids(r, queue) == [full_job.id]  # not enqueued twice
        events = [e["event"] for e in node.store.audit_events(full_job.id)]
        assert events[:3] == ["study_received", "job_created", "job_queued"]
        assert "job_enqueued" in events and "late_instances" in events
        assoc = node.store.audit_events(event="association")
        assert assoc and assoc[0]["detail"] == {"calling_ae": "STORESCU", "calling_ip": "127.0.0.1"}
    finally:
        node.stop()
        r.delete(queue)


@pytest.fixture
def own_redis(tmp_path):
    """A private redis-server on a free port, that the test can stop and start."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    procs: list[subprocess.Popen] = []

    def start() -> None:
        procs.append(
            subprocess.Popen(
                [
                    exe,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=subprocess.DEVNULL,
                cwd=tmp_path,
            )
        )

        def up() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(up, 10)

    yield port, start
    for p in procs:
        p.terminate()
        p.wait(10)


def test_job_waits_while_redis_is_down_and_is_enqueued_when_it_returns(
    tmp_path, studies, own_redis
):
    port, start_redis = own_redis
    full, _ = studies
    queue = "node-test.cpu"
    clock = Clock()
    settings = settings_for(tmp_path, f"redis://127.0.0.1:{port}/0", queue, quiet=5)
    node = Node(settings, clock=clock)
    node.start(loop=False)
    try:
        assert run_storescu(node.port, all_paths(full)).returncode == 0
        clock.t += 5
        node.tick()  # ready, but the broker is down
        (job,) = node.store.list()
        assert job.state is JobState.queued and job.enqueued is None

        start_redis()
        clock.t += 5
        node.tick()
        job = node.store.get(job.id)
        assert job.enqueued is not None
        assert queued_job_ids(redis.Redis(port=port), queue) == [job.id]
    finally:
        node.stop()

    # On start, a queued job never picked up is handed to the queue again.
    restarted = Node(settings, clock=clock)
    restarted.start(loop=False)
    try:
        assert queued_job_ids(redis.Redis(port=port), queue) == [job.id, job.id]
        assert "job_reenqueued" in [e["event"] for e in restarted.store.audit_events(job.id)]
    finally:
        restarted.stop()
