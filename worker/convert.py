"""Convert one DICOM MR series into a volume that keeps its DICOM geometry.

The result is a :class:`Volume`: a SimpleITK image in LPS physical space on the series' own
grid (x = column index along the first ImageOrientationPatient vector, y = row index along
the second, z = slice index along the slice normal ``row x col``), plus the source datasets
and SOP Instance UIDs in the image's z order. Slices are ordered by ascending projection of
ImagePositionPatient on the slice normal, so ``image[:, :, k]`` is drawn on ``datasets[k]``;
this is what map-back and the DICOM-SEG writer need.

Single-frame series go through dicom2nifti (``dicom_array_to_nifti(..., reorient_nifti=False)``,
which keeps DICOM LPS axes and slice order; TOOLCHAIN.md). The geometry checks are done here
first, on the headers, so that every rejection names the rule and the value received.
Enhanced (multi-frame) MR is stacked here from the per-frame functional groups: dicom2nifti's
multi-frame path sorts the frame block by its own stack logic while its affine comes from the
first and last frame in file order, so the frame-to-position link would not be checked.

Rejected with :class:`config.errors.ConversionError` (permanent): unreadable or corrupt files,
several series mixed, non-image objects, Siemens MOSAIC and other 4D series (fMRI, DWI,
perfusion, multi-echo), fewer than :data:`MIN_SLICES` slices, mixed slice orientations (a
localizer of at most 3 slices inside a series is dropped instead), non-uniform slice spacing
(missing slices), sheared stacks (gantry tilt) and slices that differ in size or pixel spacing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from config.errors import ConversionError
from config.logs import ref

log = logging.getLogger(__name__)

MIN_SLICES = 3
ORIENTATION_TOL = 1e-3  # max abs difference between ImageOrientationPatient components
SPACING_REL_TOL = 0.05  # slice spacing may vary by 5 % of the median ...
SPACING_ABS_TOL_MM = 0.1  # ... or 0.1 mm, whichever is larger
MAX_SHEAR_DEG = 0.5  # angle between the slice-to-slice step and the slice normal
MAX_LOCALIZER_SLICES = 3  # an orientation group this small inside a series is dropped
ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
}


@dataclass(frozen=True, eq=False)
class Volume:
    """One converted series on its native grid.

    Attributes
    ----------
    image
        float32 SimpleITK image in LPS physical space. Direction columns are the row
        direction, the column direction and the slice normal (their cross product).
    sop_uids
        SOPInstanceUID of the instance each z slice comes from (repeated for a multi-frame one).
    datasets
        The source datasets (with pixel data), same order as ``sop_uids``.
    series_uid
        SeriesInstanceUID.
    frame_numbers
        For a multi-frame source, the 1-based frame number of each z slice; None otherwise.
    notes
        Human-readable remarks on what was tolerated (e.g. a dropped localizer).
    """

    image: sitk.Image
    sop_uids: list[str]
    datasets: list[pydicom.Dataset]
    series_uid: str
    frame_numbers: list[int] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def frame_of_reference_uid(self) -> str | None:
        value = self.datasets[0].get("FrameOfReferenceUID")
        return str(value) if value else None

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.image.GetSpacing())  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(n_slices, Rows, Columns), the numpy order of the image."""
        x, y, z = self.image.GetSize()
        return (z, y, x)


@dataclass(frozen=True)
class _Slice:
    """One 2D image of the series: a single-frame instance or one frame of a multi-frame one."""

    ds: pydicom.Dataset
    frame: int | None  # 0-based frame index for multi-frame sources
    position: np.ndarray  # ImagePositionPatient (LPS, mm)
    row_dir: np.ndarray  # ImageOrientationPatient[:3]
    col_dir: np.ndarray  # ImageOrientationPatient[3:]
    pixel_spacing: tuple[float, float]  # (between rows, between columns) in mm
    rows: int
    columns: int


