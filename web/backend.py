"""What the web talks to: the jobs database, the spool, the queue, the DICOM peers.

The web reads job state only from :class:`dicom_node.jobs.JobStore` and bytes only from the
spool. Actions that change something (retry, resend, queue an upload, C-ECHO) go through
:class:`Actions`, which calls the same functions as the command line (worker's retry/resend,
the node's SCU echo, Celery ``send_task`` by name like the node), so the web never reimplements
the pipeline. Tests inject their own ``Actions`` only where a real peer cannot be arranged.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from config.errors import GliomasegError, PermanentError, TransientError
from config.settings import Settings

log = logging.getLogger(__name__)

PROCESS_TASK = "gliomaseg.process_job"


class Actions(Protocol):
    def retry(self, job_id: str) -> None: ...

    def resend(self, job_id: str) -> None: ...

    def enqueue(self, job_id: str, *, expect: tuple[str, ...] = ("waiting",)) -> None: ...

    def echo(self, peer_name: str) -> float: ...


class ActionUnavailable(GliomasegError):
    """The part that implements an action is not installed in this deployment."""


@dataclass
class DefaultActions:
    """The real actions, the same as the command line's.

    retry: like ``gliomaseg retry`` (failed / delivery_failed -> queued, handed to the broker by
    task name with the node's enqueuer; while the broker is down the job stays queued and the node
    hands it off when the broker returns). resend: like ``gliomaseg resend`` (the
    worker's ``Pipeline.deliver`` with no retries), in a background thread so the page answers at
    once; the job page shows the delivery when it is recorded. echo: the node's SCU C-ECHO.
    """

    settings: Settings
    store: Any

    def enqueue(self, job_id: str, *, expect: tuple[str, ...] = ("waiting",)) -> None:
        """Move the job from ``expect`` to queued and hand it to the broker.

        ``enqueued`` is stamped before the state changes, so the node's flush of queued-but-not-
        handed-off jobs never sends it a second time; if the broker refuses, the stamp is cleared
        and the node hands the job off when the broker answers again (TransientError raised).
        """
        from dicom_node.enqueue import CeleryEnqueuer
        from dicom_node.jobs import JobState, utcnow

        self.store.update(job_id, enqueued=utcnow())
        self.store.set_state(
            job_id, JobState.queued, reason=None, expect=[JobState(e) for e in expect]
        )
        enqueuer = CeleryEnqueuer(self.settings.queue.broker_url, self.settings.queue.cpu_queue)
        try:
            enqueuer.send(job_id)
        except TransientError:
            self.store.update(job_id, enqueued=None)
            raise
        finally:
            enqueuer.close()
        self.store.audit("job_enqueued", job_id=job_id, detail={"by": "web"})

    def retry(self, job_id: str) -> None:
        state = str(self.store.get(job_id).state)
        if state not in ("failed", "delivery_failed"):
            raise PermanentError(
                f"job {job_id} is {state}; only failed or delivery_failed jobs are retried"
            )
        self.store.audit("retry", job_id=job_id, detail={"from_state": state, "by": "web"})
        try:
            self.enqueue(job_id, expect=("failed", "delivery_failed"))
        except TransientError as exc:
            log.warning(
                "retry queued but not handed off", extra={"job_id": job_id, "error": str(exc)}
            )

    def resend(self, job_id: str) -> None:
        job = self.store.get(job_id)
        if not (job.outputs or {}).get("files"):
            raise PermanentError(
                f"job {job_id} is {job.state} and has no outputs to send; use Retry"
            )
        if not self.settings.outputs.destinations:
            raise PermanentError("no destinations configured (outputs.destinations)")
        try:
            from worker.cli import store_and_pipeline
        except ImportError as exc:
            raise ActionUnavailable(f"the worker package is not installed here ({exc})") from None
        _, pipeline = store_and_pipeline(self.settings)
        pipeline.options = dataclasses.replace(pipeline.options, send_retries=0)
        self.store.audit("resend", job_id=job_id, detail={"by": "web"})

        def run() -> None:
            try:
                pipeline.deliver(job_id, attempt=0, explicit=True)
            except Exception:
                log.exception("resend failed", extra={"job_id": job_id})

        threading.Thread(target=run, name=f"resend-{job_id}", daemon=True).start()

    def echo(self, peer_name: str) -> float:
        from dicom_node import scu

        peer = self.settings.peer(peer_name)
        t0 = time.monotonic()
        scu.echo(peer, calling_ae=self.settings.dicom.ae_title, timeout_s=10)
        return time.monotonic() - t0


def open_store(settings: Settings) -> Any:
    """The jobs database of this deployment (``dicom_node.jobs.JobStore``)."""
    from dicom_node.jobs import JobStore

    return JobStore(settings.database_url)
