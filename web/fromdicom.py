"""Viewer volumes rebuilt from a job's DICOM: the reference series in the spool + the DICOM-SEG.

Used when the worker left no ``reference.nii.gz`` / ``labels.nii.gz`` in the job's outputs (older
jobs, or another writer): the web reads the same objects the PACS received, so what the viewer
shows is what was sent. The reference is read by the worker's own conversion, so single-frame and
Enhanced multi-frame series are both rebuilt on the grid the SEG was written on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from config.errors import PermanentError

# SegmentedPropertyType code value -> BraTS label (see worker/outputs/seg.py)
PROPERTY_TO_LABEL = {"6574001": 1, "79654002": 2, "C113842": 4}


def find_seg(files: Sequence[Path]) -> Path | None:
    """The first DICOM-SEG among ``files``."""
    import pydicom

    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
        except Exception:
            continue
        if ds.get("Modality") == "SEG":
            return path
    return None


def series_volume(
    files: Sequence[Path],
) -> tuple[np.ndarray, np.ndarray, list[str], list[int] | None]:
    """(image (cols, rows, n) float32, nibabel RAS affine, SOPInstanceUID per slice, frames).

    The series is read by the worker's own conversion (``worker.convert.convert_series``: the same
    slice order, geometry checks and rescale the SEG was written on), single-frame or Enhanced
    multi-frame. ``frames`` is the 1-based source frame of each slice for a multi-frame series
    (its SOPInstanceUID then repeats), None otherwise.
    """
    import SimpleITK as sitk

    from worker.convert import convert_series

    if not files:
        raise PermanentError("the reference series has no instances in the spool")
    volume = convert_series(list(files))
    image = volume.image
    lps = np.eye(4)
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    lps[:3, :3] = direction * np.asarray(image.GetSpacing(), float)[None, :]
    lps[:3, 3] = image.GetOrigin()
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)  # (n, rows, cols)
    return array.transpose(2, 1, 0), ras, list(volume.sop_uids), volume.frame_numbers


def seg_labels(
    seg_path: Path,
    sop_uids: Sequence[str],
    shape_nrc: tuple[int, int, int],
    frame_numbers: Sequence[int] | None = None,
) -> np.ndarray:
    """BraTS labels (n, rows, cols) of the SEG on the given source slices (empty where none).

    ``sop_uids[k]`` is the instance slice k lies on; for one multi-frame source ``frame_numbers[k]``
    is its 1-based frame.
    """
    import highdicom as hd

    seg = hd.seg.segread(seg_path)
    to_label = {}
    for item in seg.SegmentSequence:
        code = str(item.SegmentedPropertyTypeCodeSequence[0].CodeValue)
        if code in PROPERTY_TO_LABEL:
            to_label[int(item.SegmentNumber)] = PROPERTY_TO_LABEL[code]
    numbers = sorted(to_label)
    out = np.zeros(shape_nrc, np.uint8)
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    if frame_numbers is not None:
        if len(set(sop_uids)) != 1 or len(frame_numbers) != len(sop_uids):
            raise PermanentError(
                "a multi-frame reference must be one instance with one frame per slice"
            )
        if sop_uids[0] not in referenced:
            return out
        masks = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=sop_uids[0],
            source_frame_numbers=list(frame_numbers),
            segment_numbers=numbers,
            combine_segments=False,
            assert_missing_frames_are_empty=True,
            skip_overlap_checks=True,
        )  # (n, rows, cols, n_segments), slice k = frame_numbers[k]
        slots = list(range(len(frame_numbers)))
    else:
        present = [u for u in sop_uids if u in referenced]
        if not present:
            return out
        masks = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=present,
            segment_numbers=numbers,
            combine_segments=False,
            skip_overlap_checks=True,
        )  # (n_present, rows, cols, n_segments)
        index = {u: k for k, u in enumerate(sop_uids)}
        slots = [index[u] for u in present]
    for i, k in enumerate(slots):
        sl = np.zeros(shape_nrc[1:], np.uint8)
        for s, number in enumerate(numbers):
            sl[masks[i, ..., s] > 0] = to_label[number]
        out[k] = sl
    return out


def write_viewer_files(reference_files: Sequence[Path], seg_path: Path, dest: Path) -> None:
    """Write reference.nii.gz and labels.nii.gz (one grid) into ``dest`` from the DICOM objects."""
    import nibabel as nib

    from web.viewer import LABELS_FILE, REFERENCE_FILE

    image, affine, uids, frames = series_volume(reference_files)
    n_rc = (image.shape[2], image.shape[1], image.shape[0])
    labels = seg_labels(seg_path, uids, n_rc, frames).transpose(2, 1, 0)
    dest.mkdir(parents=True, exist_ok=True)
    tmp_ref, tmp_lab = dest / f".{REFERENCE_FILE}", dest / f".{LABELS_FILE}"
    nib.save(nib.Nifti1Image(image, affine), tmp_ref)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(labels), affine), tmp_lab)
    tmp_ref.replace(dest / REFERENCE_FILE)
    tmp_lab.replace(dest / LABELS_FILE)
