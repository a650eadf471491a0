"""Readers for BraTS case folders in both namings, mapped to one internal convention.

2017-2021: ``<case>_t1.nii.gz``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg`` (labels 1/2/4).
2023+:     ``<case>-t1n.nii.gz``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg`` (labels 1/2/3; 3 -> 4 here).
Arrays are returned in RAS+ closest-canonical voxel order (``nibabel.as_closest_canonical``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from config.errors import PermanentError

log = logging.getLogger(__name__)

SUFFIXES: dict[str, dict[str, str]] = {
    "2018": {"T1": "_t1", "T1c": "_t1ce", "T2": "_t2", "FLAIR": "_flair", "seg": "_seg"},
    "2023": {"T1": "-t1n", "T1c": "-t1c", "T2": "-t2w", "FLAIR": "-t2f", "seg": "-seg"},
}
EXTENSIONS = (".nii.gz", ".nii")


class CaseError(PermanentError):
    """A BraTS case folder that cannot be read."""


@dataclass(frozen=True)
class CaseFiles:
    case_id: str
    naming: str  # "2018" | "2023"
    images: dict[str, Path]  # T1, T1c, T2, FLAIR
    seg: Path | None


@dataclass(frozen=True)
class Case:
    case_id: str
    images: dict[str, np.ndarray]  # float32, RAS canonical
    labels: np.ndarray | None  # uint8 {0,1,2,4}, RAS canonical
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray  # RAS canonical affine


def _find(folder: Path, stem: str) -> Path | None:
    for ext in EXTENSIONS:
        p = folder / f"{stem}{ext}"
        if p.exists():
            return p
    return None


def case_files(folder: Path) -> CaseFiles:
    """Identify the files of one case folder (either naming); CaseError when incomplete."""
    folder = Path(folder)
    case_id = folder.name
    for naming, suffixes in SUFFIXES.items():
        found = {role: _find(folder, case_id + sfx) for role, sfx in suffixes.items()}
        if any(found[r] is not None for r in ("T1", "T1c", "T2", "FLAIR")):
            missing = [r for r in ("T1", "T1c", "T2", "FLAIR") if found[r] is None]
            if missing:
                expected = ", ".join(case_id + suffixes[r] + ".nii.gz" for r in missing)
                raise CaseError(
                    f"case {case_id}: BraTS {naming} naming needs {expected}; not found"
                )
            images = {r: found[r] for r in ("T1", "T1c", "T2", "FLAIR")}
            return CaseFiles(case_id, naming, images, found["seg"])  # type: ignore[arg-type]
    raise CaseError(
        f"case folder {case_id}: no BraTS images found (expected {case_id}_t1.nii.gz ... "
        f"or {case_id}-t1n.nii.gz ...)"
    )


def find_cases(root: Path) -> list[CaseFiles]:
    """Every case folder directly under ``root`` (sorted by id); folders without images are skipped."""
    cases = []
    for folder in sorted(Path(root).iterdir()):
        if not folder.is_dir():
            continue
        try:
            cases.append(case_files(folder))
        except CaseError as exc:
            log.warning("skipping folder: %s", exc)
    return cases


def load_nifti_canonical(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asanyarray(img.dataobj)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return data, img.affine, zooms  # type: ignore[return-value]


def map_labels(labels: np.ndarray, naming: str, case_id: str = "") -> np.ndarray:
    """Map a seg array to the internal labels {0,1,2,4}; CaseError on unexpected values."""
    labels = np.asarray(labels).astype(np.int16)
    allowed = {0, 1, 2, 4} if naming == "2018" else {0, 1, 2, 3}
    found = set(np.unique(labels).tolist())
    if not found <= allowed:
        raise CaseError(
            f"case {case_id}: labels must be in {sorted(allowed)} for BraTS {naming} naming; "
            f"found {sorted(found)}"
        )
    out = labels.astype(np.uint8)
    if naming == "2023":
        out[labels == 3] = 4
    return out


def load_case(files: CaseFiles, *, with_labels: bool = True) -> Case:
    images = {}
    affine = None
    spacing = None
    shape = None
    for role, path in files.images.items():
        data, aff, zooms = load_nifti_canonical(path)
        if shape is None:
            shape, affine, spacing = data.shape, aff, zooms
        elif data.shape != shape:
            raise CaseError(
                f"case {files.case_id}: all sequences must share one grid; {role} has shape "
                f"{data.shape}, T1 has {shape}"
            )
        images[role] = np.asarray(data, dtype=np.float32)
    labels = None
    if with_labels and files.seg is not None:
        seg, _, _ = load_nifti_canonical(files.seg)
        if seg.shape != shape:
            raise CaseError(
                f"case {files.case_id}: seg shape {seg.shape} differs from images {shape}"
            )
        labels = map_labels(seg, files.naming, files.case_id)
    return Case(files.case_id, images, labels, spacing, affine)  # type: ignore[arg-type]
