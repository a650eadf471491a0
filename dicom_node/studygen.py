"""Build realistic MR DICOM studies from NIfTI-like volumes (test fixtures, demos, benchmarks).

Each input volume becomes one MR Image Storage series, one file per slice, explicit VR little
endian, int16 pixels with RescaleSlope/RescaleIntercept, and the acquisition headers a scanner of
the chosen vendor style would write for that kind of sequence (ScanningSequence, SequenceVariant,
TR/TE/TI, echo train, SequenceName, contrast agent for post-contrast T1, vendor-style series
descriptions and series numbers). All series of a study share StudyInstanceUID and
FrameOfReferenceUID; post-contrast series are acquired later (later SeriesTime and SeriesNumber).

Voxel -> DICOM mapping (exact; the worker compares labels voxel for voxel with it)
---------------------------------------------------------------------------------
Let ``(array, affine) = series_grid(volume, affine_ras, slice_mm=..., oblique_deg=...)`` (the
identity when neither is set). ``affine`` maps voxel ``(i, j, k)`` to RAS mm; LPS = diag(-1, -1, 1)
@ affine. Then, for the series written from that volume:

* instance ``k`` (InstanceNumber ``k + 1``, file ``IM{k+1:04d}.dcm``) holds ``array[:, :, k]``;
* its pixel ``[row r, column c]`` is ``array[c, r, k]`` (columns run along voxel axis i, rows along
  axis j), so Columns = ``shape[0]``, Rows = ``shape[1]``;
* ImageOrientationPatient = unit(LPS[:, 0]) (row direction) + unit(LPS[:, 1]) (column direction);
  PixelSpacing = [|LPS[:, 1]|, |LPS[:, 0]|] (row spacing, column spacing);
  ImagePositionPatient of instance k = LPS @ (0, 0, k, 1); SliceThickness = SpacingBetweenSlices
  = |LPS[:, 2]| (``slice_mm`` when given).

The slice axis is not flipped to follow the cross product of the orientation vectors: when the
third voxel axis points against it (e.g. a LAS NIfTI), instance k is still voxel slice k and a
reader that sorts by position along the normal sees the slices in reverse. ``slice_index`` in
:class:`SeriesWritten` is always ``range(n)`` in instance order; use the ``affine_ras`` and
``shape`` it carries to compare voxel for voxel.

``series_grid`` resampling: ``oblique_deg`` rotates the voxel grid (same shape and spacing) by
that angle about the grid's first voxel axis (an in-plane, left-right axis for axial data) through
the volume centre, and resamples (linear for images, nearest with ``order=0`` for labels).
``slice_mm`` then makes thick slices along the third axis: ``n = floor((n0 - 1) * dz / slice_mm) + 1``
slices, centred on the original extent; images are averaged over the slab (box filter of the
slab width) before sampling; labels (``order=0``) are sampled at the slab centre.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from config.errors import PermanentError

__all__ = [
    "KINDS",
    "VENDORS",
    "SeriesWritten",
    "VolumeError",
    "StudyWritten",
    "series_grid",
    "write_brats_case",
    "write_study",
    "write_tcia_native_case",
]

ROLES = ("T1", "T1c", "T2", "FLAIR")


class VolumeError(PermanentError, ValueError):
    """A volume or argument studygen cannot write as a DICOM series (message says why)."""


#: Series kinds write_study knows: the four roles plus distractors a real study holds.
KINDS = (
    "T1",
    "T1c",
    "T2",
    "FLAIR",
    "PD",
    "DWI",
    "ADC",
    "SWI",
    "LOCALIZER",
    "T1c_MPR",
    "T1_FLAIR",
)
VENDORS = ("siemens", "ge", "philips", "hitachi")
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Acquisition order used for SeriesNumber / SeriesTime (post-contrast last).
_ORDER = {
    "LOCALIZER": 0,
    "T1": 1,
    "T1_FLAIR": 1,
    "T2": 2,
    "PD": 2,
    "FLAIR": 3,
    "DWI": 4,
    "ADC": 5,
    "SWI": 6,
    "T1c": 8,
    "T1c_MPR": 9,
}


@dataclass(frozen=True)
class SeriesWritten:
    """One written series. ``role`` is the kind when it is one of T1/T1c/T2/FLAIR, else None."""

    role: str | None
    series_uid: str
    sop_uids: list[str]
    paths: list[Path]
    kind: str = ""
    series_number: int = 0
    description: str = ""
    affine_ras: np.ndarray | None = field(default=None, repr=False)  # of the written grid
    shape: tuple[int, int, int] = (0, 0, 0)  # (Columns, Rows, n_slices) = written array shape


@dataclass(frozen=True)
class StudyWritten:
    study_uid: str
    series: dict[str, SeriesWritten]  # by the key given in ``volumes``
    frame_of_reference_uid: str = ""

    @property
    def paths(self) -> list[Path]:
        return [p for s in self.series.values() for p in s.paths]


# --------------------------------------------------------------------------- geometry


def _check_affine(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise VolumeError(f"affine must be 4x4, got shape {affine.shape}")
    cols = affine[:3, :3]
    norms = np.linalg.norm(cols, axis=0)
    if np.any(norms <= 0):
        raise VolumeError(f"affine has a zero-length voxel axis: spacings {norms}")
    unit = cols / norms
    gram = unit.T @ unit
    off = np.abs(gram - np.eye(3)).max()
    if off > 1e-3:
        raise VolumeError(
            f"affine voxel axes must be orthogonal for a DICOM series (max |cos| = {off:.4f})"
        )
    return affine


def _rotation(axis: np.ndarray, deg: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    a = np.deg2rad(deg)
    x, y, z = axis
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


def series_grid(
    volume: np.ndarray,
    affine_ras: np.ndarray,
    *,
    slice_mm: float | None = None,
    oblique_deg: float = 0.0,
    order: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """The array and RAS affine a series is written from (see the module docstring).

    ``order=1`` for images (linear), ``order=0`` for label maps (nearest, no slab averaging).
    Without ``slice_mm`` and ``oblique_deg`` the inputs are returned unchanged.
    """
    from scipy import ndimage

    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise VolumeError(f"volume must be 3-D, got shape {volume.shape}")
    affine = _check_affine(affine_ras)
    out = volume
    if oblique_deg:
        centre = (np.array(volume.shape, dtype=float) - 1) / 2
        rot = _rotation(affine[:3, 0], oblique_deg)
        new = np.eye(4)
        new[:3, :3] = rot @ affine[:3, :3]
        world_c = affine[:3, :3] @ centre + affine[:3, 3]
        new[:3, 3] = world_c - new[:3, :3] @ centre
        m = np.linalg.inv(affine) @ new  # new voxel -> old voxel
        src = out.astype(np.float32) if order > 0 else out
        out = ndimage.affine_transform(
            src, m[:3, :3], offset=m[:3, 3], output_shape=volume.shape, order=order, cval=0
        )
        affine = new
    if slice_mm:
        dz = float(np.linalg.norm(affine[:3, 2]))
        n0 = out.shape[2]
        step = float(slice_mm) / dz
        n = int(np.floor((n0 - 1) / step + 1e-9)) + 1
        start = ((n0 - 1) - (n - 1) * step) / 2
        ks = start + step * np.arange(n)
        if order > 0:
            width = max(1, int(round(step)))
            smooth = ndimage.uniform_filter1d(out.astype(np.float32), size=width, axis=2)
            lo = np.clip(np.floor(ks).astype(int), 0, n0 - 1)
            hi = np.clip(lo + 1, 0, n0 - 1)
            w = (ks - lo)[None, None, :]
            out = smooth[:, :, lo] * (1 - w) + smooth[:, :, hi] * w
        else:
            out = out[:, :, np.clip(np.rint(ks).astype(int), 0, n0 - 1)]
        new = affine.copy()
        new[:3, 2] = affine[:3, 2] * step
        new[:3, 3] = affine[:3, 3] + affine[:3, 2] * start
        affine = new
    return out, affine


def _to_int16(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Stored int16 values, slope and intercept so that value = stored * slope + intercept."""
    a = np.asarray(array)
    if a.size == 0:
        raise VolumeError("empty volume")
    if not np.all(np.isfinite(a)):
        raise VolumeError("volume holds NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    integral = np.issubdtype(a.dtype, np.integer) or bool(np.all(a == np.round(a)))
    if integral and lo >= -32768 and hi <= 32767:
        return a.astype(np.int16), 1.0, 0.0
    if lo >= 0:  # non-negative float data: keep 0 at 0, use the positive range
        slope = hi / 32000.0 if hi > 0 else 1.0
        intercept = 0.0
    else:
        intercept = (hi + lo) / 2
        slope = (hi - lo) / 64000.0 or 1.0
    stored = np.clip(np.rint((a - intercept) / slope), -32768, 32767).astype(np.int16)
    return stored, float(slope), float(intercept)


# --------------------------------------------------------------------------- vendor headers

_VENDOR_EQUIPMENT = {
    "siemens": ("SIEMENS", "Skyra", "syngo MR E11", 3.0),
    "ge": ("GE MEDICAL SYSTEMS", "DISCOVERY MR750", "DV26.0_R03", 3.0),
    "philips": ("Philips Medical Systems", "Ingenia", "5.4.1", 1.5),
    "hitachi": ("Hitachi Medical Corporation", "ECHELON", "V5.0", 1.5),
}
_AGENT = {"siemens": "GADAVIST", "ge": "Gadolinium", "philips": "Dotarem", "hitachi": "Gd-DTPA"}

# kind -> vendor -> series description
_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "T1": {"siemens": "t1_se_tra", "ge": "Ax T1 SE", "philips": "T1W_SE", "hitachi": "T1WI_SE_AX"},
    "T1c": {
        "siemens": "t1_se_tra_KM",
        "ge": "Ax T1 +C",
        "philips": "T1W_SE+C",
        "hitachi": "T1WI_SE_AX_Gd",
    },
    "T2": {
        "siemens": "t2_tse_tra",
        "ge": "Ax T2 FSE",
        "philips": "T2W_TSE",
        "hitachi": "T2WI_FSE_AX",
    },
    "FLAIR": {
        "siemens": "t2_tirm_tra_dark-fluid",
        "ge": "AX FLAIR",
        "philips": "FLAIR_LongTR",
        "hitachi": "FLAIR_AX",
    },
    "PD": {
        "siemens": "pd_tse_tra",
        "ge": "Ax PD FSE",
        "philips": "PDW_TSE",
        "hitachi": "PDWI_FSE_AX",
    },
    "DWI": {
        "siemens": "ep2d_diff_3scan_trace_p2",
        "ge": "Ax DWI 1000b",
        "philips": "DWI_SSh",
        "hitachi": "DWI_AX_b1000",
    },
    "ADC": {
        "siemens": "ep2d_diff_3scan_trace_p2_ADC",
        "ge": "Apparent Diffusion Coefficient (mm2/s)",
        "philips": "dADC",
        "hitachi": "ADC_map",
    },
    "SWI": {"siemens": "swi_tra", "ge": "Ax SWAN", "philips": "SWIp", "hitachi": "SWI_AX"},
    "LOCALIZER": {
        "siemens": "localizer",
        "ge": "3Plane Loc",
        "philips": "Survey",
        "hitachi": "Scanogram",
    },
    "T1c_MPR": {
        "siemens": "t1_mprage_sag_KM_MPR_tra",
        "ge": "Ax T1 +C REFORMAT",
        "philips": "T1W_3D_TFE+C MPR tra",
        "hitachi": "T1WI_3D_Gd_MPR_AX",
    },
    "T1_FLAIR": {
        "siemens": "t1_tirm_tra",
        "ge": "Ax T1 FLAIR",
        "philips": "T1W_FLAIR",
        "hitachi": "T1_FLAIR_AX",
    },
}
_MPRAGE_DESCRIPTIONS = {
    "T1": {
        "siemens": "t1_mprage_tra_iso",
        "ge": "Ax 3D BRAVO",
        "philips": "3D_T1W_TFE",
        "hitachi": "3D_T1_RSSG_AX",
    },
    "T1c": {
        "siemens": "t1_mprage_tra_iso_KM",
        "ge": "Ax 3D BRAVO +C",
        "philips": "3D_T1W_TFE+C",
        "hitachi": "3D_T1_RSSG_AX_Gd",
    },
}

