"""Shared checks and geometry for the output builders (pure: numpy + pydicom headers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
import pydicom

from config.errors import PermanentError

#: The label values the model writes (BraTS 2017-2021 convention) and their meaning.
LABEL_NECROTIC = 1
LABEL_EDEMA = 2
LABEL_ENHANCING = 4
LABEL_VALUES = frozenset({0, LABEL_NECROTIC, LABEL_EDEMA, LABEL_ENHANCING})


class Region(StrEnum):
    """Regions whose volumes are reported (keys of ``region_volumes_ml``)."""

    NECROTIC = "necrotic"
    EDEMA = "edema"
    ENHANCING = "enhancing"
    TUMOR_CORE = "tumor_core"
    WHOLE_TUMOR = "whole_tumor"


#: Which label values make up each region (TC = {1, 4}, WT = {1, 2, 4}).
REGION_LABELS: dict[Region, tuple[int, ...]] = {
    Region.NECROTIC: (LABEL_NECROTIC,),
    Region.EDEMA: (LABEL_EDEMA,),
    Region.ENHANCING: (LABEL_ENHANCING,),
    Region.TUMOR_CORE: (LABEL_NECROTIC, LABEL_ENHANCING),
    Region.WHOLE_TUMOR: (LABEL_NECROTIC, LABEL_EDEMA, LABEL_ENHANCING),
}

#: Human names used in series descriptions, SR text and the overlay legend.
REGION_NAMES: dict[Region, str] = {
    Region.NECROTIC: "Necrotic / non-enhancing core",
    Region.EDEMA: "Edema",
    Region.ENHANCING: "Enhancing tumour",
    Region.TUMOR_CORE: "Tumour core",
    Region.WHOLE_TUMOR: "Whole tumour",
}


class OutputsError(PermanentError):
    """Labels or source headers that no valid output can be built from."""


class NativeLabelsLike(Protocol):
    """What ``worker.mapback.NativeLabels`` provides: labels[k] is drawn on datasets[k]."""

    @property
    def labels(self) -> np.ndarray: ...

    @property
    def datasets(self) -> Sequence[pydicom.Dataset]: ...


@dataclass(frozen=True)
class SliceGeometry:
    """Where each slice of the reference series lies along its normal."""

    normal: np.ndarray  # unit vector, LPS
    positions_mm: np.ndarray  # projection of ImagePositionPatient on the normal, per dataset
    row_spacing_mm: float  # PixelSpacing[0]: between rows
    column_spacing_mm: float  # PixelSpacing[1]: between columns

    @property
    def order(self) -> np.ndarray:
        """Indices of the datasets by ascending position along the normal."""
        return np.argsort(self.positions_mm, kind="stable")

    def slice_thickness_mm(self) -> np.ndarray:
        """Thickness each slice stands for: half the distance to each neighbour.

        Uneven slices are handled (each slice counts its own share); a single slice uses
        SpacingBetweenSlices or SliceThickness, which the caller supplies through the headers.
        """
        order = self.order
        pos = self.positions_mm[order]
        if pos.size < 2:
            raise OutputsError("one slice: no slice spacing from positions")
        gaps = np.diff(pos)
        per_sorted = np.empty_like(pos)
        per_sorted[0] = gaps[0]
        per_sorted[-1] = gaps[-1]
        if pos.size > 2:
            per_sorted[1:-1] = (gaps[:-1] + gaps[1:]) / 2.0
        out = np.empty_like(per_sorted)
        out[order] = per_sorted
        return out


def _floats(value: Any, keyword: str, n: int, index: int) -> np.ndarray:
    if value is None or not hasattr(value, "__len__") or len(value) != n:
        raise OutputsError(f"source slice {index}: {keyword} must have {n} values; got {value!r}")
    return np.asarray([float(v) for v in value], dtype=float)


def is_multiframe(ds: pydicom.Dataset) -> bool:
    return int(ds.get("NumberOfFrames", 1) or 1) > 1


def frame_attribute(ds: pydicom.Dataset, frame_number: int | None, seq: str, keyword: str) -> Any:
    """``keyword`` of frame ``frame_number`` (1-based): per-frame group, shared group, then top level."""
    sources = []
    if frame_number is not None:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        if per_frame is None or not 1 <= frame_number <= len(per_frame):
            raise OutputsError(
                f"frame {frame_number} has no PerFrameFunctionalGroupsSequence item "
                f"({len(per_frame) if per_frame else 0} items)"
            )
        sources.append(per_frame[frame_number - 1])
        shared = ds.get("SharedFunctionalGroupsSequence")
        if shared:
            sources.append(shared[0])
    for source in sources:
        if seq in source and source[seq].value and keyword in source[seq].value[0]:
            return source[seq].value[0][keyword].value
    return ds.get(keyword)


def frame_numbers_for(
    datasets: Sequence[pydicom.Dataset], frame_numbers: Sequence[int] | None
) -> list[int | None]:
    """Per slice: the 1-based frame of a multi-frame source, or None for single-frame instances."""
    if frame_numbers is None:
        if any(is_multiframe(ds) for ds in datasets):
            raise OutputsError(
                "a multi-frame source needs frame_numbers (the frame each label slice lies on)"
            )
        return [None] * len(datasets)
    if len(frame_numbers) != len(datasets):
        raise OutputsError(
            f"frame_numbers must have one entry per slice; got {len(frame_numbers)} for "
            f"{len(datasets)} slices"
        )
    return [int(f) for f in frame_numbers]


def slice_geometry(
    datasets: Sequence[pydicom.Dataset], frame_numbers: Sequence[int] | None = None
) -> SliceGeometry:
    """Geometry of the source slices; rejects mixed orientations and duplicate positions.

    Single-frame instances, or one multi-frame instance (repeated per slice) with the 1-based
    ``frame_numbers`` of each slice (plane position/orientation/pixel measures from its
    functional groups).
    """
    if not datasets:
        raise OutputsError("no source instances given")
    frames = frame_numbers_for(datasets, frame_numbers)

    def iop(k: int) -> np.ndarray:
        value = frame_attribute(
            datasets[k], frames[k], "PlaneOrientationSequence", "ImageOrientationPatient"
        )
        return _floats(value, "ImageOrientationPatient", 6, k)

    iop0 = iop(0)
    row_cos, col_cos = iop0[:3], iop0[3:]
    normal = np.cross(row_cos, col_cos)
    norm = float(np.linalg.norm(normal))
    if norm < 1e-3:
        raise OutputsError(f"ImageOrientationPatient has parallel axes: {list(iop0)}")
    normal = normal / norm
    positions = np.empty(len(datasets))
    for k, ds in enumerate(datasets):
        iop_k = iop(k)
        if not np.allclose(iop_k, iop0, atol=1e-4):
            raise OutputsError(
                f"source slices must share one ImageOrientationPatient; slice {k} has "
                f"{list(iop_k)}, slice 0 {list(iop0)}"
            )
        ipp = frame_attribute(ds, frames[k], "PlanePositionSequence", "ImagePositionPatient")
        positions[k] = float(np.dot(_floats(ipp, "ImagePositionPatient", 3, k), normal))
    if len(datasets) > 1:
        gaps = np.diff(np.sort(positions))
        if np.any(gaps < 1e-3):
            raise OutputsError(
                "source slices must lie at distinct positions along the slice normal; "
                f"smallest gap {float(gaps.min()):.4f} mm"
            )
    spacing = _floats(
        frame_attribute(datasets[0], frames[0], "PixelMeasuresSequence", "PixelSpacing"),
        "PixelSpacing",
        2,
        0,
    )
    if np.any(spacing <= 0):
        raise OutputsError(f"PixelSpacing must be positive; got {list(spacing)}")
    return SliceGeometry(normal, positions, float(spacing[0]), float(spacing[1]))


def check_labels(labels: np.ndarray, datasets: Sequence[pydicom.Dataset]) -> np.ndarray:
    """Validate labels against their source instances; returns them as uint8.

    Rules: shape (n_slices, Rows, Columns) with n_slices == len(datasets), values in {0, 1, 2, 4},
    all instances of one series of one study with the same Rows/Columns.
    """
    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise OutputsError(f"labels must be 3-D (n_slices, Rows, Columns); got shape {arr.shape}")
    if len(datasets) != arr.shape[0]:
        raise OutputsError(
            f"labels must have one slice per source instance; got {arr.shape[0]} slices for "
            f"{len(datasets)} instances"
        )
    rows_cols = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if rows_cols != {(arr.shape[1], arr.shape[2])}:
        raise OutputsError(
            f"labels slices must match the source Rows x Columns; got {arr.shape[1:]} "
            f"for instances of {sorted(rows_cols)}"
        )
    series = {str(ds.SeriesInstanceUID) for ds in datasets}
    studies = {str(ds.StudyInstanceUID) for ds in datasets}
    if len(series) != 1 or len(studies) != 1:
        raise OutputsError(
            f"source instances must come from one series of one study; got {len(series)} "
            f"series in {len(studies)} studies"
        )
    if arr.dtype.kind not in "iub":
        raise OutputsError(f"labels must be integers; got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 1:
        counts = np.bincount(arr.ravel(), minlength=256)
        present = {int(v) for v in np.flatnonzero(counts)}
    else:
        present = {int(v) for v in np.unique(arr)}
    unknown = present - LABEL_VALUES
    if unknown:
        raise OutputsError(f"labels must take values in {{0, 1, 2, 4}}; got also {sorted(unknown)}")
    return arr.astype(np.uint8, copy=False)


def source_series_uid(datasets: Sequence[pydicom.Dataset]) -> str:
    return str(datasets[0].SeriesInstanceUID)


#: Display colours (sRGB), Okabe-Ito colour-blind-safe hues that keep the usual BraTS meaning:
#: edema bluish green, necrotic core vermillion (red), enhancing tumour yellow. Vermillion and
#: yellow differ strongly in lightness, so they stay apart for red-green colour blindness too.
LABEL_RGB: dict[int, tuple[int, int, int]] = {
    LABEL_NECROTIC: (213, 94, 0),
    LABEL_EDEMA: (0, 158, 115),
    LABEL_ENHANCING: (240, 228, 66),
}

#: Patient and study attributes copied verbatim from the source, so the outputs belong to the
#: same patient and study (Patient, General Study and Patient Study modules).
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "OtherPatientIDsSequence",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)


def copy_patient_study(source: pydicom.Dataset, target: pydicom.Dataset) -> None:
    """Copy the patient and study attributes present in ``source`` onto ``target``."""
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            target[keyword] = source[keyword]
    if "SpecificCharacterSet" in source:
        target.SpecificCharacterSet = source.SpecificCharacterSet


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("gliomaseg")
    except Exception:  # not installed as a distribution (e.g. a source checkout)
        return "0+unknown"
