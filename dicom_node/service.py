"""The node process: the SCP, the series index, and the completion loop.

:class:`Node` holds the in-memory index of studies still ``waiting`` (rebuilt from the spool
and the jobs database at start, so an acknowledged instance is never forgotten), decides
completion with :mod:`dicom_node.completion` on a clock it is given, and turns ready studies
into queued jobs. Every received study has a job from its first instance on (``waiting``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from config.logs import ref
from config.settings import Settings
from dicom_node import completion
from dicom_node.completion import SeriesState, StudyState, Verdict
from dicom_node.enqueue import CeleryEnqueuer, Enqueuer, flush_pending, hand_off
from dicom_node.jobs import JobState, JobStore
from dicom_node.routing import StudyFacts, route
from dicom_node.scp import Handlers, Received, build_ae, locate, tls_context
from dicom_node.spool import Spool

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass
class _Series:
    study_uid: str
    series_uid: str
    first_s: float
    last_s: float
    n_instances: int
    headers: Dataset


@dataclass
class _Study:
    study_uid: str
    job_id: str
    calling_ae: str
    series: dict[str, _Series] = field(default_factory=dict)


class Node:
    """Index + completion + job creation. The SCP calls :meth:`received`; a loop calls :meth:`tick`."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = time.time,
        enqueuer: Enqueuer | None = None,
        store: JobStore | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.spool = Spool(
            settings.spool.root,
            min_free_bytes=settings.spool.min_free_mb * 2**20,
            fsync=settings.spool.fsync,
            journal=True,
        )
        self.store = store or JobStore(settings.database_url)
        self.enqueuer: Enqueuer = enqueuer or CeleryEnqueuer(
            settings.queue.broker_url, settings.queue.cpu_queue
        )
        self._lock = threading.RLock()
        self._waiting: dict[str, _Study] = {}  # study_uid -> study still being received
        self._started: dict[str, str] = {}  # study_uid -> job id of a job past waiting
        self._late: dict[str, int] = {}  # job id -> late instances not yet recorded
        self._next_flush_s = 0.0
        self._stop = threading.Event()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- called by the SCP ---------------------------------------------------------------------
    def audit(self, event: str, *, job_id: str | None = None, detail: dict | None = None) -> None:
        self.store.audit(event, job_id=job_id, detail=detail)

    def received(self, item: Received) -> None:
        now = self.clock()
        with self._lock:
            job_id = self._started.get(item.study_uid)
            if job_id is not None:
                if item.created:
                    self._late[job_id] = self._late.get(job_id, 0) + 1
                return
            study = self._waiting.get(item.study_uid)
            if study is None:
                study = self._new_study(item)
            series = study.series.get(item.series_uid)
            if series is None:
                study.series[item.series_uid] = _Series(
                    item.study_uid, item.series_uid, now, now, 1, item.headers
                )
                log.info(
                    "series started",
                    extra={
                        "job_id": study.job_id,
                        "study_ref": ref(item.study_uid),
                        "series_ref": ref(item.series_uid),
                    },
                )
            elif item.created:
                series.n_instances += 1
                series.last_s = now

    def _new_study(self, item: Received) -> _Study:
        job = self.store.create(
            item.study_uid, calling_ae=item.calling_ae, calling_ip=item.calling_ip
        )
        self.store.audit(
            "study_received",
            job_id=job.id,
            detail={"calling_ae": item.calling_ae, "calling_ip": item.calling_ip},
        )
        self.store.audit("job_created", job_id=job.id, detail={"state": job.state.value})
        log.info(
            "study started; job created",
            extra={
                "job_id": job.id,
                "study_ref": ref(item.study_uid),
                "calling_ae": item.calling_ae,
            },
        )
        study = _Study(item.study_uid, job.id, item.calling_ae)
        self._waiting[item.study_uid] = study
        return study

    # -- start: rebuild from spool + database ----------------------------------------------------
    def rebuild(self) -> None:
        """Rebuild the index from the spool and the jobs database (at start)."""
        recovered = self.spool.recover(locate)
        if recovered:
            log.warning(
                "rewrote instances from the spool journal after an unclean stop",
                extra={"n_files": recovered},
            )
        # A zero-filled journal ready before the first instance (about 32 MB written once).
        threading.Thread(target=self.spool.prepare_journal, name="journal", daemon=True).start()
        removed = self.spool.clean_tmp()
        if removed:
            log.info("removed partial writes from spool/tmp", extra={"n_files": removed})
        studies: dict[str, list[_Series]] = {}
        for series_dir in self.spool.iter_series_dirs():
            files = [p for p in series_dir.iterdir() if p.suffix == ".dcm"]
            if not files:
                continue
            headers = _read_headers(files)
            if headers is None:
                log.error("unreadable series folder in spool", extra={"path": str(series_dir)})
                continue
            mtimes = [p.stat().st_mtime for p in files]
            s = _Series(
                str(headers.StudyInstanceUID),
                str(headers.SeriesInstanceUID),
                min(mtimes),
                max(mtimes),
                len(files),
                headers,
            )
            studies.setdefault(s.study_uid, []).append(s)
        n_waiting = 0
        with self._lock:
            for study_uid, series in studies.items():
                jobs = self.store.list(study_uid=study_uid, limit=1)
                if jobs and jobs[0].state is not JobState.waiting:
                    self._started[study_uid] = jobs[0].id
                    continue
                if jobs:
                    job = jobs[0]
                else:  # spooled, but the process died before the job was written
                    job = self.store.create(study_uid, calling_ae="", calling_ip="")
                    self.store.audit("job_created", job_id=job.id, detail={"recovered": True})
                st = _Study(study_uid, job.id, job.calling_ae)
                st.series = {s.series_uid: s for s in series}
                self._waiting[study_uid] = st
                n_waiting += 1
        log.info(
            "index rebuilt from spool",
            extra={"n_series": sum(len(v) for v in studies.values()), "n_waiting": n_waiting},
        )

    # -- completion ------------------------------------------------------------------------------
    def tick(self) -> None:
        """One completion pass: record late instances, decide studies, hand off pending jobs."""
        # Journalled instances become durable in their own files before any study is decided.
        self.spool.checkpoint()
        now = self.clock()
        with self._lock:
            late, self._late = self._late, {}
            snapshot = list(self._waiting.values())
        for job_id, n in late.items():
            self.store.add_late_instances(job_id, n)
            self.store.audit("late_instances", job_id=job_id, detail={"n": n})
            log.warning(
                "instances arrived after the job started; recorded, not reprocessed",
                extra={"job_id": job_id, "n_instances": n},
            )
        for study in snapshot:
            try:
                self._decide(study, now)
            except Exception:
                log.error(
                    "completion failed for a study", extra={"job_id": study.job_id}, exc_info=True
                )
        if now >= self._next_flush_s:
            try:
                flushed = flush_pending(self.store, self.enqueuer)
                # While the broker is down, try again every 5 s rather than every poll.
                self._next_flush_s = now + (5.0 if flushed.n_pending else 0.0)
            except Exception:
                log.error("flushing pending jobs failed", exc_info=True)
                self._next_flush_s = now + 5

    def _decide(self, study: _Study, now: float) -> None:
        cfg = self.settings.completion
        with self._lock:
            series = [
                SeriesState(s.study_uid, s.series_uid, s.first_s, s.last_s, s.n_instances)
                for s in study.series.values()
            ]
            headers = {s.series_uid: (s.headers, s.n_instances) for s in study.series.values()}
        state = StudyState(study.study_uid, tuple(series))
        all_quiet = all(completion.is_quiet(s, now, cfg.series_quiet_s) for s in series)
        forced = now - state.first_s >= cfg.study_force_s
        if not (all_quiet or forced):
            return
        roles, classification = self._classify(headers)
        verdict = completion.study_verdict(
            state,
            roles,
            now_s=now,
            series_quiet_s=cfg.series_quiet_s,
            study_force_s=cfg.study_force_s,
        )
        if verdict.verdict is Verdict.wait:
            return
        facts = StudyFacts(
            calling_ae=study.calling_ae,
            modalities=frozenset(str(h.get("Modality", "") or "") for h, _ in headers.values()),
            body_parts=frozenset(
                str(h.get("BodyPartExamined", "") or "") for h, _ in headers.values()
            ),
            study_description=str(
                next(iter(headers.values()))[0].get("StudyDescription", "") or ""
            ),
        )
        decision = route(facts, self.settings.routing)
        self.store.update(study.job_id, roles=roles, classification=classification)
        if not decision.process:
            self._finish(study, JobState.failed, f"not routed: {decision.reason}")
        elif verdict.verdict is Verdict.fail:
            self._finish(study, JobState.failed, verdict.reason)
        else:
            self._finish(study, JobState.queued, None, detail=verdict.reason)
            hand_off(self.store, self.enqueuer, study.job_id)

    def _finish(self, study: _Study, state: JobState, reason: str | None, detail: str = "") -> None:
        self.store.set_state(study.job_id, state, reason, expect=JobState.waiting)
        with self._lock:
            self._waiting.pop(study.study_uid, None)
            self._started[study.study_uid] = study.job_id
        self.store.audit(
            f"job_{state.value}",
            job_id=study.job_id,
            detail={"reason": reason or detail, "n_series": len(study.series)},
        )
        log.info(
            "study complete",
            extra={"job_id": study.job_id, "state": state.value, "reason": reason or detail},
        )

    def _classify(
        self, headers: dict[str, tuple[Dataset, int]]
    ) -> tuple[dict[str, str | None], list[dict[str, Any]]]:
        from dicom_node import classify  # the CLASSIFY engineer's pure module

        infos = [
            classify.SeriesInfo(series_uid=uid, headers=ds, n_instances=n)
            for uid, (ds, n) in headers.items()
        ]
        result = classify.assign_roles(infos, self.settings.classify.rules)
        data = result.to_json()
        roles = {str(k): v for k, v in data["roles"].items()}
        return roles, list(data["series"])

    # -- process ---------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The TCP port the SCP listens on (useful when configured as 0)."""
        return int(self._server.server_address[1])

    def start(self, *, loop: bool = True) -> None:
        """Rebuild, re-send queued jobs, start the SCP and the completion loop (non-blocking).

        ``loop=False`` leaves completion to explicit :meth:`tick` calls (tests with a clock).
        """
        d = self.settings.dicom
        if not d.allowed_calling_aets:
            log.warning(
                "dicom.allowed_calling_aets is empty: any calling AE title is accepted "
                "(set GLIOMASEG_DICOM__ALLOWED_CALLING_AETS)"
            )
        self.rebuild()
        try:
            flushed = flush_pending(self.store, self.enqueuer, resend_all=True)
            if flushed.n_sent or flushed.n_pending:
                log.info(
                    "re-enqueued queued jobs at start",
                    extra={"n_jobs": flushed.n_sent, "n_pending": flushed.n_pending},
                )
        except Exception:
            log.error("re-enqueue at start failed", exc_info=True)
        ae = build_ae(
            d.ae_title,
            require_called_aet=d.require_called_aet,
            max_associations=d.max_associations,
            network_timeout_s=d.network_timeout_s,
        )
        handlers = Handlers(self, allow_list=d.allowed_calling_aets)
        ssl_context = tls_context(d.tls_cert, d.tls_key, d.tls_ca) if d.tls_cert else None
        self._server = ae.start_server(
            (d.bind, d.port), block=False, evt_handlers=handlers.as_list(), ssl_context=ssl_context
        )
        log.info(
            "node listening",
            extra={
                "ae_title": d.ae_title,
                "bind": d.bind,
                "port": d.port,
                "tls": ssl_context is not None,
                "spool": str(self.spool.root),
            },
        )
        if loop:
            self._thread = threading.Thread(target=self._loop, name="completion", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        poll_s = self.settings.completion.poll_s
        while not self._stop.wait(poll_s):
            try:
                self.tick()
            except Exception:
                log.error("completion loop error", exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.spool.checkpoint()
        close = getattr(self.enqueuer, "close", None)
        if close:
            close()

    def serve_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(3600):
                pass
        finally:
            self.stop()


def _read_headers(files: list[Path]) -> Dataset | None:
    for p in sorted(files):
        try:
            return pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:
            continue
    return None
