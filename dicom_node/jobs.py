"""The jobs database: the one authority on job state, plus an audit trail.

SQLAlchemy 2; SQLite (default, inside the spool) or PostgreSQL by URL. Every method opens
its own short transaction, so one JobStore is safe to share between threads.
"""

from __future__ import annotations

import builtins
import time
import uuid
from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import (
    JSON,
    DateTime,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from config.errors import GliomasegError, PermanentError


class JobState(StrEnum):
    waiting = "waiting"  # study not complete yet
    queued = "queued"  # ready; handed (or about to be handed) to the queue
    running = "running"
    delivered = "delivered"
    failed = "failed"
    delivery_failed = "delivery_failed"


TERMINAL = frozenset({JobState.delivered, JobState.failed, JobState.delivery_failed})


class JobNotFoundError(GliomasegError, KeyError):
    """No job with that id."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the plain message
        return str(self.args[0]) if self.args else "job not found"


class StateConflictError(PermanentError):
    """A compare-and-set on the job state found another state."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class Job(BaseModel):
    """A job as stored; frozen (change it through the JobStore)."""

    model_config = ConfigDict(frozen=True)

    id: str
    state: JobState
    study_uid: str
    calling_ae: str
    calling_ip: str
    source: str = "dicom"
    roles: dict[str, str | None] = Field(default_factory=dict)
    classification: list[dict[str, Any]] = Field(default_factory=list)
    reason: str | None = None
    created: datetime
    updated: datetime
    steps: list[dict[str, Any]] = Field(default_factory=list)
    volumes_ml: dict[str, float] = Field(default_factory=dict)
    outputs: dict[str, Any] = Field(default_factory=dict)
    deliveries: list[dict[str, Any]] = Field(default_factory=list)
    late_instances: int = 0
    attempts: int = 0
    enqueued: datetime | None = None  # last hand-off to the broker; None: not yet handed off

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data: the summary keys first (``gliomaseg jobs --json``), then the rest."""
        data = self.model_dump(mode="json")
        head = {
            k: data.pop(k) for k in ("id", "state", "study_uid", "reason", "created", "updated")
        }
        return head | data

    def summary(self) -> dict[str, Any]:
        """The keys ``gliomaseg jobs --json`` prints."""
        return {k: v for k, v in self.to_json().items() if k in _SUMMARY}


_SUMMARY = ("id", "state", "study_uid", "reason", "created", "updated")


class _Base(DeclarativeBase):
    pass


class _JobRow(_Base):
    __tablename__ = "gliomaseg_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(20), index=True)
    study_uid: Mapped[str] = mapped_column(String(128), index=True)
    calling_ae: Mapped[str] = mapped_column(String(16), index=True, default="")
    calling_ip: Mapped[str] = mapped_column(String(64), default="")
    source: Mapped[str] = mapped_column(String(16), default="dicom")
    roles: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    classification: Mapped[list[Any]] = mapped_column(JSON, default=list)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    steps: Mapped[list[Any]] = mapped_column(JSON, default=list)
    volumes_ml: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    deliveries: Mapped[list[Any]] = mapped_column(JSON, default=list)
    late_instances: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    enqueued: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class _AuditRow(_Base):
    __tablename__ = "gliomaseg_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    event: Mapped[str] = mapped_column(String(64), index=True)
    job_id: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


_UPDATABLE = {
    "roles",
    "classification",
    "reason",
    "steps",
    "volumes_ml",
    "outputs",
    "deliveries",
    "late_instances",
    "attempts",
    "enqueued",
    "calling_ae",
    "calling_ip",
}


def _aware(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _to_job(row: _JobRow) -> Job:
    return Job(
        id=row.id,
        state=JobState(row.state),
        study_uid=row.study_uid,
        calling_ae=row.calling_ae or "",
        calling_ip=row.calling_ip or "",
        source=row.source or "dicom",
        roles=dict(row.roles or {}),
        classification=list(row.classification or []),
        reason=row.reason,
        created=_utc(row.created),
        updated=_utc(row.updated),
        steps=list(row.steps or []),
        volumes_ml=dict(row.volumes_ml or {}),
        outputs=dict(row.outputs or {}),
        deliveries=list(row.deliveries or []),
        late_instances=row.late_instances or 0,
        attempts=row.attempts or 0,
        enqueued=_aware(row.enqueued),
    )


def _create_schema(engine: Any, attempts: int = 5) -> None:
    """Create the tables if missing. The node, the workers and the web start together on a fresh
    spool and race to create them: the loser's CREATE fails with "already exists" (SQLite) or a
    duplicate-key error (PostgreSQL), and a second look finds the tables there."""
    for attempt in range(attempts):
        try:
            _Base.metadata.create_all(engine)
            return
        except DBAPIError as exc:
            text = str(exc.orig).lower()
            if attempt + 1 == attempts or not ("already exists" in text or "duplicate key" in text):
                raise
            time.sleep(0.05 * (attempt + 1))


class JobStore:
    """Jobs and audit events in a SQL database (created on first use)."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        _create_schema(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # -- jobs ------------------------------------------------------------------------------------
    def create(
        self,
        study_uid: str,
        *,
        calling_ae: str,
        calling_ip: str,
        roles: dict[str, str | None] | None = None,
        classification: list[dict[str, Any]] | None = None,
        state: JobState = JobState.waiting,
        source: str = "dicom",
        reason: str | None = None,
    ) -> Job:
        now = utcnow()
        row = _JobRow(
            id=uuid.uuid4().hex[:16],
            state=JobState(state).value,
            study_uid=study_uid,
            calling_ae=calling_ae,
            calling_ip=calling_ip,
            source=source,
            roles=dict(roles or {}),
            classification=list(classification or []),
            reason=reason,
            created=now,
            updated=now,
            steps=[],
            volumes_ml={},
            outputs={},
            deliveries=[],
            late_instances=0,
            attempts=0,
            enqueued=None,
        )
        with self._session.begin() as s:
            s.add(row)
        return _to_job(row)

    def get(self, job_id: str) -> Job:
        with self._session() as s:
            row = s.get(_JobRow, job_id)
            if row is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            return _to_job(row)

    def _filtered(
        self,
        stmt: Any,
        *,
        state: JobState | str | Collection[JobState | str] | None,
        calling_ae: str | None,
        since: datetime | None,
        until: datetime | None,
        study_uid: str | None = None,
    ) -> Any:
        if state is not None:
            states = [state] if isinstance(state, str) else list(state)
            stmt = stmt.where(_JobRow.state.in_([JobState(x).value for x in states]))
        if calling_ae is not None:
            stmt = stmt.where(_JobRow.calling_ae == calling_ae)
        if since is not None:
            stmt = stmt.where(_JobRow.created >= since)
        if until is not None:
            stmt = stmt.where(_JobRow.created < until)
        if study_uid is not None:
            stmt = stmt.where(_JobRow.study_uid == study_uid)
        return stmt

    def list(
        self,
        *,
        state: JobState | str | Collection[JobState | str] | None = None,
        calling_ae: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        study_uid: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[Job]:
        """Jobs, newest first."""
        stmt = self._filtered(
            select(_JobRow),
            state=state,
            calling_ae=calling_ae,
            since=since,
            until=until,
            study_uid=study_uid,
        )
        stmt = stmt.order_by(_JobRow.created.desc(), _JobRow.id).limit(limit).offset(offset)
        with self._session() as s:
            return [_to_job(r) for r in s.scalars(stmt)]

    def count(
        self,
        *,
        state: JobState | str | Collection[JobState | str] | None = None,
        calling_ae: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        study_uid: str | None = None,
    ) -> int:
        stmt = self._filtered(
            select(func.count()).select_from(_JobRow),
            state=state,
            calling_ae=calling_ae,
            since=since,
            until=until,
            study_uid=study_uid,
        )
        with self._session() as s:
            return int(s.scalar(stmt) or 0)

    def set_state(
        self,
        job_id: str,
        state: JobState | str,
        reason: str | None = None,
        *,
        expect: JobState | str | Iterable[JobState | str] | None = None,
    ) -> Job:
        """Move a job to ``state``; with ``expect``, only from those states (compare-and-set).

        Raises StateConflictError when the job is in none of the expected states (so two
        workers cannot both claim one queued job).
        """
        with self._session.begin() as s:
            row = s.get(_JobRow, job_id, with_for_update=expect is not None)
            if row is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            if expect is not None:
                allowed = (
                    {JobState(expect).value}
                    if isinstance(expect, str)
                    else {JobState(x).value for x in expect}
                )
                if row.state not in allowed:
                    raise StateConflictError(
                        f"job {job_id}: expected state {sorted(allowed)}, found {row.state!r}"
                    )
            row.state = JobState(state).value
            row.reason = reason
            row.updated = utcnow()
            return _to_job(row)

    def add_step(self, job_id: str, step: dict[str, Any]) -> None:
        with self._session.begin() as s:
            row = s.get(_JobRow, job_id)
            if row is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            row.steps = [*(row.steps or []), dict(step)]
            row.updated = utcnow()

    def update(self, job_id: str, **fields: Any) -> Job:
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"JobStore.update: unknown or read-only fields {sorted(unknown)}")
        with self._session.begin() as s:
            row = s.get(_JobRow, job_id)
            if row is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            for key, value in fields.items():
                setattr(row, key, value)
            row.updated = utcnow()
            return _to_job(row)

    def add_late_instances(self, job_id: str, n: int = 1) -> Job:
        """Count instances that arrived after the job left ``waiting``."""
        with self._session.begin() as s:
            row = s.get(_JobRow, job_id)
            if row is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            row.late_instances = (row.late_instances or 0) + n
            row.updated = utcnow()
            return _to_job(row)

    # -- audit -----------------------------------------------------------------------------------
    def audit(self, event: str, *, job_id: str | None = None, detail: dict | None = None) -> None:
        with self._session.begin() as s:
            s.add(_AuditRow(ts=utcnow(), event=event, job_id=job_id, detail=dict(detail or {})))

    def audit_events(
        self, job_id: str | None = None, limit: int = 500, *, event: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Audit rows, oldest first."""
        stmt = select(_AuditRow)
        if job_id is not None:
            stmt = stmt.where(_AuditRow.job_id == job_id)
        if event is not None:
            stmt = stmt.where(_AuditRow.event == event)
        stmt = stmt.order_by(_AuditRow.id.desc()).limit(limit)
        with self._session() as s:
            rows = list(s.scalars(stmt))
        return [
            {
                "ts": _utc(r.ts).isoformat(),
                "event": r.event,
                "job_id": r.job_id,
                "detail": dict(r.detail or {}),
            }
            for r in reversed(rows)
        ]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
