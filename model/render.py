"""Writing a label map back onto an input NIfTI's own grid, and an overlay PNG (for ``segment``)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

COLOURS = {
    1: (255, 60, 60),
    2: (60, 220, 60),
    4: (255, 220, 0),
}  # necrotic red, edema green, enhancing yellow


def labels_to_native(labels_ras: np.ndarray, reference: Path) -> nib.Nifti1Image:
    """Labels in RAS closest-canonical order -> a NIfTI on ``reference``'s own voxel grid and affine."""
    ref: nib.Nifti1Image = nib.load(str(reference))  # type: ignore[assignment]
    canonical = nib.as_closest_canonical(ref)
    if labels_ras.shape != canonical.shape[:3]:
        raise ValueError(
            f"labels shape {labels_ras.shape} must match {reference.name} {canonical.shape[:3]}"
        )
    transform = ornt_transform(io_orientation(canonical.affine), io_orientation(ref.affine))
    native = np.ascontiguousarray(apply_orientation(labels_ras, transform)).astype(np.uint8)
    header = ref.header.copy()
    header.set_data_dtype(np.uint8)
    img = nib.Nifti1Image(native, ref.affine, header)
    img.header["scl_slope"] = 1
    img.header["scl_inter"] = 0
    return img


def write_labels_like(labels_ras: np.ndarray, reference: Path, out: Path) -> Path:
    nib.save(labels_to_native(labels_ras, reference), str(out))
    return out


def _window(img: np.ndarray) -> np.ndarray:
    nz = img[img > 0]
    lo, hi = np.percentile(nz, (1, 99)) if nz.size else (0.0, 1.0)
    return (np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def overlay_png(
    t1c: np.ndarray, flair: np.ndarray, labels: np.ndarray, out: Path, n_slices: int = 3
) -> Path:
    """Axial slices (RAS arrays, third axis superior) through the tumour: T1c and FLAIR with labels."""
    from PIL import Image

    tumour = labels > 0
    if tumour.any():
        zs = np.flatnonzero(tumour.any(axis=(0, 1)))
        picks = [int(zs[int(i)]) for i in np.linspace(0, len(zs) - 1, n_slices + 2)[1:-1]]
        per_slice = tumour.sum(axis=(0, 1))
        picks[len(picks) // 2] = int(per_slice.argmax())
    else:
        picks = [int(t1c.shape[2] * f) for f in np.linspace(0.3, 0.7, n_slices)]
    rows = []
    for z in picks:
        tiles = []
        for vol in (t1c, flair):
            g = _window(vol[:, :, z])
            rgb = np.stack([g, g, g], axis=-1).astype(np.float32)
            lab = labels[:, :, z]
            for value, colour in COLOURS.items():
                m = lab == value
                rgb[m] = 0.5 * rgb[m] + 0.5 * np.array(colour, dtype=np.float32)
            # RAS (x right, y anterior) -> radiological display: rows anterior at top, patient right on the left
            tiles.append(np.flipud(np.transpose(rgb, (1, 0, 2))).astype(np.uint8))
        rows.append(np.concatenate(tiles, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)
    return out
