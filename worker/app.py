"""The Celery application: the only place Celery is configured.

Choices, and why (measured facts in TOOLCHAIN.md):

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only when its task
  ends, and a killed pool process puts its task back at once, so a crash loses no job.
- ``worker_prefetch_multiplier = 1``: a worker holds one message per process, so a long inference
  does not keep the next study waiting behind it while another worker idles.
- Broker visibility timeout from ``settings.queue.visibility_timeout_s`` (validated to exceed
  ``task_time_limit_s``): an unacknowledged message is delivered again only after a task could no
  longer be running. The sweep that puts such messages back runs every few seconds instead of kombu's
  default of about 100 s. Tasks are idempotent, because a message may still arrive twice.
- Two queues: ``settings.queue.cpu_queue`` (convert, preprocess, map back, outputs, send) and
  ``settings.queue.gpu_queue`` (inference only), so GPU hosts only run the model.
- JSON messages only; no result backend (the jobs database is the one record of job state).

The model is never loaded here: ``worker.tasks`` loads it once per worker process, after fork.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from config.settings import Settings, load_settings

# Task names: the node sends "gliomaseg.process_job" by name (contracts.md).
PROCESS_JOB = "gliomaseg.process_job"
SEGMENT_JOB = "gliomaseg.segment_job"
FINISH_JOB = "gliomaseg.finish_job"
SEND_JOB = "gliomaseg.send_job"

# How often (s) a worker sweeps unacknowledged messages older than the visibility timeout back
# into their queue. kombu's default is 10 s x throttle 10, about 100 s.
RESTORE_INTERVAL_S = 5

app = Celery("gliomaseg", include=["worker.tasks"])

_settings: Settings | None = None


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for ``settings`` (pure: plain data in, plain data out)."""
    q = settings.queue
    soft_limit_s = max(1, q.task_time_limit_s - max(1, min(30, q.task_time_limit_s // 10)))
    return {
        "broker_url": q.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": q.visibility_timeout_s,
            "unacked_restore_interval": RESTORE_INTERVAL_S,
            "unacked_restore_throttle": 1,
        },
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": q.task_time_limit_s,
        "task_soft_time_limit": soft_limit_s,
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": q.cpu_queue,
        "task_queues": [Queue(q.cpu_queue), Queue(q.gpu_queue)],
        "task_routes": {
            PROCESS_JOB: {"queue": q.cpu_queue},
            SEGMENT_JOB: {"queue": q.gpu_queue},
            FINISH_JOB: {"queue": q.cpu_queue},
            SEND_JOB: {"queue": q.cpu_queue},
        },
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "worker_max_tasks_per_child": None,
        # A pool child imports the steps' libraries and loads the model before it reports ready:
        # seconds on a busy machine, more than Celery's default 4 s.
        "worker_proc_alive_timeout": 120.0,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "enable_utc": True,
    }


def configure(settings: Settings) -> Celery:
    """Configure the process's Celery app from ``settings`` (once, before any task is sent)."""
    global _settings
    _settings = settings
    app.conf.update(celery_config(settings))
    return app


def get_settings() -> Settings:
    """The settings this process was configured with (read from the environment if none were)."""
    global _settings
    if _settings is None:
        configure(load_settings())
    assert _settings is not None
    return _settings


@app.on_configure.connect
def _configure_from_environment(sender: Celery, **_: Any) -> None:
    # `celery -A worker.app ...` or a bare import: read GLIOMASEG_CONFIG / the environment.
    if _settings is None:
        configure(load_settings())