def convert_series(files: Sequence[Path], work_dir: Path | None = None) -> Volume:
    """Read the files of one series and build its :class:`Volume`.

    Parameters
    ----------
    files
        The instances of one series (any order, any file names).
    work_dir
        Scratch folder of the job; not needed by the in-memory conversion (kept for the contract).

    Raises
    ------
    ConversionError
        When the series cannot be turned into one 3D volume; the message says why.
    """
    t0 = time.perf_counter()
    if not files:
        raise ConversionError("a series needs at least one file; received none")
    datasets = _read_all([Path(f) for f in files])
    series_uid = _single_series(datasets)

    enhanced = [ds for ds in datasets if _is_multiframe(ds)]
    if enhanced:
        if len(datasets) != 1:
            raise ConversionError(
                f"series {ref(series_uid)}: a multi-frame series must be one instance; "
                f"received {len(enhanced)} multi-frame and {len(datasets) - len(enhanced)} other files"
            )
        slices = _frames_of(datasets[0], series_uid)
    else:
        slices = [_slice_of(ds, series_uid) for ds in datasets]

    slices, notes = _drop_localizers(slices, series_uid)
    _check_same_plane_geometry(slices, series_uid)
    slices, normal, spacing_z = _sort_and_check_spacing(slices, series_uid)

    if enhanced:
        array = _stack_frames(datasets[0], slices)
        frame_numbers: list[int] | None = [int(s.frame) + 1 for s in slices]  # type: ignore[arg-type]
    else:
        array = _stack_with_dicom2nifti(slices, normal, spacing_z, series_uid)
        frame_numbers = None

    first = slices[0]
    image = sitk.GetImageFromArray(array.astype(np.float32, copy=False))
    image.SetSpacing((first.pixel_spacing[1], first.pixel_spacing[0], spacing_z))
    image.SetOrigin(tuple(float(v) for v in first.position))
    direction = np.column_stack([first.row_dir, first.col_dir, normal])
    image.SetDirection(tuple(float(v) for v in direction.ravel()))

    volume = Volume(
        image=image,
        sop_uids=[str(s.ds.SOPInstanceUID) for s in slices],
        datasets=[s.ds for s in slices],
        series_uid=series_uid,
        frame_numbers=frame_numbers,
        notes=notes,
    )
    log.info(
        "converted series",
        extra={
            "series_ref": ref(series_uid),
            "shape": list(volume.shape),
            "spacing_mm": [round(s, 3) for s in volume.spacing_mm],
            "elapsed_s": round(time.perf_counter() - t0, 3),
        },
    )
    return volume


# ----------------------------------------------------------------------------------------------
# reading


def _read_all(paths: list[Path]) -> list[pydicom.Dataset]:
    datasets: list[pydicom.Dataset] = []
    seen: set[str] = set()
    for path in sorted(paths):
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            raise ConversionError(
                f"file {path.name} is not a readable DICOM file ({type(exc).__name__}: {exc})"
            ) from exc
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            raise ConversionError(
                f"file {path.name} holds no image (SOP class {ds.get('SOPClassUID', '?')}); "
                "a series to convert must contain images only"
            )
        _check_pixel_length(ds, path)
        sop = str(ds.get("SOPInstanceUID", ""))
        if sop in seen:  # the same instance twice: keep one
            continue
        seen.add(sop)
        datasets.append(ds)
    return datasets


def _check_pixel_length(ds: pydicom.Dataset, path: Path) -> None:
    """A truncated file (interrupted transfer) shows as short native pixel data."""
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None or ts.is_compressed or "PixelData" not in ds:
        return
    try:
        expected = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(ds.get("SamplesPerPixel", 1) or 1)
            * int(ds.get("NumberOfFrames", 1) or 1)
            * int(ds.BitsAllocated)
            + 7
        ) // 8
    except (AttributeError, TypeError, ValueError) as exc:
        raise ConversionError(
            f"file {path.name}: the image pixel module is incomplete ({exc})"
        ) from exc
    received = len(ds.PixelData)
    if received < expected:
        raise ConversionError(
            f"file {path.name} is truncated: pixel data must hold {expected} bytes; "
            f"it holds {received}"
        )


