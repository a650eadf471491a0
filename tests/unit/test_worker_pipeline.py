"""The pipeline's orchestration: states, recorded steps, error policy, delivery retries.

The job store and the spool are the real ones (SQLite in tmp_path). The conversion, model, map-back,
output and send parts are stand-ins here on purpose: these tests pin the orchestration rules
(which state, which reason, how many attempts, which backoff); the real parts run end to end in
tests/integration/test_e2e_*.py against Orthanc.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from config.errors import ConversionError, PermanentError, TransientError
from config.settings import Peer, QueueSettings, Settings
from dicom_node.jobs import JobState, JobStore
from dicom_node.spool import Spool
from worker.app import PROCESS_JOB, SEGMENT_JOB, SEND_JOB, celery_config
from worker.cli import local_redis_port, resolve_queues
from worker.pipeline import Deps, Pipeline, PipelineOptions, WrittenOutputs, backoff_s
from worker.tasks import StateAdapter

ROLES = ("T1", "T1c", "T2", "FLAIR")
PACS = Peer(ae_title="ORTHANC", host="127.0.0.1", port=4242)


class Model:
    name = "stand-in"
    version = "0.0-test"

    def __call__(self, images: Any, spacing_mm: Any, *, brain_mask: Any) -> np.ndarray:
        labels = np.zeros(next(iter(images.values())).shape, np.uint8)
        labels[2:4, 2:4, 2:4] = 4
        return labels


class Sender:
    """Answers from a script: each item is 'ok', 'down' (TransientError) or 'reject'."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, int]] = []

    def __call__(self, paths: Any, peer: Peer, *, calling_ae: str) -> Any:
        self.calls.append((peer.ae_title, len(paths)))
        what = self.script.pop(0) if self.script else "ok"
        if what == "down":
            raise TransientError("association rejected or peer unreachable")
        if what == "reject":
            raise PermanentError("peer refused Segmentation Storage")
        return SimpleNamespace(sent=len(paths), failed=0, statuses={})


def make(
    tmp_path: Path,
    *,
    sender: Sender | None = None,
    convert: Any = None,
    retries: int = 2,
    source: str = "dicom",
):
    store = StateAdapter(JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}"))
    spool = Spool(tmp_path / "spool")
    roles = {}
    study = "1.2.3.4"
    for i, role in enumerate(ROLES):
        series = f"1.2.3.4.{i}"
        roles[role] = series
        spool.store(study, series, f"{series}.1", b"DICM-ish bytes")

    def write_outputs(natives: Any, out_dir: Path, **kw: Any) -> WrittenOutputs:
        path = out_dir / "seg.dcm"
        path.write_bytes(b"seg")
        return WrittenOutputs({"whole_tumor": 8.0}, {"series": {"T1c": {"seg": "9.9"}}}, [path])

    deps = Deps(
        convert=convert or (lambda files, work: SimpleNamespace(files=list(files))),
        prepare=lambda vols, **kw: SimpleNamespace(
            images={r: np.ones((6, 6, 6), np.float32) for r in vols},
            spacing_mm=(1.0, 1.0, 1.0),
            brain_mask=None,
        ),
        segmenter=Model,
        map_back=lambda labels, prepared, ref: SimpleNamespace(labels=labels, datasets=[]),
        write_outputs=write_outputs,
        send=sender or Sender([]),
    )
    options = PipelineOptions(destinations={"PACS": PACS}, send_retries=retries, send_backoff_s=0.5)
    job = store.create(
        study,
        calling_ae="MODALITY",
        calling_ip="127.0.0.1",
        roles=roles,
        state=JobState.queued,
        source=source,
    )
    return Pipeline(store, spool, deps, options), job.id


def test_backoff_doubles_and_caps() -> None:
    assert [backoff_s(a, 2.0) for a in range(5)] == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert backoff_s(20, 2.0, cap_s=300) == 300
    with pytest.raises(ValueError, match="attempt"):
        backoff_s(-1, 2.0)