# kind -> physics (vendor independent); Siemens SequenceName separately.
_PHYSICS: dict[str, dict[str, Any]] = {
    "T1": dict(
        ScanningSequence="SE",
        SequenceVariant=["SP", "OSP"],
        RepetitionTime=550.0,
        EchoTime=11.0,
        EchoTrainLength=1,
        FlipAngle=90.0,
        seq="*se2d1",
    ),
    "T2": dict(
        ScanningSequence="SE",
        SequenceVariant=["SK", "SP", "OSP"],
        RepetitionTime=5000.0,
        EchoTime=98.0,
        EchoTrainLength=11,
        FlipAngle=150.0,
        seq="*tse2d1_11",
    ),
    "FLAIR": dict(
        ScanningSequence=["SE", "IR"],
        SequenceVariant=["SK", "SP", "MP"],
        RepetitionTime=9000.0,
        EchoTime=89.0,
        InversionTime=2500.0,
        EchoTrainLength=21,
        FlipAngle=150.0,
        seq="*tir2d1_21",
    ),
    "PD": dict(
        ScanningSequence="SE",
        SequenceVariant=["SK", "SP"],
        RepetitionTime=3200.0,
        EchoTime=12.0,
        EchoTrainLength=5,
        FlipAngle=150.0,
        seq="*tse2d1_5",
    ),
    "DWI": dict(
        ScanningSequence="EP",
        SequenceVariant=["SK", "SP"],
        RepetitionTime=5200.0,
        EchoTime=89.0,
        EchoTrainLength=1,
        FlipAngle=90.0,
        seq="*ep_b1000t",
        DiffusionBValue=1000.0,
    ),
    "ADC": dict(
        ScanningSequence="EP",
        SequenceVariant=["SK", "SP"],
        RepetitionTime=5200.0,
        EchoTime=89.0,
        EchoTrainLength=1,
        FlipAngle=90.0,
        seq="*ep_b0_1000",
    ),
    "SWI": dict(
        ScanningSequence="GR",
        SequenceVariant=["SP", "OSP"],
        RepetitionTime=27.0,
        EchoTime=20.0,
        EchoTrainLength=1,
        FlipAngle=15.0,
        seq="*swi3d1r",
        MRAcquisitionType="3D",
    ),
    "LOCALIZER": dict(
        ScanningSequence="GR",
        SequenceVariant=["SP", "OSP"],
        RepetitionTime=8.6,
        EchoTime=4.0,
        EchoTrainLength=1,
        FlipAngle=20.0,
        seq="*fl2d1",
    ),
    "T1_FLAIR": dict(
        ScanningSequence=["SE", "IR"],
        SequenceVariant=["SK", "SP", "MP"],
        RepetitionTime=2000.0,
        EchoTime=9.0,
        InversionTime=860.0,
        EchoTrainLength=6,
        FlipAngle=150.0,
        seq="*tir2d1_6",
    ),
}
_MPRAGE = dict(
    ScanningSequence=["GR", "IR"],
    SequenceVariant=["SK", "SP", "MP"],
    RepetitionTime=2300.0,
    EchoTime=2.98,
    InversionTime=900.0,
    EchoTrainLength=1,
    FlipAngle=9.0,
    seq="*tfl3d1_16",
    MRAcquisitionType="3D",
)

