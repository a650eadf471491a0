"""``gliomaseg worker``, ``serve``, ``resend`` and ``retry``."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click

from config.cli import settings_from
from config.settings import QueueSettings, Settings

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
STOP_GRACE_S = 30.0


def resolve_queues(spec: str, queue: QueueSettings) -> list[str]:
    """``"cpu,gpu"`` (aliases) or queue names -> queue names, in order, without repeats."""
    aliases = {"cpu": queue.cpu_queue, "gpu": queue.gpu_queue}
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name = aliases.get(part.lower(), part)
        if name not in names:
            names.append(name)
    if not names:
        raise click.BadParameter(f"no queue in {spec!r}; use cpu, gpu or queue names")
    return names


# ---------------------------------------------------------------------------------------------
# gliomaseg worker


@click.command("worker")
@click.option(
    "--queues",
    "-Q",
    default="cpu,gpu",
    show_default=True,
    help="Queues to consume: cpu (convert, preprocess, map back, outputs, send), gpu (the model), "
    "or queue names. A GPU host runs `--queues gpu`.",
)
@click.option("--concurrency", "-c", type=click.IntRange(1), default=1, show_default=True)
@click.option(
    "--pool",
    "-P",
    type=click.Choice(["prefork", "solo", "threads"]),
    default="prefork",
    show_default=True,
    help="prefork: child processes (the model loads in each child after fork); solo: one "
    "process, the model loaded in it (recommended for a GPU-only worker).",
)
@click.option(
    "--hostname", "-n", default=None, help="Celery node name (default: unique per process)."
)
@click.pass_context
def worker(
    ctx: click.Context, queues: str, concurrency: int, pool: str, hostname: str | None
) -> None:
    """Start a Celery worker that processes jobs."""
    settings = settings_from(ctx)
    names = resolve_queues(queues, settings.queue)
    from worker import tasks
    from worker.app import configure

    app = configure(settings)
    if settings.queue.cpu_queue in names:
        if pool == "prefork":
            tasks.PRELOAD_CPU_STEPS = True  # each child, after fork (they import torch: deepbet)
        else:
            tasks.preload_cpu_steps()
    if settings.queue.gpu_queue in names:
        if pool == "prefork":
            tasks.PRELOAD_MODEL = True  # each child loads the model after fork, never the parent
        else:
            tasks.preload_model()
    kinds = [
        k
        for k, q in (("cpu", settings.queue.cpu_queue), ("gpu", settings.queue.gpu_queue))
        if q in names
    ]
    node = hostname or f"gliomaseg-{'-'.join(kinds) or 'custom'}-{os.getpid()}@%h"
    argv = [
        "worker",
        "--queues",
        ",".join(names),
        "--concurrency",
        str(concurrency),
        "--pool",
        pool,
        "--hostname",
        node,
        "--loglevel",
        settings.logging.level,
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(argv)


# ---------------------------------------------------------------------------------------------
# gliomaseg resend / retry


def store_and_pipeline(settings: Settings) -> tuple[Any, Any]:
    """The jobs store (states as strings) and a Pipeline with the real parts, for this process."""
    from dicom_node.jobs import JobStore
    from dicom_node.spool import Spool
    from worker.pipeline import Pipeline, default_deps, options_from
    from worker.tasks import StateAdapter

    store = StateAdapter(JobStore(settings.database_url))
    return store, Pipeline(
        store, Spool(settings.spool.root), default_deps(settings), options_from(settings)
    )


def _get_job(store: Any, job_id: str) -> Any:
    from config.errors import GliomasegError

    try:
        return store.get(job_id)
    except (GliomasegError, KeyError) as exc:
        raise click.ClickException(f"no job {job_id!r}: {exc}") from None


@click.command("resend")
@click.argument("job_id")
@click.option(
    "--retries",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Retries with exponential backoff (outputs.send_backoff_s) after the first attempt.",
)
@click.pass_context
def resend(ctx: click.Context, job_id: str, retries: int) -> None:
    """Send a job's kept outputs to every destination again (e.g. after delivery_failed).

    Runs in this process (no worker needed); exit 0 when every destination stored them.
    """
    from config.errors import PermanentError
    from worker.pipeline import job_state

    settings = settings_from(ctx)
    store, p = store_and_pipeline(settings)
    job = _get_job(store, job_id)
    if not (job.outputs or {}).get("files"):
        raise click.ClickException(
            f"job {job_id} is {job_state(job)} and has no outputs to send; "
            f"`gliomaseg retry {job_id}` processes it again"
        )
    if not settings.outputs.destinations:
        raise click.ClickException("no destinations configured (outputs.destinations)")
    p.options = dataclasses.replace(p.options, send_retries=retries)
    _audit(store, "resend", job_id)
    attempt = 0
    try:
        outcome = p.deliver(job_id, attempt=attempt, explicit=True)
        while outcome.retry_in_s is not None:
            click.echo(
                f"attempt {attempt + 1} failed: {outcome.reason}; retry in {outcome.retry_in_s:.0f} s"
            )
            time.sleep(outcome.retry_in_s)
            attempt += 1
            outcome = p.deliver(job_id, attempt=attempt, pending=outcome.pending, explicit=True)
    except PermanentError as exc:
        raise click.ClickException(str(exc)) from None
    for entry in store.get(job_id).deliveries[-len(settings.outputs.destinations) :]:
        click.echo(f"{entry['peer']}: {'ok' if entry['ok'] else 'FAILED'} {entry['detail']}")
    click.echo(f"job {job_id}: {outcome.state}")
    if outcome.state != "delivered":
        sys.exit(1)


@click.command("retry")
@click.argument("job_id")
@click.option(
    "--force", is_flag=True, help="Also re-run a job that is not failed / delivery_failed."
)
@click.pass_context
def retry(ctx: click.Context, job_id: str, force: bool) -> None:
    """Process a failed job again from the start (queued for a worker)."""
    from worker.pipeline import job_state

    settings = settings_from(ctx)
    store, _ = store_and_pipeline(settings)
    job = _get_job(store, job_id)
    state = job_state(job)
    if state not in ("failed", "delivery_failed") and not force:
        raise click.ClickException(
            f"job {job_id} is {state}; only failed or delivery_failed jobs are retried "
            f"(--force runs it again anyway)"
        )
    store.set_state(job_id, "queued", reason=None)
    store.update(job_id, enqueued=None)
    _audit(store, "retry", job_id, {"from_state": state})
    # The node's hand-off: the same message, and while the broker is down the job stays queued
    # and the node hands it off when the broker answers again.
    from dicom_node.enqueue import CeleryEnqueuer, hand_off

    enqueuer = CeleryEnqueuer(settings.queue.broker_url, settings.queue.cpu_queue)
    try:
        if not hand_off(store, enqueuer, job_id):
            raise click.ClickException(
                f"job {job_id} is queued, but the broker at queue.broker_url did not take it; "
                f"the node hands it off when the broker answers again"
            )
    finally:
        enqueuer.close()
    click.echo(f"job {job_id}: queued again (was {state})")


def _audit(store: Any, event: str, job_id: str, detail: dict | None = None) -> None:
    audit = getattr(store, "audit", None)
    if audit is not None:
        audit(event, job_id=job_id, detail=detail or {})


# ---------------------------------------------------------------------------------------------
# gliomaseg serve: node + workers (+ Redis, + web) on one machine


def broker_answers(url: str, timeout_s: float = 1.0) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
        return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def local_redis_port(url: str) -> int | None:
    """The port of a redis:// URL on this machine, else None (a remote broker is never started)."""
    parsed = urlparse(url)
    if parsed.scheme != "redis" or parsed.hostname not in LOCAL_HOSTS:
        return None
    return parsed.port or 6379


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervisor:
    """Starts child processes, stops them all (reverse order) when one ends or on a signal."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.stopping = False

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        proc = subprocess.Popen(
            list(argv), env=env, start_new_session=True, preexec_fn=_die_with_parent
        )
        self.children.append((name, proc))
        click.echo(f"gliomaseg serve: started {name} (pid {proc.pid})", err=True)

    def wait(self) -> int:
        """Until a signal arrives or a child ends; returns the exit code serve should give."""
        while not self.stopping:
            for name, proc in self.children:
                code = proc.poll()
                if code is not None:
                    click.echo(f"gliomaseg serve: {name} exited with {code}; stopping", err=True)
                    return code or 1
            time.sleep(0.2)
        return 0

    def stop(self) -> None:
        for name, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if proc.poll() is None:
                click.echo(
                    f"gliomaseg serve: {name} did not stop in {STOP_GRACE_S:.0f} s; killing",
                    err=True,
                )
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@click.command("serve")
@click.option("--no-web", is_flag=True, help="Do not start the web dashboard.")
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="CPU worker processes.",
)
@click.pass_context
def serve(ctx: click.Context, no_web: bool, concurrency: int) -> None:
    """Run the whole service on this machine: node, workers, web (and Redis when none answers)."""
    settings = settings_from(ctx)
    root = ctx.find_root()
    config_args = ["--config", root.obj["config_path"]] if root.obj.get("config_path") else []
    base = [sys.executable, "-m", "gliomaseg", *config_args]
    sup = Supervisor()

    def on_signal(signum: int, _frame: Any) -> None:
        sup.stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        url = settings.queue.broker_url
        if not broker_answers(url):
            port = local_redis_port(url)
            if port is None:
                raise click.ClickException(
                    f"no broker answers at queue.broker_url ({_masked(url)}); start it, or point "
                    f"GLIOMASEG_QUEUE__BROKER_URL at a local redis:// URL to have serve start one"
                )
            redis_server = shutil.which("redis-server")
            if redis_server is None:
                raise click.ClickException(
                    f"no Redis answers at {_masked(url)} and redis-server is not installed "
                    f"(Debian: apt-get install redis-server)"
                )
            data_dir = Path(settings.spool.root).resolve()
            data_dir.mkdir(parents=True, exist_ok=True)
            sup.start(
                "redis",
                [
                    redis_server,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(data_dir),
                ],
            )
            deadline = time.monotonic() + 15
            while not broker_answers(url):
                if time.monotonic() > deadline or sup.children[-1][1].poll() is not None:
                    raise click.ClickException(
                        f"the local redis-server did not answer on port {port}"
                    )
                time.sleep(0.1)
        sup.start("node", [*base, "node"])
        sup.start(
            "worker-cpu", [*base, "worker", "--queues", "cpu", "--concurrency", str(concurrency)]
        )
        sup.start("worker-gpu", [*base, "worker", "--queues", "gpu", "--pool", "solo"])
        if not no_web and importlib.util.find_spec("web.cli") is not None:
            sup.start("web", [*base, "web"])
        code = sup.wait()
    finally:
        sup.stop()
    sys.exit(code)


def _masked(url: str) -> str:
    from config.settings import mask_url

    return mask_url(url)