def _single_series(datasets: list[pydicom.Dataset]) -> str:
    uids = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(uids) != 1 or "" in uids:
        raise ConversionError(
            f"the files of one conversion must belong to one series; found {len(uids)} "
            "SeriesInstanceUID values (or a missing one)"
        )
    return uids.pop()


def _is_multiframe(ds: pydicom.Dataset) -> bool:
    if str(ds.get("SOPClassUID", "")) in ENHANCED_SOP_CLASSES:
        return True
    return int(ds.get("NumberOfFrames", 1) or 1) > 1


def _float_list(value: object, n: int, what: str, series_uid: str) -> np.ndarray:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise ConversionError(
            f"series {ref(series_uid)}: {what} must be {n} numbers; received {value!r}"
        ) from exc
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise ConversionError(
            f"series {ref(series_uid)}: {what} must be {n} finite numbers; received {value!r}"
        )
    return arr


def _plane(
    iop: object, ipp: object, spacing: object, series_uid: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    if iop is None or ipp is None or spacing is None:
        missing = [
            name
            for name, v in (
                ("ImageOrientationPatient", iop),
                ("ImagePositionPatient", ipp),
                ("PixelSpacing", spacing),
            )
            if v is None
        ]
        raise ConversionError(
            f"series {ref(series_uid)}: every image needs ImageOrientationPatient, "
            f"ImagePositionPatient and PixelSpacing; missing {', '.join(missing)}"
        )
    o = _float_list(iop, 6, "ImageOrientationPatient", series_uid)
    p = _float_list(ipp, 3, "ImagePositionPatient", series_uid)
    s = _float_list(spacing, 2, "PixelSpacing", series_uid)
    row_dir, col_dir = o[:3], o[3:]
    for name, v in (("row", row_dir), ("column", col_dir)):
        norm = np.linalg.norm(v)
        if not 0.99 < norm < 1.01:
            raise ConversionError(
                f"series {ref(series_uid)}: ImageOrientationPatient {name} vector must have unit "
                f"length; received length {norm:.4f}"
            )
    row_dir, col_dir = row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir)
    if abs(float(row_dir @ col_dir)) > 1e-3:
        raise ConversionError(
            f"series {ref(series_uid)}: ImageOrientationPatient vectors must be orthogonal; "
            f"their dot product is {float(row_dir @ col_dir):.4f}"
        )
    if np.any(s <= 0):
        raise ConversionError(
            f"series {ref(series_uid)}: PixelSpacing must be positive; received {list(s)}"
        )
    return row_dir, col_dir, p, (float(s[0]), float(s[1]))


def _slice_of(ds: pydicom.Dataset, series_uid: str) -> _Slice:
    image_type = [str(v).upper() for v in ds.get("ImageType", [])]
    if "MOSAIC" in image_type:
        raise ConversionError(
            f"series {ref(series_uid)}: Siemens MOSAIC images (ImageType {'/'.join(image_type)}) "
            "hold EPI (fMRI/diffusion) volumes; a structural 3D series is required"
        )
    row_dir, col_dir, pos, spacing = _plane(
        ds.get("ImageOrientationPatient"),
        ds.get("ImagePositionPatient"),
        ds.get("PixelSpacing"),
        series_uid,
    )
    return _Slice(ds, None, pos, row_dir, col_dir, spacing, int(ds.Rows), int(ds.Columns))