_IMAGE_TYPE: dict[str, dict[str, list[str]]] = {
    "siemens": {
        "_": ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"],
        "DWI": ["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW", "ND", "NORM"],
        "ADC": ["DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND", "NORM"],
        "SWI": ["ORIGINAL", "PRIMARY", "M", "SWI", "ND", "NORM"],
        "T1c_MPR": ["DERIVED", "SECONDARY", "MPR", "ND", "NORM"],
    },
    "ge": {
        "_": ["ORIGINAL", "PRIMARY", "OTHER"],
        "ADC": ["DERIVED", "SECONDARY", "ADC"],
        "LOCALIZER": ["ORIGINAL", "PRIMARY", "LOCALIZER"],
        "T1c_MPR": ["DERIVED", "SECONDARY", "REFORMATTED", "AVERAGE"],
    },
    "philips": {
        "_": ["ORIGINAL", "PRIMARY", "M_SE", "M", "SE"],
        "FLAIR": ["ORIGINAL", "PRIMARY", "M_IR", "M", "IR"],
        "T1_FLAIR": ["ORIGINAL", "PRIMARY", "M_IR", "M", "IR"],
        "DWI": ["ORIGINAL", "PRIMARY", "M_SE", "M", "SE"],
        "ADC": ["DERIVED", "PRIMARY", "ADC_UNSPECIFIED", "ADC"],
        "SWI": ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"],
        "LOCALIZER": ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"],
        "T1c_MPR": ["DERIVED", "SECONDARY", "MPR"],
    },
    "hitachi": {
        "_": ["ORIGINAL", "PRIMARY", "OTHER"],
        "ADC": ["DERIVED", "SECONDARY", "ADC"],
        "T1c_MPR": ["DERIVED", "SECONDARY", "MPR"],
    },
}


