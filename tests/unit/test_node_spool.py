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