def _frames_of(ds: pydicom.Dataset, series_uid: str) -> list[_Slice]:
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared0 = shared[0] if shared else pydicom.Dataset()
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame or len(per_frame) != n_frames:
        raise ConversionError(
            f"series {ref(series_uid)}: a multi-frame image needs one PerFrameFunctionalGroupsSequence "
            f"item per frame; received {len(per_frame) if per_frame else 0} items for {n_frames} frames"
        )

    def group(frame_item: pydicom.Dataset, seq: str, attr: str) -> object:
        for source in (frame_item, shared0, ds):
            if seq in source and source[seq].value:
                item = source[seq].value[0]
                if attr in item:
                    return item[attr].value
        return ds.get(attr)

    slices = []
    for index, item in enumerate(per_frame):
        row_dir, col_dir, pos, spacing = _plane(
            group(item, "PlaneOrientationSequence", "ImageOrientationPatient"),
            group(item, "PlanePositionSequence", "ImagePositionPatient"),
            group(item, "PixelMeasuresSequence", "PixelSpacing"),
            series_uid,
        )
        slices.append(
            _Slice(ds, index, pos, row_dir, col_dir, spacing, int(ds.Rows), int(ds.Columns))
        )
    return slices


# ----------------------------------------------------------------------------------------------
# geometry checks


def _drop_localizers(slices: list[_Slice], series_uid: str) -> tuple[list[_Slice], list[str]]:
    groups: list[list[_Slice]] = []
    for s in slices:
        orient = np.concatenate([s.row_dir, s.col_dir])
        for g in groups:
            if (
                np.max(np.abs(np.concatenate([g[0].row_dir, g[0].col_dir]) - orient))
                < ORIENTATION_TOL
            ):
                g.append(s)
                break
        else:
            groups.append([s])
    if len(groups) == 1:
        return slices, []
    groups.sort(key=len, reverse=True)
    small = [g for g in groups[1:] if len(g) <= MAX_LOCALIZER_SLICES]
    if len(small) == len(groups) - 1 and len(groups[0]) > MAX_LOCALIZER_SLICES:
        dropped = sum(len(g) for g in small)
        note = f"dropped {dropped} localizer image(s) with another orientation"
        log.warning(
            "dropping localizer images", extra={"series_ref": ref(series_uid), "n": dropped}
        )
        return groups[0], [note]
    raise ConversionError(
        f"series {ref(series_uid)}: all images of a series must share one slice orientation; "
        f"found {len(groups)} orientations with {', '.join(str(len(g)) for g in groups)} images"
    )


def _check_same_plane_geometry(slices: list[_Slice], series_uid: str) -> None:
    sizes = {(s.rows, s.columns) for s in slices}
    if len(sizes) != 1:
        raise ConversionError(
            f"series {ref(series_uid)}: all images must have the same Rows x Columns; "
            f"found {sorted(sizes)}"
        )
    spacings = np.array([s.pixel_spacing for s in slices])
    if np.ptp(spacings, axis=0).max() > 1e-3:
        raise ConversionError(
            f"series {ref(series_uid)}: all images must have the same PixelSpacing; found values "
            f"from {spacings.min(axis=0).round(4).tolist()} to {spacings.max(axis=0).round(4).tolist()} mm"
        )