def _base_kind(kind: str) -> str:
    return "T1" if kind in ("T1c", "T1c_MPR") else kind


def _physics(kind: str, t1_technique: str) -> dict[str, Any]:
    base = _base_kind(kind)
    if base == "T1" and t1_technique == "mprage":
        return dict(_MPRAGE)
    return dict(_PHYSICS[base])


def _description(kind: str, vendor: str, t1_technique: str) -> str:
    if kind in _MPRAGE_DESCRIPTIONS and t1_technique == "mprage":
        return _MPRAGE_DESCRIPTIONS[kind][vendor]
    return _DESCRIPTIONS[kind][vendor]


def _series_numbers(keys: Sequence[str], kinds: Mapping[str, str], vendor: str) -> dict[str, int]:
    ordered = sorted(keys, key=lambda k: (_ORDER.get(kinds[k], 7), list(keys).index(k)))
    numbers = {}
    for i, key in enumerate(ordered, start=1):
        if vendor == "philips":
            numbers[key] = i * 100 + 1
        elif vendor == "hitachi":
            numbers[key] = i + 1
        else:
            numbers[key] = i if kinds[ordered[0]] == "LOCALIZER" else i + 1
    return numbers


def _ds_number(value: float) -> str:
    text = f"{value:.10g}"
    if len(text) > 16:
        text = f"{value:.8e}"
    return text


