"""The spool: hashed names, durable writes, duplicates once, the free-disk floor."""

from __future__ import annotations

import hashlib

import pytest

from dicom_node.spool import Spool, SpoolFullError, h


def test_paths_are_hashes_of_uids(tmp_path):
    spool = Spool(tmp_path)
    p = spool.instance_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert p == tmp_path / "studies" / h("1.2.3") / h("1.2.3.4") / (h("1.2.3.4.5") + ".dcm")
    assert h("1.2.3") == hashlib.sha256(b"1.2.3").hexdigest()[:32]
    assert spool.work_dir("job1") == tmp_path / "work" / "job1"
    assert spool.outputs_dir("job1").is_dir()
    with pytest.raises(ValueError, match="plain file name"):
        spool.work_dir("../escape")


def test_uid_with_path_characters_stays_inside(tmp_path):
    spool = Spool(tmp_path / "spool")
    stored = spool.store("../../../etc", "../x/..", "/abs/../passwd", b"DATA")
    assert stored.created
    assert stored.path.resolve().is_relative_to((tmp_path / "spool" / "studies").resolve())
    assert [p.name for p in tmp_path.iterdir()] == ["spool"]


def test_store_is_durable_and_duplicates_are_kept_once(tmp_path):
    spool = Spool(tmp_path)
    first = spool.store("1.2", "1.2.3", "1.2.3.4", b"first")
    again = spool.store("1.2", "1.2.3", "1.2.3.4", b"second")
    assert first.created and not again.created
    assert first.path.read_bytes() == b"first"
    assert spool.series_files("1.2", "1.2.3") == [first.path]
    assert list(spool.tmp.iterdir()) == []


def test_free_disk_floor_refuses_and_keeps_nothing(tmp_path):
    spool = Spool(tmp_path, min_free_bytes=spool_free(tmp_path) + 2**40)
    with pytest.raises(SpoolFullError, match="min_free_mb"):
        spool.store("1.2", "1.2.3", "1.2.3.4", b"x" * 1000)
    assert list(spool.tmp.iterdir()) == []
    assert not spool.instance_path("1.2", "1.2.3", "1.2.3.4").exists()
    assert list(spool.iter_series_dirs()) == []


def test_clean_tmp_removes_partial_writes(tmp_path):
    spool = Spool(tmp_path)
    (spool.tmp / "abc.part").write_bytes(b"partial")
    assert spool.clean_tmp() == 1
    assert list(spool.tmp.iterdir()) == []


def spool_free(path):
    return Spool(path).free_bytes()


