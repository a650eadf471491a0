"""Celery tasks: thin shells around :class:`worker.pipeline.Pipeline` stages.

Each task loads nothing itself: it runs one stage for a job id and hands the job to the next
queue. ``process_job`` (cpu: convert + preprocess) -> ``segment_job`` (gpu: the model) ->
``finish_job`` (cpu: map back + outputs + first send) -> ``send_job`` (cpu: delivery retries).
Errors decide the job's fate here, in one place: PermanentError -> ``failed`` with its reason;
TransientError -> retried with backoff; anything else -> ``failed`` ("internal error ..."), never
looped. The model is loaded once per worker process, after fork (``worker_process_init``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init

from config.errors import PermanentError, TransientError
from worker.app import FINISH_JOB, PROCESS_JOB, SEGMENT_JOB, SEND_JOB, app, get_settings
from worker.pipeline import (
    ModelSegmenter,
    Pipeline,
    backoff_s,
    default_deps,
    job_state,
    options_from,
)

log = logging.getLogger(__name__)

TRANSIENT_RETRIES = 3  # for steps other than delivery (which uses outputs.send_retries)

# Set by `gliomaseg worker` when this worker consumes the GPU queue: children load the model at start.
PRELOAD_MODEL = False
# Set by `gliomaseg worker` when it consumes the CPU queue: children import the CPU steps at start.
PRELOAD_CPU_STEPS = False
CPU_STEP_MODULES = (
    "worker.convert",
    "worker.preprocess",
    "worker.mapback",
    "worker.outputs.seg",
    "worker.outputs.sr",
    "worker.outputs.overlay",
    "dicom_node.scu",
)

_context: dict[int, Pipeline] = {}
_segmenter: dict[int, ModelSegmenter] = {}


def segmenter() -> ModelSegmenter:
    """This process's model (one per process; loaded on first use or by ``preload_model``)."""
    pid = os.getpid()
    if pid not in _segmenter:
        m = get_settings().model
        _segmenter[pid] = ModelSegmenter(m.bundle, device=m.device, tta=m.tta, threads=m.threads)
    return _segmenter[pid]


def pipeline() -> Pipeline:
    """This process's pipeline (database engine and model created after fork, once)."""
    pid = os.getpid()
    if pid not in _context:
        from dicom_node.jobs import JobStore
        from dicom_node.spool import Spool

        settings = get_settings()
        store = StateAdapter(JobStore(settings.database_url))
        _context[pid] = Pipeline(
            store,
            Spool(settings.spool.root),
            default_deps(settings, segmenter()),
            options_from(settings),
        )
    return _context[pid]


class StateAdapter:
    """The JobStore with states given as strings (the pipeline does not import the node's enums)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def set_state(
        self, job_id: str, state: Any, reason: str | None = None, *, expect: Any = None
    ) -> Any:
        from dicom_node.jobs import JobState

        if expect is not None:
            expect = [JobState(str(x)) for x in ([expect] if isinstance(expect, str) else expect)]
        return self._store.set_state(job_id, JobState(str(state)), reason=reason, expect=expect)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def preload_model() -> None:
    try:
        segmenter().load()
    except Exception:  # the segment task reports the same error on the job that needs it
        log.exception("model could not be loaded at worker start")


def preload_cpu_steps() -> None:
    """Import the CPU steps' libraries now, not in the first job (seconds on a small machine)."""
    import importlib

    for name in CPU_STEP_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # the step that needs it reports the error on its job
            log.exception("could not import %s at worker start", name)


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    if PRELOAD_CPU_STEPS:
        preload_cpu_steps()
    if PRELOAD_MODEL:
        preload_model()


def run_stage(task: Any, job_id: str, stage: str, fn: Callable[[Pipeline], Any]) -> Any:
    """Run ``fn(pipeline)``; decide the job's fate on error. Returns fn's result, or None."""
    p = pipeline()
    try:
        return fn(p)
    except PermanentError as exc:
        _fail(p, job_id, str(exc))
    except TransientError as exc:
        if task.request.retries >= TRANSIENT_RETRIES:
            _fail(p, job_id, f"{stage}: gave up after {TRANSIENT_RETRIES} retries: {exc}")
        else:
            delay_s = backoff_s(task.request.retries, get_settings().outputs.send_backoff_s)
            log.warning("transient error; retry in %.0f s", delay_s, extra={"job_id": job_id})
            raise task.retry(exc=exc, countdown=delay_s) from exc
    except SoftTimeLimitExceeded:
        limit_s = get_settings().queue.task_time_limit_s
        _fail(
            p,
            job_id,
            f"{stage} took longer than the task time limit ({limit_s} s, queue.task_time_limit_s)",
        )
    except Exception as exc:
        log.exception("internal error", extra={"job_id": job_id, "step": stage})
        _fail(p, job_id, f"internal error in {stage}: {type(exc).__name__}: {exc}")
    return None


def _fail(p: Pipeline, job_id: str, reason: str) -> None:
    try:
        p.fail(job_id, reason)
    except Exception:
        log.exception("could not record the failure", extra={"job_id": job_id})


def _schedule_delivery(job_id: str, outcome: Any, attempt: int) -> None:
    if outcome is not None and outcome.retry_in_s is not None:
        # A message due later than the visibility timeout would be delivered twice by Redis.
        delay_s = min(outcome.retry_in_s, get_settings().queue.visibility_timeout_s / 2)
        send_job.apply_async(args=[job_id, attempt + 1, list(outcome.pending)], countdown=delay_s)


@app.task(name=PROCESS_JOB, bind=True)
def process_job(self: Any, job_id: str) -> None:
    """cpu: convert + preprocess, then hand the job to the GPU queue."""
    # A redelivered message (its worker died) or our own retry may take over a running job.
    redelivered = bool((self.request.delivery_info or {}).get("redelivered")) or bool(
        self.request.retries
    )
    if run_stage(self, job_id, "prepare", lambda p: p.prepare(job_id, redelivered=redelivered)):
        segment_job.apply_async(args=[job_id], queue=get_settings().queue.gpu_queue)


@app.task(name=SEGMENT_JOB, bind=True)
def segment_job(self: Any, job_id: str) -> None:
    """gpu: run the model, then hand the job back to the CPU queue."""
    if run_stage(self, job_id, "segment", lambda p: p.segment(job_id)):
        finish_job.apply_async(args=[job_id], queue=get_settings().queue.cpu_queue)


@app.task(name=FINISH_JOB, bind=True)
def finish_job(self: Any, job_id: str) -> None:
    """cpu: map back, write outputs, first delivery attempt."""
    if run_stage(self, job_id, "outputs", lambda p: p.finish(job_id)):
        _schedule_delivery(job_id, run_stage(self, job_id, "send", lambda p: p.deliver(job_id)), 0)


@app.task(name=SEND_JOB, bind=True)
def send_job(self: Any, job_id: str, attempt: int, pending: list[str]) -> None:
    """cpu: a later delivery attempt (scheduled with backoff by the previous one)."""

    def attempt_delivery(p: Pipeline) -> Any:
        if job_state(p.store.get(job_id)) != "running":
            return None  # delivered by a duplicate, resent by hand, or retried from scratch
        return p.deliver(job_id, attempt=attempt, pending=pending)

    _schedule_delivery(job_id, run_stage(self, job_id, "send", attempt_delivery), attempt)
