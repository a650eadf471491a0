"""Viewer volumes rebuilt from a job's DICOM: the reference series in the spool + the DICOM-SEG.

Used when the worker left no ``reference.nii.gz`` / ``labels.nii.gz`` in the job's outputs (older
jobs, or another writer): the web reads the same objects the PACS received, so what the viewer
shows is what was sent. Enhanced multi-frame references are not handled here.
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


def series_volume(files: Sequence[Path]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(image (cols, rows, n) float32, nibabel RAS affine, SOPInstanceUIDs in slice order)."""
    import pydicom

    datasets = [pydicom.dcmread(p) for p in files]
    if not datasets:
        raise PermanentError("the reference series has no instances in the spool")
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    datasets.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))
    pixels = []
    for d in datasets:
        arr = d.pixel_array.astype(np.float32)
        arr = arr * float(d.get("RescaleSlope", 1) or 1) + float(d.get("RescaleIntercept", 0) or 0)
        pixels.append(arr)
    stack = np.stack(pixels)  # (n, rows, cols)
    row_mm, col_mm = (float(x) for x in datasets[0].PixelSpacing)
    first = np.asarray(datasets[0].ImagePositionPatient, float)
    if len(datasets) > 1:
        last = np.asarray(datasets[-1].ImagePositionPatient, float)
        step = (last - first) / (len(datasets) - 1)
    else:
        step = normal * float(datasets[0].get("SliceThickness", 1) or 1)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_mm  # voxel i = column index
    lps[:3, 1] = col_dir * row_mm  # voxel j = row index
    lps[:3, 2] = step
    lps[:3, 3] = first
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return stack.transpose(2, 1, 0), ras, [str(d.SOPInstanceUID) for d in datasets]


def seg_labels(
    seg_path: Path, sop_uids: Sequence[str], shape_nrc: tuple[int, int, int]
) -> np.ndarray:
    """BraTS labels (n, rows, cols) of the SEG on the given source instances (empty where none)."""
    import highdicom as hd

    seg = hd.seg.segread(seg_path)
    to_label = {}
    for item in seg.SegmentSequence:
        code = str(item.SegmentedPropertyTypeCodeSequence[0].CodeValue)
        if code in PROPERTY_TO_LABEL:
            to_label[int(item.SegmentNumber)] = PROPERTY_TO_LABEL[code]
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    present = [u for u in sop_uids if u in referenced]
    out = np.zeros(shape_nrc, np.uint8)
    if not present:
        return out
    masks = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=present,
        segment_numbers=sorted(to_label),
        combine_segments=False,
        skip_overlap_checks=True,
    )  # (n_present, rows, cols, n_segments)
    index = {u: k for k, u in enumerate(sop_uids)}
    for i, uid in enumerate(present):
        sl = np.zeros(shape_nrc[1:], np.uint8)
        for s, number in enumerate(sorted(to_label)):
            sl[masks[i, ..., s] > 0] = to_label[number]
        out[index[uid]] = sl
    return out


def write_viewer_files(reference_files: Sequence[Path], seg_path: Path, dest: Path) -> None:
    """Write reference.nii.gz and labels.nii.gz (one grid) into ``dest`` from the DICOM objects."""
    import nibabel as nib

    from web.viewer import LABELS_FILE, REFERENCE_FILE

    image, affine, uids = series_volume(reference_files)
    n_rc = (image.shape[2], image.shape[1], image.shape[0])
    labels = seg_labels(seg_path, uids, n_rc).transpose(2, 1, 0)
    dest.mkdir(parents=True, exist_ok=True)
    tmp_ref, tmp_lab = dest / f".{REFERENCE_FILE}", dest / f".{LABELS_FILE}"
    nib.save(nib.Nifti1Image(image, affine), tmp_ref)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(labels), affine), tmp_lab)
    tmp_ref.replace(dest / REFERENCE_FILE)
    tmp_lab.replace(dest / LABELS_FILE)