def test_celery_config_follows_the_settings() -> None:
    s = Settings(queue=QueueSettings(task_time_limit_s=100, visibility_timeout_s=150))
    c = celery_config(s)
    assert c["task_acks_late"] and c["task_reject_on_worker_lost"]
    assert c["worker_prefetch_multiplier"] == 1
    assert c["broker_transport_options"]["visibility_timeout"] == 150
    assert c["task_time_limit"] == 100 and c["task_soft_time_limit"] < 100
    assert c["task_routes"][SEGMENT_JOB] == {"queue": "gliomaseg.gpu"}
    assert c["task_routes"][PROCESS_JOB] == c["task_routes"][SEND_JOB] == {"queue": "gliomaseg.cpu"}
    assert c["accept_content"] == ["json"]


def test_queue_aliases_and_local_broker_detection() -> None:
    q = QueueSettings()
    assert resolve_queues("cpu,gpu", q) == ["gliomaseg.cpu", "gliomaseg.gpu"]
    assert resolve_queues("gpu, gpu,other", q) == ["gliomaseg.gpu", "other"]
    assert local_redis_port("redis://127.0.0.1:6380/0") == 6380
    assert local_redis_port("redis://localhost/0") == 6379
    assert local_redis_port("redis://broker.hospital.org:6379/0") is None


def test_a_job_runs_through_every_step_and_is_delivered(tmp_path: Path) -> None:
    sender = Sender(["ok"])
    p, job_id = make(tmp_path, sender=sender)
    assert p.run(job_id) == "delivered"
    job = p.store.get(job_id)
    assert job.state == "delivered" and job.reason is None
    names = [s["step"] for s in job.steps]
    assert names == ["convert", "preprocess", "segment", "map_back", "outputs", "send"]
    assert all(s["status"] == "ok" and s["elapsed_s"] >= 0 for s in job.steps)
    assert job.volumes_ml == {"whole_tumor": 8.0}
    assert job.outputs["model"] == {"name": "stand-in", "version": "0.0-test"}
    assert [d["ok"] for d in job.deliveries] == [True]
    assert job.attempts == 1
    # A duplicate message for a finished job does nothing.
    assert p.prepare(job_id) is False and p.segment(job_id) is False and p.finish(job_id) is False
    assert len(p.store.get(job_id).steps) == 6


def test_missing_sequence_fails_with_the_reason(tmp_path: Path) -> None:
    p, job_id = make(tmp_path)
    p.store.update(
        job_id, roles={"T1": "1.2.3.4.0", "T1c": "1.2.3.4.1", "T2": "1.2.3.4.2", "FLAIR": None}
    )
    assert p.run(job_id) == "failed"
    job = p.store.get(job_id)
    assert job.state == "failed"
    assert "need T1, T1c, T2, FLAIR" in job.reason and "missing: FLAIR" in job.reason


def test_a_permanent_error_fails_the_job_and_records_the_failed_step(tmp_path: Path) -> None:
    def convert(files: Any, work: Path) -> Any:
        raise ConversionError(
            "T2 series: slices do not share one orientation (2 orientations found)"
        )

    p, job_id = make(tmp_path, convert=convert)
    assert p.run(job_id) == "failed"
    job = p.store.get(job_id)
    assert "2 orientations found" in job.reason
    assert job.steps[-1]["step"] == "convert" and job.steps[-1]["status"] == "failed"


def test_delivery_retries_with_backoff_then_succeeds(tmp_path: Path) -> None:
    sender = Sender(["down", "down", "ok"])
    p, job_id = make(tmp_path, sender=sender, retries=2)
    slept: list[float] = []
    assert p.run(job_id, sleep=slept.append) == "delivered"
    assert slept == [0.5, 1.0]
    job = p.store.get(job_id)
    assert [d["ok"] for d in job.deliveries] == [False, False, True]
    assert [s["step"] for s in job.steps].count("send") == 3


