"""Slices of a job's reference volume and label map for the browser viewer (pure numpy + nibabel).

The worker leaves ``outputs_dir(job_id)/reference.nii.gz`` (the reference series, T1c) and
``outputs_dir(job_id)/labels.nii.gz`` (uint8 labels 0, 1 necrotic, 2 edema, 4 enhancing) on
one grid. Both are turned to RAS+ closest-canonical axes and cut along three planes, displayed
in radiological convention: patient right on the screen's left, anterior up (axial), superior
up (coronal, sagittal), anterior on the left (sagittal).
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from config.errors import PermanentError

REFERENCE_FILE = "reference.nii.gz"
LABELS_FILE = "labels.nii.gz"

# label value -> (region key, display name, RGB)
REGIONS: dict[int, tuple[str, str, tuple[int, int, int]]] = {
    1: ("necrotic", "Necrotic / non-enhancing core", (230, 60, 60)),
    2: ("edema", "Edema", (60, 200, 90)),
    4: ("enhancing", "Enhancing tumour", (250, 210, 40)),
}


class Plane(StrEnum):
    AXIAL = "axial"
    CORONAL = "coronal"
    SAGITTAL = "sagittal"


# plane -> voxel axis cut (RAS canonical), and the (row, column) voxel axes of the 2D image
_AXES: dict[Plane, tuple[int, int, int]] = {
    Plane.AXIAL: (2, 1, 0),
    Plane.CORONAL: (1, 2, 0),
    Plane.SAGITTAL: (0, 2, 1),
}


@dataclass(frozen=True)
class ViewerVolume:
    """A reference image scaled to uint8 and its labels, RAS canonical, same shape."""

    image_u8: np.ndarray  # (X, Y, Z) uint8
    labels: np.ndarray  # (X, Y, Z) uint8
    spacing_mm: tuple[float, float, float]

    def n_slices(self, plane: Plane) -> int:
        return int(self.image_u8.shape[_AXES[plane][0]])

    def describe(self) -> dict[str, object]:
        """What the viewer script needs: slice counts, pixel sizes, regions present."""
        planes = {}
        for plane, (cut, row, col) in _AXES.items():
            planes[plane.value] = {
                "slices": int(self.image_u8.shape[cut]),
                "rows": int(self.image_u8.shape[row]),
                "columns": int(self.image_u8.shape[col]),
                "row_mm": float(self.spacing_mm[row]),
                "column_mm": float(self.spacing_mm[col]),
                "initial": _initial_slice(self.labels, cut),
            }
        present = {int(v) for v in np.unique(self.labels)}
        regions = [
            {
                "value": value,
                "key": key,
                "name": name,
                "rgb": list(rgb),
                "present": value in present,
            }
            for value, (key, name, rgb) in REGIONS.items()
        ]
        return {
            "shape": list(self.image_u8.shape),
            "spacing_mm": list(self.spacing_mm),
            "planes": planes,
            "regions": regions,
        }


def _initial_slice(labels: np.ndarray, cut: int) -> int:
    """The slice through the tumour's centre of mass, else the middle slice."""
    other = tuple(a for a in range(3) if a != cut)
    per_slice = (labels > 0).sum(axis=other)
    total = per_slice.sum()
    if total > 0:
        return int(round(float((per_slice * np.arange(per_slice.size)).sum() / total)))
    return int(labels.shape[cut] // 2)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Window an MR image to 0-255 between the 0.5th and 99.5th percentiles of its non-zero voxels."""
    data = np.asarray(image, dtype=np.float32)
    nonzero = data[data != 0]
    if nonzero.size == 0:
        return np.zeros(data.shape, np.uint8)
    lo, hi = np.percentile(nonzero, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    scaled = (data - lo) / (hi - lo) * 255.0
    return np.clip(scaled, 0, 255).astype(np.uint8)


def cut(volume: np.ndarray, plane: Plane, index: int) -> np.ndarray:
    """A 2D slice of an RAS-canonical volume, oriented for display (rows top to bottom)."""
    axis, row, col = _AXES[plane]
    n = volume.shape[axis]
    if not 0 <= index < n:
        raise PermanentError(
            f"slice index must be in 0..{n - 1} for the {plane} plane; got {index}"
        )
    sl = np.take(volume, index, axis=axis)  # remaining axes in increasing order
    remaining = [a for a in range(3) if a != axis]
    if remaining.index(row) != 0:
        sl = sl.T
    # Rows: top = highest coordinate (anterior / superior). Columns: patient right (and, in the
    # sagittal plane, anterior) on the left, i.e. highest coordinate first.
    return np.ascontiguousarray(sl[::-1, ::-1])


def load_viewer_volume(outputs_dir: Path) -> ViewerVolume:
    """Read reference.nii.gz and labels.nii.gz, bring them to RAS canonical and one grid."""
    import nibabel as nib

    ref_path, lab_path = outputs_dir / REFERENCE_FILE, outputs_dir / LABELS_FILE
    for path in (ref_path, lab_path):
        if not path.is_file():
            raise FileNotFoundError(f"viewer file {path.name} is not in the job's outputs (yet)")
    ref = nib.as_closest_canonical(nib.load(ref_path))
    lab = nib.as_closest_canonical(nib.load(lab_path))
    image = np.asanyarray(ref.dataobj)
    if image.ndim == 4:
        image = image[..., 0]
    labels = np.asanyarray(lab.dataobj)
    if labels.ndim == 4:
        labels = labels[..., 0]
    if labels.shape != image.shape or not np.allclose(lab.affine, ref.affine, atol=1e-3):
        from nibabel.processing import resample_from_to

        lab = resample_from_to(lab, (image.shape, ref.affine), order=0)
        labels = np.asanyarray(lab.dataobj)
    labels = np.rint(labels).astype(np.uint8)
    zooms = tuple(float(z) for z in ref.header.get_zooms()[:3])
    return ViewerVolume(image_u8=to_uint8(image), labels=labels, spacing_mm=zooms)  # type: ignore[arg-type]


def png_bytes(array: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of a 2D uint8 array (label slices keep their values 0/1/2/4)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode="L").save(
        buf, format="PNG", compress_level=3
    )
    return buf.getvalue()


class VolumeCache:
    """A small LRU of loaded viewer volumes keyed by folder and file modification times."""

    def __init__(self, max_items: int = 4) -> None:
        self._items: OrderedDict[tuple[str, float, float], ViewerVolume] = OrderedDict()
        self._max = max_items
        self._lock = threading.Lock()

    def get(self, outputs_dir: Path) -> ViewerVolume:
        ref, lab = outputs_dir / REFERENCE_FILE, outputs_dir / LABELS_FILE
        try:
            key = (str(outputs_dir), ref.stat().st_mtime, lab.stat().st_mtime)
        except FileNotFoundError:
            raise FileNotFoundError("the job has no viewer files (yet)") from None
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        volume = load_viewer_volume(outputs_dir)
        with self._lock:
            self._items[key] = volume
            while len(self._items) > self._max:
                self._items.popitem(last=False)
        return volume
