"""The hand-off to the worker queue, by task name (the node never imports the worker).

A job is ``queued`` when its study is ready; it is *handed off* when the broker took the
message (``Job.enqueued`` is set). When Redis is down the job stays queued with ``enqueued``
unset and :func:`flush_pending` retries it later; at start the node re-sends every queued
job (the worker ignores a message for a job that is no longer ``queued``).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Protocol

from config.errors import TransientError
from dicom_node.jobs import JobState, JobStore, utcnow

log = logging.getLogger(__name__)

TASK_NAME = "gliomaseg.process_job"


class Enqueuer(Protocol):
    def send(self, job_id: str) -> None:
        """Hand the job to the queue; raise TransientError when the broker is unreachable."""
        ...


class CeleryEnqueuer:
    """``Celery(broker=...).send_task("gliomaseg.process_job", args=[job_id], queue=...)``."""

    def __init__(self, broker_url: str, queue: str, *, connect_timeout_s: float = 2.0) -> None:
        from celery import Celery

        self.queue = queue
        self.app = Celery("gliomaseg-node", broker=broker_url, set_as_current=False)
        self.app.conf.broker_connection_timeout = connect_timeout_s
        self.app.conf.broker_connection_retry = False
        self.app.conf.broker_connection_retry_on_startup = False
        self.app.conf.broker_connection_max_retries = 0
        self.app.conf.task_default_queue = queue

    def send(self, job_id: str) -> None:
        try:
            self.app.send_task(TASK_NAME, args=[job_id], queue=self.queue, retry=False)
        except Exception as exc:  # kombu OperationalError, redis ConnectionError, socket errors
            raise TransientError(
                f"broker unreachable, job {job_id} stays queued until it returns "
                f"({type(exc).__name__})"
            ) from exc

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.app.close()


def hand_off(
    store: JobStore, enqueuer: Enqueuer, job_id: str, *, event: str = "job_enqueued"
) -> bool:
    """Send one queued job to the broker; True when the broker took it."""
    try:
        enqueuer.send(job_id)
    except TransientError as exc:
        log.warning("enqueue failed; will retry", extra={"job_id": job_id, "error": str(exc)})
        return False
    store.update(job_id, enqueued=utcnow())
    store.audit(event, job_id=job_id)
    log.info("job handed to the queue", extra={"job_id": job_id})
    return True


@dataclass(frozen=True)
class Flushed:
    n_sent: int
    n_pending: int  # still not handed off (the broker is down)


def flush_pending(store: JobStore, enqueuer: Enqueuer, *, resend_all: bool = False) -> Flushed:
    """Hand off queued jobs the broker has not taken (all queued ones with ``resend_all``).

    Stops at the first failure (the broker is down); the rest stay pending.
    """
    todo = [
        job
        for job in reversed(store.list(state=JobState.queued, limit=10_000))  # oldest first
        if resend_all or job.enqueued is None
    ]
    for i, job in enumerate(todo):
        event = "job_reenqueued" if job.enqueued is not None else "job_enqueued"
        if not hand_off(store, enqueuer, job.id, event=event):
            return Flushed(i, len(todo) - i)
    return Flushed(len(todo), 0)
