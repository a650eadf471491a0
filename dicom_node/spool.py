"""The durable spool: received instances as raw bytes, named by hashes of their UIDs.

Layout under ``root``::

    studies/<h(study)>/<h(series)>/<h(sop)>.dcm   instances exactly as received (DICOM file format)
    tmp/                                          partial writes; emptied at start
    journal/                                      the node's write-ahead journals (below)
    work/<job_id>/, outputs/<job_id>/             created on demand for the worker

``h(uid) = sha256(uid)[:32]``: no tag value ever becomes part of a path, so a UID such as
``../../etc`` cannot leave the spool. A write goes to ``tmp/``, is fsynced, linked into place
(``os.link``: atomic, and the first copy of an instance wins) and the directory is fsynced, all before the caller answers Success: an
acknowledged instance survives a crash of the process or of the machine. (``fsync=False``
keeps the tmp + rename, so a killed process still loses nothing acknowledged, but a power cut
may.) The spool holds bytes only; the jobs database holds state.

**Journal mode** (``journal=True``, the node's): two flushes per instance (the new file, then its
folder) are the receive rate's ceiling, so each receiving thread appends the instance to its own
write-ahead journal (``journal/<id>.wal``: length, CRC32, bytes) and flushes that once
(``fdatasync`` of an append): that is the durable copy behind Success. The instance file is
written by a placer thread within milliseconds, without a flush. A store is split in two
(:meth:`Spool.begin` with the bytes alone, :meth:`Spool.commit` with the UIDs) so that the node
parses the headers while the journal is flushed.
:meth:`Spool.checkpoint` (the node calls it every completion tick, before any study is handed
on) swaps each journal for a fresh one, fsyncs the files the old one covered and their folders,
and deletes it. :meth:`Spool.recover` (node start) replays any journal left by a crash: every
record with a valid CRC whose file is missing or differs is rewritten durably; a torn last record
was never acknowledged and is dropped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import shutil
import struct
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from config.errors import TransientError

log = logging.getLogger(__name__)

# A journal file: a header block (magic, generation, CRC32 of both), then records from
# _HEADER_BLOCK on: magic, generation, data length, CRC32 of the data; then the data (the
# instance file). Files are zero-filled to JOURNAL_BYTES when made and reused after a
# checkpoint under the next generation, so a flush writes data only (no file-size change to
# commit); records of an older generation left in a reused file are ignored.
_HEADER = struct.Struct("<4sQI")
_HEADER_MAGIC = b"GSJH"
_HEADER_BLOCK = 4096
_RECORD = struct.Struct("<4sQQI")
_MAGIC = b"GSJ3"
JOURNAL_BYTES = 32 * 2**20  # a journal outgrows this (slower appends) until its next checkpoint
_POOL_MAX = 4  # journal files kept for reuse
PLACER_BUDGET_BYTES = 256 * 2**20  # received bytes held in memory until the placer writes them


class SpoolFullError(TransientError):
    """Free disk is below the configured floor; nothing was written."""


def h(uid: str) -> str:
    """The 32-hex-digit name of a UID in the spool."""
    return hashlib.sha256(uid.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Stored:
    """What :meth:`Spool.store` did with one instance."""

    path: Path
    created: bool  # False: the same SOP instance was already spooled (kept as first received)
    n_bytes: int


class Spool:
    """The spool folder. Thread-safe: concurrent associations write into it at once."""

    def __init__(
        self,
        root: Path | str,
        *,
        min_free_bytes: int = 0,
        fsync: bool = True,
        journal: bool = False,
    ) -> None:
        self.root = Path(root).resolve()
        self.min_free_bytes = min_free_bytes
        self.fsync = fsync
        self.journal = journal and fsync
        self.studies = self.root / "studies"
        self.tmp = self.root / "tmp"
        self.journal_dir = self.root / "journal"
        for d in (self.studies, self.tmp) + ((self.journal_dir,) if self.journal else ()):
            d.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = set()
        self._dir_lock = threading.Lock()
        self._journals: dict[int, _Journal] = {}  # receiving thread -> its open journal
        self._journals_lock = threading.Lock()
        self._free: list[tuple[Path, int]] = []  # checkpointed journal files: (path, generation)
        self._placing: set[Path] = set()  # journalled instances whose files are being written
        self._placing_lock = threading.Lock()
        self._placer: threading.Thread | None = None
        self._queue: queue.Queue[tuple[Path, bytes, _Journal]] = queue.Queue()
        # Bytes waiting for the placer: when the disk falls behind, receiving waits rather than
        # filling memory (one instance larger than the budget still goes through alone).
        self._queued_bytes = 0
        self._queued_cond = threading.Condition()

    # -- paths ----------------------------------------------------------------------------------
    def study_dir(self, study_uid: str) -> Path:
        return self.studies / h(study_uid)

    def series_dir(self, study_uid: str, series_uid: str) -> Path:
        return self.studies / h(study_uid) / h(series_uid)

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return self.series_dir(study_uid, series_uid) / (h(sop_uid) + ".dcm")

    def series_files(self, study_uid: str, series_uid: str) -> list[Path]:
        d = self.series_dir(study_uid, series_uid)
        if not d.is_dir():
            return []
        return sorted(p for p in d.iterdir() if p.suffix == ".dcm")

    def study_series_dirs(self, study_uid: str) -> list[Path]:
        d = self.study_dir(study_uid)
        return sorted(p for p in d.iterdir() if p.is_dir()) if d.is_dir() else []

    def work_dir(self, job_id: str) -> Path:
        d = self.root / "work" / _safe_name(job_id)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def outputs_dir(self, job_id: str) -> Path:
        d = self.root / "outputs" / _safe_name(job_id)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def iter_series_dirs(self) -> Iterator[Path]:
        """Every series folder in the spool (for rebuilding the index at start)."""
        if not self.studies.is_dir():
            return
        for study in sorted(self.studies.iterdir()):
            if study.is_dir():
                for series in sorted(study.iterdir()):
                    if series.is_dir():
                        yield series

    # -- writing ---------------------------------------------------------------------------------
    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def check_space(self, n_bytes: int) -> None:
        """Raise SpoolFullError when writing ``n_bytes`` would go below the free-disk floor."""
        if self.min_free_bytes and self.free_bytes() - n_bytes < self.min_free_bytes:
            raise SpoolFullError(
                f"free disk in {self.root} would drop below spool.min_free_mb "
                f"({self.min_free_bytes // 2**20} MB); instance of {n_bytes} bytes not stored"
            )

    def store(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> Stored:
        """Write one instance durably; the same SOP instance twice is stored once.

        Raises SpoolFullError (nothing written) when the write would leave less than
        ``min_free_bytes`` free.
        """
        final = self.instance_path(study_uid, series_uid, sop_uid)
        if final.exists():
            return Stored(final, False, len(data))
        self.check_space(len(data))
        return self.commit(self.begin(data), study_uid, series_uid, sop_uid)

    def begin(self, data: bytes, while_flushing: Callable[[], None] | None = None) -> Pending:
        """First half of a store, before the instance's UIDs are known (the node parses meanwhile).

        Journal mode: appends ``data`` to this thread's journal and flushes it; from here on the
        instance survives a crash (a restart's :meth:`recover` puts it in place). Otherwise:
        writes ``data`` to a file in tmp/ (fsynced). ``while_flushing`` is called once the bytes
        are written, just before the flush (which releases the GIL): work that overlaps it
        best starts there. Follow with :meth:`commit` or :meth:`abort`.
        """
        if self.journal:
            while True:
                journal = self._journal()
                with journal.cond:
                    if journal.closed:  # swapped out by a checkpoint meanwhile: take a new one
                        continue
                    journal.append(data, while_flushing)
                    journal.inflight += 1
                    break
            return Pending(None, len(data), journal, data)
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            _write_file(tmp, data, sync=self.fsync, while_flushing=while_flushing)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        return Pending(tmp, len(data), None, b"")

    def commit(self, pending: Pending, study_uid: str, series_uid: str, sop_uid: str) -> Stored:
        """Put a begun write in place; a copy already there (or on its way) wins: a duplicate.

        Journal mode: the instance is durable already; its file is written by the spool's
        placer thread within milliseconds (:meth:`checkpoint` waits for it).
        """
        final = self.instance_path(study_uid, series_uid, sop_uid)
        journal = pending.journal
        if journal is not None:
            with self._placing_lock:
                duplicate = final in self._placing or final.exists()
                if not duplicate:
                    self._placing.add(final)
            if duplicate:
                journal.done()
                return Stored(final, False, pending.n_bytes)
            placing = self._place_queue()
            with self._queued_cond:
                self._queued_cond.wait_for(
                    lambda: (
                        self._queued_bytes == 0
                        or self._queued_bytes + pending.n_bytes <= PLACER_BUDGET_BYTES
                    )
                )
                self._queued_bytes += pending.n_bytes
            placing.put((final, pending.data, journal))
            return Stored(final, True, pending.n_bytes)
        assert pending.tmp is not None
        self._ensure_dir(final.parent)
        try:
            # link, not rename: atomic keep-first when two associations store one instance
            os.link(pending.tmp, final)
        except FileExistsError:
            pending.tmp.unlink(missing_ok=True)
            return Stored(final, False, pending.n_bytes)
        except OSError:
            pending.tmp.unlink(missing_ok=True)
            raise
        pending.tmp.unlink()
        if self.fsync:
            _fsync_dir(final.parent)
        return Stored(final, True, pending.n_bytes)

    def abort(self, pending: Pending) -> None:
        """Drop a begun write (the instance was refused); recovery ignores its journal record."""
        if pending.journal is not None:
            pending.journal.done()
        elif pending.tmp is not None:
            pending.tmp.unlink(missing_ok=True)

    # -- the journal (journal mode) ----------------------------------------------------------------
    def _journal(self) -> _Journal:
        me = threading.get_ident()
        with self._journals_lock:
            journal = self._journals.get(me)
            if journal is None:
                reuse = self._free.pop() if self._free else None
                journal = self._journals[me] = _Journal(self.journal_dir, reuse)
        return journal

    def prepare_journal(self) -> None:
        """Make a zero-filled journal file ahead of the first instance (node start, background)."""
        if not self.journal:
            return
        j = _Journal(self.journal_dir, None)
        j.open()
        j.close()
        with self._journals_lock:
            if len(self._free) < _POOL_MAX:
                self._free.append((j.path, j.generation))
                return
        j.path.unlink(missing_ok=True)

    def _retire(self, j: _Journal) -> None:
        """A checkpointed journal: empty it (next generation's header) for reuse, or delete it."""
        with self._journals_lock:
            keep = len(self._free) < _POOL_MAX and j.reusable()
        if keep:
            try:
                _write_header(j.path, j.generation + 1)
            except OSError:
                keep = False
        if keep:
            with self._journals_lock:
                self._free.append((j.path, j.generation + 1))
        else:
            j.path.unlink(missing_ok=True)

    def _place_queue(self) -> queue.Queue[tuple[Path, bytes, _Journal]]:
        with self._placing_lock:
            if self._placer is None:
                self._placer = threading.Thread(target=self._place_loop, name="placer", daemon=True)
                self._placer.start()
        return self._queue

    def _place_loop(self) -> None:
        """Write journalled instances to their files (no flush: the checkpoint does that)."""
        while True:
            final, data, journal = self._queue.get()
            ok = True
            try:
                self._ensure_dir(final.parent)
                tmp = self.tmp / f"{uuid.uuid4().hex}.part"
                try:
                    _write_file(tmp, data, sync=False)
                    os.link(tmp, final)
                except FileExistsError:
                    pass
                finally:
                    tmp.unlink(missing_ok=True)
            except Exception:  # the journal keeps the instance; the next start puts it in place
                ok = False
                log.error("could not write a journalled instance to its file", exc_info=True)
            with self._placing_lock:
                self._placing.discard(final)
            journal.done(final if ok else None, failed=not ok)
            with self._queued_cond:
                self._queued_bytes -= len(data)
                self._queued_cond.notify_all()
            self._queue.task_done()

    def drain(self) -> None:
        """Wait until every journalled instance so far has its file (not yet flushed)."""
        if self._placer is not None:
            self._queue.join()

    def checkpoint(self, timeout_s: float = 120.0) -> int:
        """Make every journalled instance durable in its own file; delete the journals.

        Each journal is swapped for a fresh one first (receiving goes on into the new one), its
        instances' files are waited for, flushed with their folders, and the journal deleted.
        A journal whose files could not all be written stays for :meth:`recover`.
        Returns the number of instance files flushed.
        """
        if not self.journal:
            return 0
        with self._journals_lock:
            swapped = [j for j in self._journals.values() if j.n_records]
            for j in swapped:
                del self._journals[j.thread]
        n = 0
        for j in swapped:
            with j.cond:
                j.close()
                settled = j.cond.wait_for(j.settled, timeout_s)
            for path in j.paths:
                try:
                    _fsync_file(path)
                except FileNotFoundError:  # removed meanwhile (e.g. the study was deleted)
                    continue
                n += 1
            for d in {p.parent for p in j.paths}:
                if d.is_dir():
                    _fsync_dir(d)
            if settled and not j.failed:
                self._retire(j)
            else:
                log.error(
                    "journal kept for recovery at the next start", extra={"journal": j.path.name}
                )
        return n

    def recover(self, locate: Callable[[bytes], tuple[str, str, str] | None]) -> int:
        """Replay the journals a crash left behind (node start); returns instances rewritten.

        ``locate`` gives a journalled instance's (study, series, SOP instance) UIDs, or None for
        one the node refused (it checks exactly as on receipt). A file that matches any
        journalled copy of its instance, or that passes ``locate``'s checks where it lies, is kept
        (the first copy received wins, as in :meth:`store`); one that is missing or torn gets the
        first journalled copy.
        """
        if not self.journal_dir.is_dir():
            return 0
        journals = sorted(self.journal_dir.glob("*.wal"), key=lambda p: p.stat().st_mtime)
        copies: dict[Path, set[tuple[int, int]]] = {}  # file -> (length, crc) of every copy
        first: dict[Path, bytes] = {}
        for path in journals:
            for data, crc in _read_journal(path):
                try:
                    uids = locate(data)
                except Exception:
                    uids = None
                if uids is None:
                    continue
                final = self.instance_path(*uids)
                copies.setdefault(final, set()).add((len(data), crc))
                first.setdefault(final, data)
        rewritten = 0
        for final, data in first.items():
            if _fingerprint(final) not in copies[final] and not self._complete(final, locate):
                self._ensure_dir(final.parent)
                tmp = self.tmp / f"{uuid.uuid4().hex}.part"
                _write_file(tmp, data, sync=True)
                os.replace(tmp, final)
                rewritten += 1
            else:  # intact, but maybe never flushed
                _fsync_file(final)
        for d in {f.parent for f in first}:
            _fsync_dir(d)
        for path in journals:
            path.unlink()
        return rewritten

    def _complete(
        self, final: Path, locate: Callable[[bytes], tuple[str, str, str] | None]
    ) -> bool:
        """A spooled file that passes the receipt checks and belongs where it is.

        Such a file was flushed by an earlier checkpoint (a torn one fails the checks: it is
        empty, short, or its pixel data is cut): a later duplicate must not replace it.
        """
        try:
            uids = locate(final.read_bytes())
        except Exception:
            return False
        return uids is not None and self.instance_path(*uids) == final

    def _ensure_dir(self, d: Path) -> None:
        if d in self._known_dirs:
            return
        with self._dir_lock:
            if not d.is_dir():
                d.mkdir(parents=True, exist_ok=True)
                if self.fsync:  # make the new folders durable (study folder, then studies/)
                    _fsync_dir(d.parent)
                    _fsync_dir(d.parent.parent)
            self._known_dirs.add(d)

    def clean_tmp(self) -> int:
        """Remove partial writes left by a crash; returns how many."""
        n = 0
        for p in self.tmp.iterdir():
            if p.is_file():
                p.unlink(missing_ok=True)
                n += 1
            elif p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
        return n


@dataclass(frozen=True)
class Pending:
    """A begun write (:meth:`Spool.begin`): journalled (journal mode) or in tmp/."""

    tmp: Path | None
    n_bytes: int
    journal: _Journal | None
    data: bytes


class _Journal:
    """One receiving thread's write-ahead journal: a reused, zero-filled file (see _HEADER)."""

    def __init__(self, folder: Path, reuse: tuple[Path, int] | None) -> None:
        self.thread = threading.get_ident()
        if reuse is None:
            self.path, self.generation, self._fresh = folder / f"{uuid.uuid4().hex}.wal", 1, True
        else:  # a retired journal whose header already names this (empty) generation
            self.path, self.generation, self._fresh = reuse[0], reuse[1], False
        self.cond = threading.Condition()
        self.paths: list[Path] = []  # instance files written under this journal's cover
        self.n_records = 0
        self.inflight = 0  # records begun but not yet written to a file or dropped
        self.closed = False
        self.failed = False
        self._fd: int | None = None
        self._offset = _HEADER_BLOCK
        self._folder = folder

    def open(self) -> None:
        """Take over a retired file, or create one: zero-filled, with its header, durable."""
        if not self._fresh:
            self._fd = os.open(self.path, os.O_RDWR)
            return
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
        zeros = bytes(2**20)
        for _ in range(JOURNAL_BYTES // len(zeros)):
            _write_all(self._fd, zeros)
        os.pwrite(self._fd, _header(self.generation), 0)
        os.fsync(self._fd)
        _fsync_dir(self._folder)  # the journal's own name must survive a crash

    def append(self, data: bytes, while_flushing: Callable[[], None] | None = None) -> None:
        if self._fd is None:
            self.open()
        assert self._fd is not None
        head = _RECORD.pack(_MAGIC, self.generation, len(data), zlib.crc32(data))
        _pwrite_all(self._fd, head, self._offset)
        _pwrite_all(self._fd, data, self._offset + len(head))
        self._offset += len(head) + len(data)
        if while_flushing is not None:
            while_flushing()
        os.fdatasync(self._fd)
        self.n_records += 1

    def done(self, placed: Path | None = None, *, failed: bool = False) -> None:
        with self.cond:
            if placed is not None:
                self.paths.append(placed)
            self.failed = self.failed or failed
            self.inflight -= 1
            self.cond.notify_all()

    def settled(self) -> bool:
        return self.inflight == 0

    def reusable(self) -> bool:
        """Still its zero-filled size (not grown past it): worth keeping for the next journal."""
        try:
            return self.path.stat().st_size == JOURNAL_BYTES
        except OSError:
            return False

    def close(self) -> None:
        self.closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _header(generation: int) -> bytes:
    head = _HEADER.pack(_HEADER_MAGIC, generation, 0)
    return _HEADER.pack(_HEADER_MAGIC, generation, zlib.crc32(head[:-4]))


def _write_header(path: Path, generation: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, _header(generation), 0)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _read_journal(path: Path) -> Iterator[tuple[bytes, int]]:
    """The intact records (bytes, CRC32) of a journal's current generation, in order."""
    with open(path, "rb") as f:
        head = f.read(_HEADER.size)
        if len(head) < _HEADER.size:
            return
        magic, generation, crc = _HEADER.unpack(head)
        if magic != _HEADER_MAGIC or zlib.crc32(head[:-4]) != crc:
            return  # torn while being reused: everything before it was checkpointed
        f.seek(_HEADER_BLOCK)
        while True:
            rec = f.read(_RECORD.size)
            if len(rec) < _RECORD.size:
                return
            magic, gen, n_data, crc = _RECORD.unpack(rec)
            if magic != _MAGIC or gen != generation:
                return
            data = f.read(n_data)
            if len(data) < n_data or zlib.crc32(data) != crc:
                return
            yield data, crc


def _fingerprint(path: Path) -> tuple[int, int] | None:
    """(length, CRC32) of a spooled file, as a journal record has them."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return len(data), zlib.crc32(data)


def _write_file(
    path: Path, data: bytes, *, sync: bool, while_flushing: Callable[[], None] | None = None
) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        _write_all(fd, data)
        if while_flushing is not None:
            while_flushing()
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _safe_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        raise ValueError(f"job id {name!r} is not a plain file name")
    return name
