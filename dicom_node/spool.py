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
write-ahead journal (``journal/<id>.wal``: path, length, CRC32, bytes) and flushes that once
(``fdatasync`` of an append); the instance file is then written and linked without a flush.
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
import shutil
import struct
import threading
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from config.errors import TransientError

log = logging.getLogger(__name__)

# A journal record: magic, path length, data length, CRC32 of path + data; then path, data.
_RECORD = struct.Struct("<4sIQI")
_MAGIC = b"GSJ1"


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

    def store(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> Stored:
        """Write one instance durably; the same SOP instance twice is stored once.

        Raises SpoolFullError (nothing written) when the write would leave less than
        ``min_free_bytes`` free.
        """
        final = self.instance_path(study_uid, series_uid, sop_uid)
        if final.exists():
            return Stored(final, False, len(data))
        if self.min_free_bytes and self.free_bytes() - len(data) < self.min_free_bytes:
            raise SpoolFullError(
                f"free disk in {self.root} would drop below spool.min_free_mb "
                f"({self.min_free_bytes // 2**20} MB); instance of {len(data)} bytes not stored"
            )
        self._ensure_dir(final.parent)
        if self.journal:
            # Durable here (one flush); the file below is made durable by the next checkpoint.
            while True:
                journal = self._journal()
                with journal.lock:
                    if journal.closed:  # swapped out by a checkpoint meanwhile: take a new one
                        continue
                    journal.append(final.relative_to(self.root), data)
                    break
            created = self._place(final, data, sync=False)
            return Stored(final, created, len(data))
        created = self._place(final, data, sync=self.fsync)
        if created and self.fsync:
            _fsync_dir(final.parent)
        return Stored(final, created, len(data))

    def _place(self, final: Path, data: bytes, *, sync: bool) -> bool:
        """Write ``data`` to tmp/ and link it to ``final``; False when ``final`` already exists."""
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                _write_all(fd, data)
                if sync:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
            # link, not rename: atomic keep-first when two associations store one instance
            os.link(tmp, final)
        except FileExistsError:
            tmp.unlink(missing_ok=True)
            return False
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        tmp.unlink()
        return True

    # -- the journal (journal mode) ----------------------------------------------------------------
    def _journal(self) -> _Journal:
        me = threading.get_ident()
        with self._journals_lock:
            journal = self._journals.get(me)
            if journal is None:
                journal = self._journals[me] = _Journal(self.journal_dir)
        return journal

    def checkpoint(self) -> int:
        """Make every journalled instance durable in its own file; delete the journals.

        Each journal is swapped for a fresh one first, so receiving never waits for the flushes.
        Returns the number of instance files flushed.
        """
        if not self.journal:
            return 0
        with self._journals_lock:
            swapped = [j for j in self._journals.values() if j.paths]
            for j in swapped:
                del self._journals[j.thread]
        n = 0
        for j in swapped:
            with j.lock:  # a store in flight on that thread finishes its append first
                j.close()
            dirs: set[Path] = set()
            for rel in j.paths:
                path = self.root / rel
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:  # a duplicate that lost the race: nothing to flush
                    continue
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                dirs.add(path.parent)
                n += 1
            for d in dirs:
                _fsync_dir(d)
            j.path.unlink(missing_ok=True)
        return n

    def recover(self) -> int:
        """Replay the journals a crash left behind (node start); returns instances rewritten.

        A file that matches any journalled copy of its instance is kept (the first copy received
        wins, as in :meth:`store`); one that is missing or torn gets the first journalled copy.
        """
        if not self.journal_dir.is_dir():
            return 0
        journals = sorted(self.journal_dir.glob("*.wal"), key=lambda p: p.stat().st_mtime)
        copies: dict[str, set[tuple[int, int]]] = {}  # path -> (length, crc) of every copy
        first: dict[str, bytes] = {}
        for path in journals:
            for rel, data, crc in _read_journal(path):
                copies.setdefault(rel, set()).add((len(data), crc))
                first.setdefault(rel, data)
        rewritten = 0
        for rel, data in first.items():
            final = (self.root / rel).resolve()
            if self.studies not in final.parents:  # never write outside the spool
                log.error("journal record outside the spool ignored")
                continue
            if _fingerprint(final, rel) in copies[rel]:
                continue
            self._ensure_dir(final.parent)
            tmp = self.tmp / f"{uuid.uuid4().hex}.part"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            rewritten += 1
        # Files that were intact but never flushed: flush them before the journals go.
        for rel in first:
            final = self.root / rel
            if final.exists():
                fd = os.open(final, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        for d in {(self.root / rel).parent for rel in first}:
            if d.is_dir():
                _fsync_dir(d)
        for path in journals:
            path.unlink()
        return rewritten

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


class _Journal:
    """One receiving thread's append-only write-ahead journal."""

    def __init__(self, folder: Path) -> None:
        self.thread = threading.get_ident()
        self.path = folder / f"{uuid.uuid4().hex}.wal"
        self.lock = threading.Lock()
        self.paths: list[Path] = []
        self.closed = False
        self._fd: int | None = None
        self._folder = folder

    def append(self, rel: Path, data: bytes) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
            _fsync_dir(self._folder)  # the journal's own name must survive a crash
        name = str(rel).encode()
        crc = zlib.crc32(data, zlib.crc32(name))
        _write_all(self._fd, _RECORD.pack(_MAGIC, len(name), len(data), crc) + name)
        _write_all(self._fd, data)
        os.fdatasync(self._fd)
        self.paths.append(rel)

    def close(self) -> None:
        self.closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_journal(path: Path) -> Iterator[tuple[str, bytes, int]]:
    """The complete, intact records of a journal; stops at a torn or corrupt tail."""
    with open(path, "rb") as f:
        while True:
            head = f.read(_RECORD.size)
            if len(head) < _RECORD.size:
                return
            magic, n_name, n_data, crc = _RECORD.unpack(head)
            if magic != _MAGIC or n_name > 4096:
                return
            name = f.read(n_name)
            data = f.read(n_data)
            if len(name) < n_name or len(data) < n_data:
                return
            if zlib.crc32(data, zlib.crc32(name)) != crc:
                return
            yield name.decode(), data, crc


def _fingerprint(path: Path, rel: str) -> tuple[int, int] | None:
    """(length, CRC32 of journal path + bytes) of a spooled file, as its journal record has it."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return len(data), zlib.crc32(data, zlib.crc32(rel.encode()))


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
