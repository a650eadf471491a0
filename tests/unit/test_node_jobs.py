"""The JobStore on SQLite and on PostgreSQL (127.0.0.1:5432, trust auth; skipped when absent)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from dicom_node.jobs import JobNotFoundError, JobState, JobStore, StateConflictError

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="module")
def pg_url():
    sqlalchemy = pytest.importorskip("sqlalchemy")
    try:
        admin = sqlalchemy.create_engine(
            PG_ADMIN, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
        )
        with admin.connect() as c:
            name = f"gliomaseg_node_{uuid.uuid4().hex[:8]}"
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 (database test) does not answer: {exc}")
    yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    else:
        s = JobStore(request.getfixturevalue("pg_url"))
        with s.engine.begin() as c:  # one database per module: start each test empty
            c.exec_driver_sql("DELETE FROM gliomaseg_jobs")
            c.exec_driver_sql("DELETE FROM gliomaseg_audit")
    yield s
    s.close()


def test_create_get_and_json(store):
    job = store.create(
        "1.2.3",
        calling_ae="PACS",
        calling_ip="10.0.0.1",
        roles={"T1": "1.2.3.1", "FLAIR": None},
        classification=[{"series_uid": "1.2.3.1", "role": "T1", "reason": "r"}],
    )
    assert job.state is JobState.waiting and job.created.tzinfo is not None
    got = store.get(job.id)
    assert got == job
    data = got.to_json()
    assert list(data)[:6] == ["id", "state", "study_uid", "reason", "created", "updated"]
    assert data["roles"] == {"T1": "1.2.3.1", "FLAIR": None}
    assert set(got.summary()) == {"id", "state", "study_uid", "reason", "created", "updated"}
    with pytest.raises(JobNotFoundError, match="no job with id 'nope'"):
        store.get("nope")
    with pytest.raises(KeyError):
        store.get("nope")


def test_list_filters_newest_first_and_count(store):
    a = store.create("1.1", calling_ae="A", calling_ip="")
    b = store.create("1.2", calling_ae="B", calling_ip="")
    c = store.create("1.3", calling_ae="A", calling_ip="")
    store.set_state(b.id, JobState.queued)
    assert [j.id for j in store.list()] == [c.id, b.id, a.id]
    assert [j.id for j in store.list(state=JobState.queued)] == [b.id]
    assert [j.id for j in store.list(state="waiting", calling_ae="A")] == [c.id, a.id]
    assert [j.id for j in store.list(limit=1, offset=1)] == [b.id]
    assert [j.id for j in store.list(study_uid="1.3")] == [c.id]
    future = datetime.now(UTC) + timedelta(hours=1)
    assert store.list(since=future) == []
    assert store.count() == 3 and store.count(state=[JobState.queued, JobState.failed]) == 1
    assert store.count(until=future) == 3


def test_state_changes_steps_updates_and_compare_and_set(store):
    job = store.create("1.2", calling_ae="A", calling_ip="")
    failed = store.set_state(job.id, JobState.failed, "FLAIR missing")
    assert failed.reason == "FLAIR missing" and failed.updated >= job.updated
    store.set_state(job.id, JobState.queued, expect=JobState.failed)
    with pytest.raises(StateConflictError, match="expected state"):
        store.set_state(job.id, JobState.running, expect=[JobState.waiting])
    store.add_step(job.id, {"step": "convert", "status": "ok", "elapsed_s": 1.5})
    store.add_step(job.id, {"step": "segment", "status": "ok", "elapsed_s": 2.0})
    now = datetime.now(UTC)
    upd = store.update(
        job.id, volumes_ml={"whole_tumor": 12.5}, outputs={"seg": "1.2.9"}, enqueued=now
    )
    assert [s["step"] for s in upd.steps] == ["convert", "segment"]
    assert upd.volumes_ml == {"whole_tumor": 12.5} and upd.enqueued is not None
    assert store.add_late_instances(job.id, 3).late_instances == 3
    with pytest.raises(ValueError, match="unknown or read-only"):
        store.update(job.id, state="delivered")


def test_audit_trail(store):
    job = store.create("1.2", calling_ae="A", calling_ip="10.1.1.1")
    store.audit("association", detail={"calling_ae": "A", "calling_ip": "10.1.1.1"})
    store.audit("job_created", job_id=job.id, detail={"state": "waiting"})
    store.audit("job_queued", job_id=job.id)
    assert [e["event"] for e in store.audit_events(job.id)] == ["job_created", "job_queued"]
    everything = store.audit_events()
    assert everything[0]["detail"] == {"calling_ae": "A", "calling_ip": "10.1.1.1"}
    assert [e["event"] for e in store.audit_events(event="association")] == ["association"]


def test_processes_starting_together_on_a_fresh_database(tmp_path):
    """`make run` starts the node, the workers and the web at once: all create the schema."""
    import multiprocessing as mp

    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    ctx = mp.get_context("fork")
    start = time.time() + 0.5  # all of them create the schema at the same moment
    with ctx.Pool(8) as pool:
        results = pool.starmap(_open_store, [(url, start)] * 8)
    assert results == [0] * 8


def _open_store(url: str, start: float) -> int:
    from dicom_node.jobs import JobStore

    time.sleep(max(0.0, start - time.time()))
    store = JobStore(url)
    n = len(store.list())
    store.close()
    return n
