"""Prometheus metrics at ``/metrics``, derived at scrape time from the jobs database and Redis.

The node, the workers and the web are separate processes (often on separate hosts), so the
counts are not kept in process memory: each scrape reads the one authority, the jobs database
(jobs by state, step durations from ``Job.steps``, deliveries from ``Job.deliveries``, instances
received / rejected from the node's audit events) and the broker (queue depth = ``LLEN`` of the
Celery queues on Redis). Results are cached for ``cache_s`` so that frequent scrapes stay cheap.
No prometheus multiprocess directory is needed, and a restarted process loses nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

log = logging.getLogger(__name__)

STEP_BUCKETS_S = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, float("inf"))
JOB_STATES = ("waiting", "queued", "running", "delivered", "failed", "delivery_failed")
PAGE = 500
JOBS_TABLE = "gliomaseg_jobs"  # dicom_node.jobs
AUDITED = ("instances_received", "instances_rejected", "association_rejected")


@dataclass
class Snapshot:
    """Plain numbers for one scrape (pure data, built by :func:`summarise`)."""

    jobs_by_state: dict[str, int] = field(default_factory=dict)
    studies_by_source: dict[str, int] = field(default_factory=dict)
    completed: int = 0
    step_durations_s: dict[str, list[float]] = field(default_factory=dict)
    deliveries: dict[tuple[str, str], int] = field(default_factory=dict)  # (peer, outcome) -> n
    received: dict[str, int] = field(default_factory=dict)  # calling AE -> instances
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> instances
    queue_depth: dict[str, int] = field(default_factory=dict)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


def summarise(jobs: Iterable[Any], audit: Iterable[dict[str, Any]]) -> Snapshot:
    """Count jobs, steps, deliveries and audited instances (pure)."""
    snap = Snapshot()
    states: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    steps: dict[str, list[float]] = defaultdict(list)
    deliveries: Counter[tuple[str, str]] = Counter()
    for job in jobs:
        state = str(_get(job, "state"))
        states[state] += 1
        sources[str(_get(job, "source", "dicom"))] += 1
        for step in _get(job, "steps", []) or []:
            elapsed = step.get("elapsed_s")
            if isinstance(elapsed, (int, float)):
                steps[str(step.get("step", "?"))].append(float(elapsed))
        for d in _get(job, "deliveries", []) or []:
            deliveries[(str(d.get("peer", "?")), "ok" if d.get("ok") else "failed")] += 1
    received: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    for event in audit:
        name = event.get("event")
        detail = event.get("detail") or {}
        n = detail.get("count", detail.get("instances", 1))
        n = int(n) if isinstance(n, (int, float)) else 1
        if name == "instances_received":
            received[str(detail.get("calling_ae", "?"))] += n
        elif name == "instances_rejected":
            rejected[str(detail.get("reason", "?"))] += n
        elif name == "association_rejected":  # the node refuses the whole association
            rejected["association: " + str(detail.get("reason", "?"))] += 1
    snap.jobs_by_state = {s: states.get(s, 0) for s in JOB_STATES} | dict(states)
    snap.studies_by_source = dict(sources)
    snap.completed = states.get("delivered", 0)
    snap.step_durations_s = dict(steps)
    snap.deliveries = dict(deliveries)
    snap.received = dict(received)
    snap.rejected = dict(rejected)
    return snap


def _json(value: Any) -> Any:
    if isinstance(value, str):  # a database without a native JSON type
        import json

        return json.loads(value)
    return value or []


def histogram_buckets(values: list[float]) -> list[tuple[str, float]]:
    """Cumulative Prometheus buckets of ``values`` over STEP_BUCKETS_S."""
    out = []
    for bound in STEP_BUCKETS_S:
        n = sum(1 for v in values if v <= bound)
        out.append(("+Inf" if bound == float("inf") else f"{bound:g}", float(n)))
    return out


def families(snap: Snapshot) -> Iterator[Metric]:
    """Prometheus metric families of a snapshot (pure)."""
    g = GaugeMetricFamily("gliomaseg_jobs", "Jobs in the jobs database by state", labels=["state"])
    for state, n in sorted(snap.jobs_by_state.items()):
        g.add_metric([state], n)
    yield g
    c = CounterMetricFamily(
        "gliomaseg_studies_received", "Complete studies that became jobs, by source (dicom, upload)",
        labels=["source"],
    )  # fmt: skip
    for source, n in sorted(snap.studies_by_source.items()):
        c.add_metric([source], n)
    yield c
    yield CounterMetricFamily(
        "gliomaseg_studies_completed", "Studies processed and delivered", value=snap.completed
    )
    h = HistogramMetricFamily(
        "gliomaseg_step_duration_seconds", "Duration of each pipeline step", labels=["step"]
    )
    for step, values in sorted(snap.step_durations_s.items()):
        h.add_metric([step], histogram_buckets(values), sum_value=sum(values))
    yield h
    d = CounterMetricFamily(
        "gliomaseg_deliveries", "Output deliveries to peers, by outcome", labels=["peer", "outcome"]
    )
    for (peer, outcome), n in sorted(snap.deliveries.items()):
        d.add_metric([peer, outcome], n)
    yield d
    r = CounterMetricFamily(
        "gliomaseg_instances_received",
        "DICOM instances received, by calling AE",
        labels=["calling_ae"],
    )
    for ae, n in sorted(snap.received.items()):
        r.add_metric([ae], n)
    yield r
    x = CounterMetricFamily(
        "gliomaseg_instances_rejected", "DICOM instances rejected, by reason", labels=["reason"]
    )
    for reason, n in sorted(snap.rejected.items()):
        x.add_metric([reason], n)
    yield x
    q = GaugeMetricFamily(
        "gliomaseg_queue_depth", "Tasks waiting in the broker, by queue", labels=["queue"]
    )
    for queue, n in sorted(snap.queue_depth.items()):
        q.add_metric([queue], n)
    yield q


def queue_depths(broker_url: str, queues: Iterable[str]) -> dict[str, int]:
    """LLEN of each Celery queue on a Redis broker (priority sub-queues included); {} otherwise."""
    if not broker_url.startswith(("redis://", "rediss://")):
        return {}
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        out = {}
        for queue in queues:
            # kombu's Redis transport keeps priorities 0-9 in "<queue>", "<queue>\x06\x163", ...
            keys = [queue] + [f"{queue}\x06\x16{p}" for p in range(1, 10)]
            out[queue] = int(sum(client.llen(k) for k in keys))
        return out
    finally:
        client.close()


class JobsCollector:
    """A prometheus_client collector that reads the jobs database and the broker at scrape time."""

    def __init__(self, store: Any, broker_url: str, queues: Iterable[str], cache_s: float = 10.0):
        self.store = store
        self.broker_url = broker_url
        self.queues = list(queues)
        self.cache_s = cache_s
        self._cached: tuple[float, Snapshot] | None = None
        self._table: Any = None
        self._rows: dict[str, dict[str, Any]] = {}
        self._last_updated: Any = None
        self._lock = threading.Lock()

    def _jobs(self) -> Iterable[Any]:
        """Every job's state, source, steps and deliveries.

        With a SQL JobStore (``store.engine``) only the rows updated since the previous scrape are
        read (a few columns, no model objects); other stores are paged through ``store.list``.
        """
        engine = getattr(self.store, "engine", None)
        if engine is None:
            return self._paged()
        from sqlalchemy import MetaData, Table, select

        if self._table is None:
            self._table = Table(JOBS_TABLE, MetaData(), autoload_with=engine)
        t = self._table
        stmt = select(t.c.id, t.c.state, t.c.source, t.c.steps, t.c.deliveries, t.c.updated)
        if self._last_updated is not None:
            stmt = stmt.where(t.c.updated >= self._last_updated)
        with engine.connect() as conn:
            for row in conn.execute(stmt):
                self._rows[row.id] = {
                    "state": row.state, "source": row.source or "dicom",
                    "steps": _json(row.steps), "deliveries": _json(row.deliveries),
                }  # fmt: skip
                if self._last_updated is None or row.updated > self._last_updated:
                    self._last_updated = row.updated
        return self._rows.values()

    def _paged(self) -> Iterator[Any]:
        offset = 0
        while True:
            page = self.store.list(limit=PAGE, offset=offset)
            yield from page
            if len(page) < PAGE:
                return
            offset += PAGE

    def _audit(self) -> list[dict[str, Any]]:
        counts = getattr(self.store, "audit_counts", None)
        if callable(counts):  # an aggregated query when the store offers one
            return list(counts(AUDITED))
        events: list[dict[str, Any]] = []
        for name in AUDITED:
            events += self.store.audit_events(limit=10_000_000, event=name)
        return events

    def snapshot(self) -> Snapshot:
        with self._lock:
            now = time.monotonic()
            if self._cached and now - self._cached[0] < self.cache_s:
                return self._cached[1]
            snap = summarise(self._jobs(), self._audit())
            try:
                snap.queue_depth = queue_depths(self.broker_url, self.queues)
            except Exception as exc:  # broker down: report the rest, and say so in the log
                log.warning("queue depth unavailable", extra={"error": type(exc).__name__})
            self._cached = (now, snap)
            return snap

    def collect(self) -> Iterator[Metric]:
        yield from families(self.snapshot())


def render(collector: JobsCollector) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