def test_one_instance_stored_by_many_threads_at_once_is_kept_once(tmp_path):
    import threading

    spool = Spool(tmp_path, fsync=False)
    results = []
    barrier = threading.Barrier(8)

    def store(i):
        barrier.wait()
        results.append(spool.store("1.2", "1.2.3", "1.2.3.4", b"copy %d" % i))

    threads = [threading.Thread(target=store, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.created for r in results) == 1
    winner = next(r for r in results if r.created)
    assert winner.path.read_bytes().startswith(b"copy ")
    assert list(spool.tmp.iterdir()) == []


# -- journal mode (the node's) ---------------------------------------------------------------------
def _journal_spool(tmp_path):
    return Spool(tmp_path / "spool", journal=True)


def _instance(tmp_path, sop: str, fill: int, series: str = "1.2.3") -> bytes:
    """A small, valid MR instance as the node receives it (the journal's recovery parses it)."""

    from tests.node_support import make_instance

    p = tmp_path / f"src-{sop}-{fill}.dcm"
    make_instance(p, study_uid="1.2", series_uid=series, sop_uid=sop, rows=16, instance_number=fill)
    return p.read_bytes()


def _pending_records(spool) -> int:
    """Records of the current generation in every journal file (what a restart would replay)."""
    from dicom_node.spool import _read_journal

    return sum(len(list(_read_journal(p))) for p in spool.journal_dir.glob("*.wal"))


def _locate(data):
    from dicom_node.scp import locate

    return locate(data)


def test_journal_mode_stores_and_checkpoint_removes_the_journal(tmp_path):
    spool = _journal_spool(tmp_path)
    stored = [spool.store("1.2", "1.2.3", f"1.2.3.{i}", bytes([i]) * 1000) for i in range(5)]
    assert all(s.created for s in stored)
    journals = list(spool.journal_dir.glob("*.wal"))
    assert len(journals) == 1 and _pending_records(spool) == 5
    # the same instance again while its file may still be on its way: a duplicate
    assert not spool.store("1.2", "1.2.3", "1.2.3.0", b"later copy").created
    assert spool.checkpoint() == 5
    assert [s.path.read_bytes() for s in stored] == [bytes([i]) * 1000 for i in range(5)]
    assert list(spool.tmp.iterdir()) == []
    assert _pending_records(spool) == 0  # kept, emptied, for the next journal
    # the next instance reuses that file under its next generation
    spool.store("1.2", "1.2.3", "1.2.3.9", b"x" * 10)
    assert list(spool.journal_dir.glob("*.wal")) == journals and _pending_records(spool) == 1


def test_begin_then_abort_leaves_no_file(tmp_path):
    spool = _journal_spool(tmp_path)
    pending = spool.begin(b"refused" * 10)
    spool.abort(pending)
    assert list(spool.tmp.iterdir()) == [] and not any(spool.studies.iterdir())


def test_recover_rewrites_lost_and_torn_files_from_the_journal(tmp_path):
    spool = _journal_spool(tmp_path)
    data = {
        sop: _instance(tmp_path, sop, i) for i, sop in enumerate(["1.2.3.1", "1.2.3.2", "1.2.3.3"])
    }
    paths = {sop: spool.store("1.2", "1.2.3", sop, d).path for sop, d in data.items()}
    spool.drain()
    # a power cut before the checkpoint: one file never reached the disk, one is torn
    paths["1.2.3.1"].unlink()
    paths["1.2.3.2"].write_bytes(data["1.2.3.2"][:300])
    restarted = _journal_spool(tmp_path)
    assert restarted.recover(_locate) == 2
    assert all(paths[sop].read_bytes() == d for sop, d in data.items())
    assert list(restarted.journal_dir.iterdir()) == []  # replayed journals are deleted


def test_recover_skips_refused_instances_and_a_torn_last_record(tmp_path):
    spool = _journal_spool(tmp_path)
    a = _instance(tmp_path, "1.2.3.1", 1)
    spool.abort(spool.begin(b"not DICOM at all"))  # refused on receipt, but journalled
    pa = spool.store("1.2", "1.2.3", "1.2.3.1", a).path
    pb = spool.store("1.2", "1.2.3", "1.2.3.2", _instance(tmp_path, "1.2.3.2", 2)).path
    spool.drain()
    journal = next(spool.journal_dir.glob("*.wal"))
    with open(journal, "r+b") as f:  # the crash hit the last append: its bytes never landed
        f.seek(4096 + 28 + len(a) + 28 + 100)
        f.write(bytes(500))
    pa.unlink()
    pb.unlink()
    assert _journal_spool(tmp_path).recover(_locate) == 1
    assert pa.read_bytes() == a and not pb.exists()
    assert [p.name for p in spool.studies.rglob("*.dcm")] == [pa.name]


def test_recover_keeps_the_first_copy_of_a_duplicate(tmp_path):
    spool = _journal_spool(tmp_path)
    first_bytes = _instance(tmp_path, "1.2.3.1", 1)
    first = spool.store("1.2", "1.2.3", "1.2.3.1", first_bytes)
    spool.checkpoint()  # the first copy is flushed; its journal is gone
    second = spool.store("1.2", "1.2.3", "1.2.3.1", _instance(tmp_path, "1.2.3.1", 2))
    assert first.created and not second.created
    spool.drain()
    assert _journal_spool(tmp_path).recover(_locate) == 0
    assert first.path.read_bytes() == first_bytes


def test_store_while_a_checkpoint_swaps_journals(tmp_path):
    import threading

    spool = _journal_spool(tmp_path)
    stop = threading.Event()

    def checkpoints():
        while not stop.is_set():
            spool.checkpoint()

    t = threading.Thread(target=checkpoints)
    t.start()
    try:
        paths = [spool.store("1.2", "1.2.3", f"1.2.3.{i}", b"%d" % i * 50).path for i in range(300)]
    finally:
        stop.set()
        t.join()
    spool.checkpoint()
    assert all(p.read_bytes() == b"%d" % i * 50 for i, p in enumerate(paths))
    assert _pending_records(spool) == 0


def test_recover_places_instances_whose_files_were_never_written(tmp_path):
    """A crash right after Success: the journal holds the instance, studies/ does not yet."""
    spool = _journal_spool(tmp_path)
    data = _instance(tmp_path, "1.2.3.7", 7)
    spool.abort(spool.begin(b"refused junk"))
    pending = spool.begin(data)  # journalled and flushed: Success could be answered now
    final = spool.instance_path("1.2", "1.2.3", "1.2.3.7")
    assert not final.exists()
    assert _journal_spool(tmp_path).recover(_locate) == 1
    assert final.read_bytes() == data
    assert pending.journal is not None


def test_a_reused_journal_never_replays_its_older_generation(tmp_path):
    spool = _journal_spool(tmp_path)
    old = spool.store("1.2", "1.2.3", "1.2.3.1", _instance(tmp_path, "1.2.3.1", 1)).path
    spool.checkpoint()  # generation 1 retired; the file now heads generation 2
    new_bytes = _instance(tmp_path, "1.2.3.2", 2)
    new = spool.store("1.2", "1.2.3", "1.2.3.2", new_bytes).path
    spool.drain()
    old.unlink()  # gone for another reason (e.g. the study was deleted): not the journal's business
    new.unlink()  # a power cut before the checkpoint
    assert _journal_spool(tmp_path).recover(_locate) == 1
    assert new.read_bytes() == new_bytes and not old.exists()


def test_a_journal_outgrowing_its_size_still_recovers(tmp_path, monkeypatch):
    import dicom_node.spool as spool_module

    monkeypatch.setattr(spool_module, "JOURNAL_BYTES", 2**20)  # 1 MB: three instances overflow it
    spool = _journal_spool(tmp_path)
    data = [_instance(tmp_path, f"1.2.3.{i}", i) + bytes(400_000) for i in range(3)]
    # (padding after the pixel data: still a valid instance for the receipt checks)
    paths = [spool.store("1.2", "1.2.3", f"1.2.3.{i}", d).path for i, d in enumerate(data)]
    spool.drain()
    for p in paths:
        p.unlink()
    assert _journal_spool(tmp_path).recover(_locate) == 3
    assert [p.read_bytes() for p in paths] == data


def test_receiving_waits_when_the_placer_falls_behind(tmp_path, monkeypatch):
    import threading

    import dicom_node.spool as spool_module

    monkeypatch.setattr(spool_module, "PLACER_BUDGET_BYTES", 2500)
    spool = _journal_spool(tmp_path)
    gate = threading.Event()
    real_write = spool_module._write_file

    def slow_disk(*args, **kwargs):
        gate.wait(10)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(
        spool_module, "_write_file", slow_disk
    )  # a stalled disk (not producible here)
    done: list[int] = []

    def receive() -> None:
        for i in range(4):
            spool.store("1.2", "1.2.3", f"1.2.3.{i}", bytes([i]) * 1000)
            done.append(i)

    t = threading.Thread(target=receive)
    t.start()
    t.join(0.5)
    assert t.is_alive() and len(done) in (2, 3)  # at most 2.5 kB waits in memory (+1 in the placer)
    gate.set()
    t.join(10)
    assert done == [0, 1, 2, 3]
    spool.checkpoint()
    assert all(
        spool.instance_path("1.2", "1.2.3", f"1.2.3.{i}").read_bytes() == bytes([i]) * 1000
        for i in range(4)
    )