def test_delivery_failed_after_the_limit_keeps_the_outputs(tmp_path: Path) -> None:
    sender = Sender(["down"] * 10)
    p, job_id = make(tmp_path, sender=sender, retries=2)
    assert p.run(job_id, sleep=lambda s: None) == "delivery_failed"
    job = p.store.get(job_id)
    assert len(sender.calls) == 3
    assert "after 3 attempts" in job.reason and f"gliomaseg resend {job_id}" in job.reason
    assert all(Path(f).is_file() for f in job.outputs["files"])
    # resend once the peer is back
    sender.script = ["ok"]
    assert p.deliver(job_id).state == "delivered"
    assert p.store.get(job_id).state == "delivered"


def test_a_rejecting_peer_is_not_retried(tmp_path: Path) -> None:
    sender = Sender(["reject"])
    p, job_id = make(tmp_path, sender=sender, retries=5)
    assert p.run(job_id, sleep=lambda s: pytest.fail("must not retry")) == "delivery_failed"
    assert "rejected by the destination" in p.store.get(job_id).reason


def test_only_one_message_claims_a_job(tmp_path: Path) -> None:
    p, job_id = make(tmp_path)
    assert p.claim(job_id) is True
    assert p.store.get(job_id).state == "running"
    assert p.claim(job_id) is False  # a duplicate message (the node re-sent it, say)
    assert p.claim(job_id, redelivered=True) is True  # the broker redelivered: its worker died
    p.store.set_state(job_id, "delivered")
    assert p.claim(job_id, redelivered=True) is False


class FakeTask:
    """Celery's task-side API that run_stage uses: request.retries and retry()."""

    class Retry(Exception):
        pass

    def __init__(self, retries: int) -> None:
        self.request = SimpleNamespace(retries=retries)
        self.countdowns: list[float] = []

    def retry(self, *, exc: Exception, countdown: float) -> Exception:
        self.countdowns.append(countdown)
        return FakeTask.Retry(str(exc))


def test_run_stage_decides_the_fate_of_a_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.tasks as tasks

    p, job_id = make(tmp_path)
    monkeypatch.setattr(tasks, "pipeline", lambda: p)

    def boom(exc: Exception):
        def fn(_: Any) -> Any:
            raise exc

        return fn

    task = FakeTask(retries=0)
    with pytest.raises(FakeTask.Retry):
        tasks.run_stage(task, job_id, "send", boom(TransientError("broker gone")))
    assert task.countdowns and task.countdowns[0] > 0
    assert p.store.get(job_id).state == "queued"  # untouched while retrying

    tasks.run_stage(
        FakeTask(retries=tasks.TRANSIENT_RETRIES),
        job_id,
        "send",
        boom(TransientError("broker gone")),
    )
    assert p.store.get(job_id).state == "failed"
    assert "gave up after" in p.store.get(job_id).reason

    p.store.set_state(job_id, "running")
    tasks.run_stage(
        FakeTask(retries=0), job_id, "outputs", boom(ZeroDivisionError("division by zero"))
    )
    job = p.store.get(job_id)
    assert (
        job.state == "failed"
        and job.reason == "internal error in outputs: ZeroDivisionError: division by zero"
    )

    p.store.set_state(job_id, "running")
    tasks.run_stage(FakeTask(retries=0), job_id, "convert", boom(ConversionError("T2: no image")))
    assert p.store.get(job_id).reason == "T2: no image"
    assert tasks.run_stage(FakeTask(retries=0), job_id, "x", lambda _: 42) == 42


def test_a_web_upload_is_kept_not_sent_unless_configured(tmp_path: Path) -> None:
    sender = Sender(["ok", "ok"])
    p, job_id = make(tmp_path, sender=sender, source="upload")
    assert p.run(job_id) == "delivered"
    job = p.store.get(job_id)
    assert sender.calls == [] and job.deliveries == []
    assert "kept, not sent" in job.steps[-1]["detail"]
    # An operator's resend sends it on purpose.
    assert p.deliver(job_id, explicit=True).state == "delivered"
    assert len(sender.calls) == 1
    # With outputs.send_uploads = true, uploads go out like any study.
    p.options = dataclasses.replace(p.options, send_uploads=True)
    assert p.deliver(job_id).state == "delivered"
    assert len(sender.calls) == 2