def _sort_and_check_spacing(
    slices: list[_Slice], series_uid: str
) -> tuple[list[_Slice], np.ndarray, float]:
    n = len(slices)
    normal = np.cross(slices[0].row_dir, slices[0].col_dir)
    normal /= np.linalg.norm(normal)
    proj = np.array([float(s.position @ normal) for s in slices])
    order = np.argsort(proj, kind="stable")
    slices = [slices[i] for i in order]
    proj = proj[order]

    distinct = np.unique(np.round(proj, 2))
    if len(distinct) < n:
        per_position = n / max(len(distinct), 1)
        if len(distinct) > 0 and n % len(distinct) == 0 and per_position > 1:
            raise ConversionError(
                f"series {ref(series_uid)}: a structural series has one image per slice position; "
                f"found {n} images at {len(distinct)} positions ({int(per_position)} per position: "
                "a 4D series such as fMRI, diffusion, perfusion or multi-echo)"
            )
        raise ConversionError(
            f"series {ref(series_uid)}: a structural series has one image per slice position; "
            f"found {n} images at {len(distinct)} distinct positions"
        )
    if n < MIN_SLICES:
        raise ConversionError(
            f"series {ref(series_uid)}: a volume needs at least {MIN_SLICES} slices; received {n}"
        )

    gaps = np.diff(proj)
    median = float(np.median(gaps))
    tol = max(SPACING_ABS_TOL_MM, SPACING_REL_TOL * median)
    worst = int(np.argmax(np.abs(gaps - median)))
    if abs(gaps[worst] - median) > tol:
        ratio = gaps[worst] / median
        hint = f" (about {round(ratio) - 1} missing slice(s)?)" if ratio > 1.5 else ""
        raise ConversionError(
            f"series {ref(series_uid)}: slice spacing must be uniform (within {tol:.2f} mm); "
            f"median {median:.3f} mm but {gaps[worst]:.3f} mm between slices {worst} and "
            f"{worst + 1}{hint}"
        )

    step = (slices[-1].position - slices[0].position) / (n - 1)
    cos = float(step @ normal) / float(np.linalg.norm(step))
    shear_deg = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    if shear_deg > MAX_SHEAR_DEG:
        raise ConversionError(
            f"series {ref(series_uid)}: slices must be stacked along their normal (no gantry tilt "
            f"or sheared stack, at most {MAX_SHEAR_DEG} degrees); the stack is sheared by "
            f"{shear_deg:.2f} degrees"
        )
    return slices, normal, float(step @ normal)


# ----------------------------------------------------------------------------------------------
# pixel data


def _rescale(ds: pydicom.Dataset, item: pydicom.Dataset | None = None) -> tuple[float, float]:
    for source in (item, ds.get("SharedFunctionalGroupsSequence", [None])[0]):
        if source is not None and "PixelValueTransformationSequence" in source:
            t = source.PixelValueTransformationSequence[0]
            return float(t.get("RescaleSlope", 1) or 1), float(t.get("RescaleIntercept", 0) or 0)
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)


def _stack_frames(ds: pydicom.Dataset, slices: list[_Slice]) -> np.ndarray:
    try:
        frames = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for undecodable data
        raise ConversionError(
            f"series {ref(str(ds.SeriesInstanceUID))}: pixel data cannot be decoded "
            f"(transfer syntax {ds.file_meta.get('TransferSyntaxUID', '?')}: {exc})"
        ) from exc
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3:
        raise ConversionError(
            f"series {ref(str(ds.SeriesInstanceUID))}: only monochrome images are supported; "
            f"pixel array has shape {frames.shape}"
        )
    out = np.empty((len(slices), frames.shape[1], frames.shape[2]), dtype=np.float32)
    per_frame = ds.PerFrameFunctionalGroupsSequence
    for k, s in enumerate(slices):
        slope, intercept = _rescale(ds, per_frame[s.frame])
        out[k] = frames[s.frame] * slope + intercept
    return out


# What dicom2nifti reads of a single-frame image. It deep-copies every dataset it is given
# (3 s for 130 GE slices with their private tags), so it gets lean copies that share elements.
_D2N_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "Modality",
    "Manufacturer", "ImageType", "ImageOrientationPatient", "ImagePositionPatient",
    "PixelSpacing", "SliceThickness", "SpacingBetweenSlices", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
    "PhotometricInterpretation", "PlanarConfiguration", "RescaleSlope", "RescaleIntercept",
    "RescaleType", "ModalityLUTSequence", "NumberOfFrames", "RepetitionTime", "EchoTime",
    "InstanceNumber", "AcquisitionNumber", "EchoNumbers", "TemporalPositionIdentifier",
    "NumberOfTemporalPositions", "PixelData",
)  # fmt: skip