# --------------------------------------------------------------------------- writing


def write_study(
    volumes: Mapping[str, tuple[np.ndarray, np.ndarray]],
    out_dir: Path,
    *,
    vendor: str = "siemens",
    patient_name: str = "ANON^PATIENT",
    patient_id: str = "ANON0001",
    study_uid: str | None = None,
    slice_mm: float | None = None,
    oblique_deg: float = 0.0,
    descriptions: Mapping[str, str] | None = None,
    kinds: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    t1_technique: str = "se",
    contrast_tags: bool = True,
    study_datetime: datetime | None = None,
) -> StudyWritten:
    """Write one MR study: one series per entry of ``volumes``.

    Parameters
    ----------
    volumes
        key -> (array, nibabel RAS affine). The key is the series kind (one of :data:`KINDS`)
        unless ``kinds`` maps it to one, so a study can hold two series of one kind
        (``{"T1_pre": ..., "T1_post": ...}`` with ``kinds={"T1_pre": "T1", "T1_post": "T1"}``).
    vendor
        Naming and header style: "siemens", "ge", "philips" or "hitachi".
    slice_mm, oblique_deg
        Resampling applied to every volume (see :func:`series_grid`).
    descriptions
        key -> SeriesDescription, replacing the vendor-style one.
    overrides
        key -> {DICOM keyword: value}; a value of None deletes the attribute. Applied last to
        every instance of that series (SeriesNumber here also drives SeriesTime order).
    t1_technique
        "se" (2D spin echo T1) or "mprage" (3D IR-prepared gradient echo) for T1, T1c and T1c_MPR.
    contrast_tags
        False writes post-contrast series without ContrastBolus* attributes (only the
        description and the acquisition order tell).
    """
    vendor = vendor.lower()
    if vendor not in VENDORS:
        raise VolumeError(f"vendor must be one of {VENDORS}, got {vendor!r}")
    if t1_technique not in ("se", "mprage"):
        raise VolumeError(f"t1_technique must be 'se' or 'mprage', got {t1_technique!r}")
    if not volumes:
        raise VolumeError("no volumes given")
    kinds_map = {key: (kinds or {}).get(key, key) for key in volumes}
    for key, kind in kinds_map.items():
        if kind not in KINDS:
            raise VolumeError(f"series {key!r}: kind must be one of {KINDS}, got {kind!r}")
    overrides = overrides or {}
    descriptions = descriptions or {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid(entropy_srcs=[study_uid, "frame-of-reference"])
    start = study_datetime or datetime(2024, 3, 14, 9, 30, 0)
    manufacturer, model, software, field_t = _VENDOR_EQUIPMENT[vendor]
    keys = list(volumes)
    numbers = _series_numbers(keys, kinds_map, vendor)
    for key in keys:
        if "SeriesNumber" in overrides.get(key, {}):
            numbers[key] = int(overrides[key]["SeriesNumber"])
    order = sorted(keys, key=lambda k: (numbers[k], keys.index(k)))
    written: dict[str, SeriesWritten] = {}
    for rank, key in enumerate(order):
        kind = kinds_map[key]
        array, affine = volumes[key]
        series_time = start + timedelta(minutes=4 * rank + 1)
        written[key] = _write_series(
            key=key,
            kind=kind,
            array=np.asarray(array),
            affine_ras=np.asarray(affine, dtype=float),
            out_dir=out_dir,
            vendor=vendor,
            study_uid=study_uid,
            frame_uid=frame_uid,
            series_number=numbers[key],
            series_time=series_time,
            study_time=start,
            description=descriptions.get(key) or _description(kind, vendor, t1_technique),
            physics=_physics(kind, t1_technique),
            equipment=(manufacturer, model, software, field_t),
            patient=(patient_name, patient_id),
            slice_mm=slice_mm,
            oblique_deg=oblique_deg,
            override=overrides.get(key, {}),
            contrast=contrast_tags and kind in ("T1c", "T1c_MPR"),
            contrast_time=start + timedelta(minutes=4 * rank - 2),
        )
    return StudyWritten(
        study_uid=study_uid,
        series={key: written[key] for key in keys},
        frame_of_reference_uid=frame_uid,
    )


def _write_series(
    *,
    key: str,
    kind: str,
    array: np.ndarray,
    affine_ras: np.ndarray,
    out_dir: Path,
    vendor: str,
    study_uid: str,
    frame_uid: str,
    series_number: int,
    series_time: datetime,
    study_time: datetime,
    description: str,
    physics: dict[str, Any],
    equipment: tuple[str, str, str, float],
    patient: tuple[str, str],
    slice_mm: float | None,
    oblique_deg: float,
    override: Mapping[str, Any],
    contrast: bool,
    contrast_time: datetime,
) -> SeriesWritten:
    grid, affine = series_grid(array, affine_ras, slice_mm=slice_mm, oblique_deg=oblique_deg)
    if np.issubdtype(array.dtype, np.integer) and grid.dtype != array.dtype:
        grid = np.rint(grid)  # integer scanner data stays integer (RescaleSlope 1) after resampling
    stored, slope, intercept = _to_int16(grid)
    lps = _LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir = lps[:3, 0] / spacing[0]
    col_dir = lps[:3, 1] / spacing[1]
    normal = np.cross(row_dir, col_dir)
    n_cols, n_rows, n_slices = stored.shape
    series_uid = generate_uid(entropy_srcs=[study_uid, key, "series"])
    safe = re.sub(r"[^A-Za-z0-9]+", "_", description).strip("_")[:40] or kind
    series_dir = out_dir / f"{series_number:04d}_{safe}"
    series_dir.mkdir(parents=True, exist_ok=True)

    manufacturer, model, software, field_t = equipment
    seq_name = physics.pop("seq")
    image_type = _IMAGE_TYPE[vendor].get(kind, _IMAGE_TYPE[vendor]["_"])
    center = float(grid.max() + grid.min()) / 2
    width = max(float(grid.max() - grid.min()), 1.0)

    base = pydicom.Dataset()
    base.SpecificCharacterSet = "ISO_IR 100"
    base.ImageType = list(image_type)
    base.SOPClassUID = MRImageStorage
    base.StudyDate = study_time.strftime("%Y%m%d")
    base.SeriesDate = series_time.strftime("%Y%m%d")
    base.AcquisitionDate = series_time.strftime("%Y%m%d")
    base.ContentDate = series_time.strftime("%Y%m%d")
    base.StudyTime = study_time.strftime("%H%M%S")
    base.SeriesTime = series_time.strftime("%H%M%S")
    base.AcquisitionTime = series_time.strftime("%H%M%S")
    base.ContentTime = series_time.strftime("%H%M%S")
    base.AccessionNumber = ""
    base.Modality = "MR"
    base.Manufacturer = manufacturer
    base.InstitutionName = "GLIOMASEG TEST HOSPITAL"
    base.ReferringPhysicianName = ""
    base.StationName = f"{vendor.upper()}MR01"
    base.StudyDescription = "MRI BRAIN TUMOUR PROTOCOL"
    base.SeriesDescription = description
    base.ManufacturerModelName = model
    base.PatientName = patient[0]
    base.PatientID = patient[1]
    base.PatientBirthDate = ""
    base.PatientSex = "O"
    base.BodyPartExamined = "BRAIN"
    base.ScanningSequence = physics.pop("ScanningSequence")
    base.SequenceVariant = physics.pop("SequenceVariant")
    base.ScanOptions = "PFP" if vendor != "ge" else ["FAST_GEMS", "FILTERED_GEMS"]
    base.MRAcquisitionType = physics.pop("MRAcquisitionType", "2D")
    if vendor == "siemens":
        base.SequenceName = seq_name
    elif vendor == "philips":
        base.SequenceName = ""
    base.SliceThickness = _ds_number(spacing[2])
    base.RepetitionTime = _ds_number(physics.pop("RepetitionTime"))
    base.EchoTime = _ds_number(physics.pop("EchoTime"))
    ti = physics.pop("InversionTime", None)
    if ti is not None:
        base.InversionTime = _ds_number(ti)
    base.NumberOfAverages = "1"
    base.ImagingFrequency = _ds_number(42.577478 * field_t)
    base.ImagedNucleus = "1H"
    base.EchoNumbers = "1"
    base.MagneticFieldStrength = _ds_number(field_t)
    base.SpacingBetweenSlices = _ds_number(spacing[2])
    base.EchoTrainLength = str(int(physics.pop("EchoTrainLength")))
    base.DeviceSerialNumber = "12345"
    base.SoftwareVersions = software
    base.ProtocolName = description
    base.FlipAngle = _ds_number(physics.pop("FlipAngle"))
    base.PatientPosition = "HFS"
    if "DiffusionBValue" in physics:
        base.DiffusionBValue = physics.pop("DiffusionBValue")
    if contrast:
        base.ContrastBolusAgent = _AGENT[vendor]
        base.ContrastBolusRoute = "IV"
        base.ContrastBolusVolume = "7.5"
        base.ContrastBolusStartTime = contrast_time.strftime("%H%M%S")
    base.StudyInstanceUID = study_uid
    base.SeriesInstanceUID = series_uid
    base.StudyID = "1"
    base.SeriesNumber = series_number
    base.AcquisitionNumber = 1
    base.FrameOfReferenceUID = frame_uid
    base.PositionReferenceIndicator = ""
    base.ImageOrientationPatient = [_ds_number(v) for v in (*row_dir, *col_dir)]
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows = n_rows
    base.Columns = n_cols
    base.PixelSpacing = [_ds_number(spacing[1]), _ds_number(spacing[0])]
    base.BitsAllocated = 16
    base.BitsStored = 16
    base.HighBit = 15
    base.PixelRepresentation = 1
    base.WindowCenter = _ds_number(center)
    base.WindowWidth = _ds_number(width)
    base.RescaleIntercept = _ds_number(intercept)
    base.RescaleSlope = _ds_number(slope)
    base.RescaleType = "US"
    for keyword, value in override.items():
        if value is None:
            if keyword in base:
                delattr(base, keyword)
        else:
            setattr(base, keyword, value)

    # The shared attributes are encoded once, in the pieces between the per-instance ones
    # (elements must stay in tag order); each file is then a concatenation (about 10x faster
    # than Dataset.save_as per instance, byte-identical output).
    variable = [
        Tag("SOPInstanceUID"),
        Tag("InstanceNumber"),
        Tag("ImagePositionPatient"),
        Tag("SliceLocation"),
        Tag("PixelData"),
    ]
    for tag in variable:
        if tag in base:
            del base[tag]
    pieces = _encode_between(base, variable)
    sop_uids: list[str] = []
    paths: list[Path] = []
    for k in range(n_slices):
        sop_uid = generate_uid(entropy_srcs=[series_uid, str(k)])
        position = lps[:3, :3] @ np.array([0.0, 0.0, float(k)]) + lps[:3, 3]
        own = pydicom.Dataset()
        own.SOPInstanceUID = sop_uid
        own.InstanceNumber = k + 1
        own.ImagePositionPatient = [_ds_number(v) for v in position]
        own.SliceLocation = _ds_number(float(position @ normal))
        own.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2").tobytes()
        own["PixelData"].VR = "OW"
        chunks = [_preamble_and_meta(sop_uid)]
        for piece, tag in zip(pieces, variable, strict=False):
            chunks.append(piece)
            chunks.append(_encode(pydicom.Dataset({tag: own[tag]})))
        chunks.append(pieces[-1])
        path = series_dir / f"IM{k + 1:04d}.dcm"
        path.write_bytes(b"".join(chunks))
        sop_uids.append(sop_uid)
        paths.append(path)
    return SeriesWritten(
        role=kind if kind in ROLES else None,
        series_uid=series_uid,
        sop_uids=sop_uids,
        paths=paths,
        kind=kind,
        series_number=series_number,
        description=description,
        affine_ras=affine,
        shape=(n_cols, n_rows, n_slices),
    )


def _encode(ds: pydicom.Dataset) -> bytes:
    """Explicit VR little endian encoding of a dataset's elements (no preamble, no meta)."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return fp.getvalue()


def _encode_between(base: pydicom.Dataset, cuts: Sequence[Any]) -> list[bytes]:
    """The encoded elements of ``base`` before cuts[0], between each cut, and after the last."""
    pieces = []
    lower = -1
    for upper in [*cuts, None]:
        part = pydicom.Dataset()
        for elem in base:
            if elem.tag > lower and (upper is None or elem.tag < upper):
                part.add(elem)
        pieces.append(_encode(part))
        lower = upper if upper is not None else lower
    return pieces


def _preamble_and_meta(sop_uid: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_file_meta_info(fp, meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + fp.getvalue()


# --------------------------------------------------------------------------- real cases

_BRATS_SUFFIX = {"T1": "t1", "T1c": "t1ce", "T2": "t2", "FLAIR": "flair"}


def write_brats_case(
    case_dir: Path, out_dir: Path, *, roles: Sequence[str] = ROLES, **kw: Any
) -> StudyWritten:
    """Write the four BraTS NIfTI of ``case_dir`` (``<case>_{t1,t1ce,t2,flair}.nii.gz``) as a study.

    ``kw`` goes to :func:`write_study` (vendor, slice_mm, oblique_deg, ...). The segmentation
    (``<case>_seg.nii.gz``) is not written; resample it with ``series_grid(..., order=0)`` using
    the same ``slice_mm`` / ``oblique_deg`` to compare labels voxel for voxel.
    """
    import nibabel as nib

    case_dir = Path(case_dir)
    volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for role in roles:
        path = case_dir / f"{case_dir.name}_{_BRATS_SUFFIX[role]}.nii.gz"
        if not path.is_file():
            raise FileNotFoundError(f"BraTS case {case_dir.name}: {path.name} is missing")
        img = cast("nib.Nifti1Image", nib.load(path))
        volumes[role] = (np.asanyarray(img.dataobj), img.affine)
    kw.setdefault("patient_id", case_dir.name[:64])
    return write_study(volumes, out_dir, **kw)


_TCIA_NAME = re.compile(
    r"_(?P<desc>[A-Za-z0-9_]+?)_(?P<number>\d+)_(?P<seq>[a-z]+[23]d\d+[a-z]?(?:_\d+)?)"
    r"_(?P<tag>t1c|t1|t2|fla)\.nii(?:\.gz)?$"
)
_TCIA_ROLE = {"t1": "T1", "t1c": "T1c", "t2": "T2", "fla": "FLAIR"}


def parse_tcia_name(filename: str) -> dict[str, Any]:
    """Siemens series name parts from a TCIA native file name.

    ``..._Si_TCGA-FG-6692_MRHR_T1_AX_POST_GAD_SE_13_se2d1r_t1c.nii.gz`` ->
    ``{"role": "T1c", "description": "MRHR_T1_AX_POST_GAD_SE", "series_number": 13,
    "sequence_name": "*se2d1r"}``.
    """
    tail = filename.split("_Si_", 1)[-1]
    tail = "_" + tail.split("_", 1)[1] if tail.startswith("TCGA-") else "_" + tail
    m = _TCIA_NAME.search(tail)
    if m is None:
        raise VolumeError(
            f"TCIA file name {filename!r} does not end in "
            "<description>_<number>_<sequence>_<t1|t1c|t2|fla>.nii.gz"
        )
    return {
        "role": _TCIA_ROLE[m["tag"]],
        "description": m["desc"],
        "series_number": int(m["number"]),
        "sequence_name": "*" + m["seq"],
    }


def write_tcia_native_case(case_dir: Path, out_dir: Path, **kw: Any) -> StudyWritten:
    """Write the TCIA native case (four Siemens series, own grids, 5.5 mm, skull on) as a study.

    Series descriptions, series numbers and sequence names come from the file names; the
    series are keyed by role. ``kw`` goes to :func:`write_study` (vendor stays "siemens" unless
    given; ``overrides`` are merged over the ones from the names).
    """
    import nibabel as nib

    case_dir = Path(case_dir)
    volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    descriptions: dict[str, str] = {}
    overrides: dict[str, dict[str, Any]] = {}
    for path in sorted(case_dir.glob("*.nii*")):
        parts = parse_tcia_name(path.name)
        role = parts["role"]
        if role in volumes:
            raise VolumeError(f"two files for {role} in {case_dir}")
        img = cast("nib.Nifti1Image", nib.load(path))
        volumes[role] = (np.asanyarray(img.dataobj), img.affine)
        descriptions[role] = parts["description"]
        overrides[role] = {
            "SeriesNumber": parts["series_number"],
            "SequenceName": parts["sequence_name"],
        }
    missing = [r for r in ROLES if r not in volumes]
    if missing:
        raise FileNotFoundError(f"TCIA case {case_dir.name}: no file for {missing}")
    for key, extra in (kw.pop("overrides", None) or {}).items():
        overrides.setdefault(key, {}).update(extra)
    descriptions.update(kw.pop("descriptions", None) or {})
    kw.setdefault("patient_id", case_dir.name[:64])
    return write_study(volumes, out_dir, descriptions=descriptions, overrides=overrides, **kw)
