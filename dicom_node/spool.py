"""The durable spool: received instances as raw bytes, named by hashes of their UIDs.

Layout under ``root``::

    studies/<h(study)>/<h(series)>/<h(sop)>.dcm   instances exactly as received (DICOM file format)
    tmp/                                          partial writes; emptied at start
    work/<job_id>/, outputs/<job_id>/             created on demand for the worker

``h(uid) = sha256(uid)[:32]``: no tag value ever becomes part of a path, so a UID such as
``../../etc`` cannot leave the spool. A write goes to ``tmp/``, is fsynced, linked into place
(``os.link``: atomic, and the first copy of an instance wins) and the directory is fsynced, all before the caller answers Success: an
acknowledged instance survives a crash of the process or of the machine. (``fsync=False``
keeps the tmp + rename, so a killed process still loses nothing acknowledged, but a power cut
may.) The spool holds bytes
only; the jobs database holds state.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from config.errors import TransientError


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

    def __init__(self, root: Path | str, *, min_free_bytes: int = 0, fsync: bool = True) -> None:
        self.root = Path(root).resolve()
        self.min_free_bytes = min_free_bytes
        self.fsync = fsync
        self.studies = self.root / "studies"
        self.tmp = self.root / "tmp"
        for d in (self.studies, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = set()
        self._dir_lock = threading.Lock()

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
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                if self.fsync:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
            # link, not rename: atomic keep-first when two associations store one instance
            os.link(tmp, final)
        except FileExistsError:
            tmp.unlink(missing_ok=True)
            return Stored(final, False, len(data))
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        tmp.unlink()
        if self.fsync:
            _fsync_dir(final.parent)
        return Stored(final, True, len(data))

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
