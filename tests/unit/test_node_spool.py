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


def test_journal_mode_stores_and_checkpoint_removes_the_journal(tmp_path):
    spool = _journal_spool(tmp_path)
    stored = [spool.store("1.2", "1.2.3", f"1.2.3.{i}", bytes([i]) * 1000) for i in range(5)]
    assert all(s.created for s in stored)
    assert [s.path.read_bytes() for s in stored] == [bytes([i]) * 1000 for i in range(5)]
    journals = list(spool.journal_dir.glob("*.wal"))
    assert len(journals) == 1 and journals[0].stat().st_size > 5000
    assert spool.checkpoint() == 5
    assert list(spool.journal_dir.iterdir()) == []
    # the next instance opens a new journal
    spool.store("1.2", "1.2.3", "1.2.3.9", b"x" * 10)
    assert len(list(spool.journal_dir.glob("*.wal"))) == 1


def test_recover_rewrites_lost_and_torn_files_from_the_journal(tmp_path):
    spool = _journal_spool(tmp_path)
    a = spool.store("1.2", "1.2.3", "1.2.3.1", b"A" * 4000).path
    b = spool.store("1.2", "1.2.3", "1.2.3.2", b"B" * 4000).path
    c = spool.store("1.2", "1.2.3", "1.2.3.3", b"C" * 4000).path
    # a power cut before the checkpoint: one file never reached the disk, one is torn
    a.unlink()
    b.write_bytes(b"B" * 100)
    restarted = _journal_spool(tmp_path)
    assert restarted.recover() == 2
    assert a.read_bytes() == b"A" * 4000 and b.read_bytes() == b"B" * 4000
    assert c.read_bytes() == b"C" * 4000
    assert list(restarted.journal_dir.iterdir()) == []


def test_recover_ignores_a_torn_last_record(tmp_path):
    spool = _journal_spool(tmp_path)
    a = spool.store("1.2", "1.2.3", "1.2.3.1", b"A" * 4000).path
    b = spool.store("1.2", "1.2.3", "1.2.3.2", b"B" * 4000).path
    journal = next(spool.journal_dir.glob("*.wal"))
    raw = journal.read_bytes()
    journal.write_bytes(raw[:-1000])  # the crash hit during the second append: never answered
    a.unlink()
    b.unlink()
    assert _journal_spool(tmp_path).recover() == 1
    assert a.read_bytes() == b"A" * 4000 and not b.exists()


def test_recover_keeps_the_first_copy_of_a_duplicate(tmp_path):
    spool = _journal_spool(tmp_path)
    first = spool.store("1.2", "1.2.3", "1.2.3.1", b"first" * 100)
    second = spool.store("1.2", "1.2.3", "1.2.3.1", b"second" * 100)
    assert first.created and not second.created
    assert _journal_spool(tmp_path).recover() == 0
    assert first.path.read_bytes() == b"first" * 100


def test_recover_never_writes_outside_the_spool(tmp_path):
    import struct
    import zlib

    spool = _journal_spool(tmp_path)
    name, data = b"studies/../../escaped.dcm", b"evil"
    crc = zlib.crc32(data, zlib.crc32(name))
    (spool.journal_dir / "forged.wal").write_bytes(
        struct.pack("<4sIQI", b"GSJ1", len(name), len(data), crc) + name + data
    )
    assert spool.recover() == 0
    assert not (tmp_path / "escaped.dcm").exists()


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
    assert list(spool.journal_dir.iterdir()) == []
