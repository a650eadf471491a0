"""The one I/O helper of worker.outputs: save datasets to a folder (an edge, not pure)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pydicom


def file_name(ds: pydicom.Dataset) -> str:
    """sha256(SOPInstanceUID)[:32] + ".dcm": stable across re-runs, no identifiers in paths."""
    return hashlib.sha256(str(ds.SOPInstanceUID).encode()).hexdigest()[:32] + ".dcm"


def write_datasets(datasets: Iterable[pydicom.Dataset], folder: Path | str) -> list[Path]:
    """Write each dataset as a DICOM file (preamble + file meta) under ``folder``.

    Each file goes to a temporary name in the same folder, is fsynced, then renamed over the final
    name, so a reader never sees half a file and a re-run replaces the same paths.
    Returns the paths in the order given.
    """
    out_dir = Path(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        target = out_dir / file_name(ds)
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".tmp-", suffix=".dcm")
        try:
            with os.fdopen(fd, "wb") as fh:
                ds.save_as(fh, enforce_file_format=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        paths.append(target)
    return paths