def _lean_copy(ds: pydicom.Dataset) -> pydicom.Dataset:
    lean = pydicom.Dataset()
    for keyword in _D2N_KEYWORDS:
        if keyword in ds:
            lean[keyword] = ds[keyword]
    lean.file_meta = ds.file_meta
    lean.set_original_encoding(*ds.original_encoding)
    return lean


def _stack_with_dicom2nifti(
    slices: list[_Slice], normal: np.ndarray, spacing_z: float, series_uid: str
) -> np.ndarray:
    """Pixel data via dicom2nifti, re-indexed to our slice order; returns (z, rows, cols)."""
    import dicom2nifti.convert_dicom as convert_dicom
    import dicom2nifti.exceptions as d2n_errors
    import dicom2nifti.settings as d2n_settings

    # The checks above are stricter and give better messages; dicom2nifti's own would
    # only repeat them (and its slice-increment check is relative to the first gap).
    d2n_settings.disable_validate_slice_increment()
    d2n_settings.disable_validate_orthogonal()
    try:
        result = convert_dicom.dicom_array_to_nifti(
            [_lean_copy(s.ds) for s in slices], None, reorient_nifti=False
        )
    except (d2n_errors.ConversionValidationError, d2n_errors.ConversionError) as exc:
        raise ConversionError(f"series {ref(series_uid)}: dicom2nifti rejected it: {exc}") from exc
    except Exception as exc:  # a corrupt or undecodable pixel stream surfaces here
        raise ConversionError(
            f"series {ref(series_uid)}: pixel data cannot be read ({type(exc).__name__}: {exc})"
        ) from exc
    nii = result["NII"]
    data = np.asarray(nii.dataobj)
    if data.ndim != 3:
        raise ConversionError(
            f"series {ref(series_uid)}: a structural series converts to a 3D volume; dicom2nifti "
            f"produced shape {data.shape}"
        )
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(nii.affine, dtype=np.float64)
    # Map each of our (row, column, slice) axes to a dicom2nifti voxel axis and direction.
    first = slices[0]
    wanted = [first.row_dir, first.col_dir, normal]
    axes, flips = [], []
    for vec in wanted:
        cos = [float(lps[:3, a] @ vec) / float(np.linalg.norm(lps[:3, a])) for a in range(3)]
        a = int(np.argmax(np.abs(cos)))
        if abs(cos[a]) < 0.999:
            raise ConversionError(
                f"series {ref(series_uid)}: dicom2nifti's volume axes do not match the DICOM "
                "orientation (internal check)"
            )
        axes.append(a)
        flips.append(cos[a] < 0)
    if sorted(axes) != [0, 1, 2]:
        raise ConversionError(
            f"series {ref(series_uid)}: dicom2nifti's volume axes are degenerate (internal check)"
        )
    data = np.transpose(data, axes)  # now (col, row, slice) in our axis directions
    for axis, flip in enumerate(flips):
        if flip:
            data = np.flip(data, axis)
    # The corner voxel must sit at the first slice's ImagePositionPatient.
    index = [(data.shape[i] - 1 if flips[i] else 0) for i in range(3)]
    src_index = np.zeros(3)
    for ours, theirs in enumerate(axes):
        src_index[theirs] = index[ours]
    corner = (lps @ np.append(src_index, 1.0))[:3]
    if np.linalg.norm(corner - first.position) > 0.05 * max(spacing_z, 1.0):
        raise ConversionError(
            f"series {ref(series_uid)}: dicom2nifti's volume origin is "
            f"{np.linalg.norm(corner - first.position):.2f} mm away from the first slice "
            "(internal check)"
        )
    if data.shape[2] != len(slices) or data.shape[:2] != (first.columns, first.rows):
        raise ConversionError(
            f"series {ref(series_uid)}: dicom2nifti returned shape {data.shape}, expected "
            f"{(first.columns, first.rows, len(slices))} (internal check)"
        )
    return np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
