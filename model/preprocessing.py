"""Normalisation and resampling shared by training (``gliomaseg prepare``) and serving.

Imports only numpy and torch, so the training core and the service run the very same maths.
Convention: arrays are indexed in RAS+ closest-canonical voxel order (``nibabel.as_closest_canonical``),
``spacing_mm`` gives the voxel size along those three axes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CHANNELS: tuple[str, ...] = ("T1", "T1c", "T2", "FLAIR")
REGIONS: tuple[str, ...] = ("WT", "TC", "ET")
# internal label convention (BraTS 2017-2021): 1 necrotic/non-enhancing core, 2 edema, 4 enhancing
LABELS: dict[int, str] = {1: "necrotic", 2: "edema", 4: "enhancing"}
CROP_MARGIN_MM = 4.0
QUANT_SCALE = 20.0  # int8 = round(z * 20): z-scores in [-6.35, 6.35], steps of 0.05
CLIP_Z = 6.3


@dataclass(frozen=True)
class Preprocessed:
    """Model input for one case and what is needed to map a prediction back."""

    image: (
        np.ndarray
    )  # float32 (4, X, Y, Z) at target spacing, z-scored inside the brain, 0 outside
    mask: np.ndarray  # bool (X, Y, Z) brain mask at target spacing
    box: tuple[slice, slice, slice]  # crop box on the native grid
    native_shape: tuple[int, int, int]
    cropped_shape: tuple[int, int, int]  # native voxels inside the box


def brain_mask_of(images: Mapping[str, np.ndarray]) -> np.ndarray:
    """Voxels where any sequence is non-zero (BraTS images are skull-stripped with background 0)."""
    mask = np.zeros(next(iter(images.values())).shape, dtype=bool)
    for arr in images.values():
        mask |= arr != 0
    return mask


def crop_box(
    mask: np.ndarray, spacing_mm: tuple[float, float, float], margin_mm: float = CROP_MARGIN_MM
) -> tuple[slice, slice, slice]:
    """Bounding box of ``mask`` grown by ``margin_mm`` on each side (whole volume when empty)."""
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)  # type: ignore[return-value]
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        m = int(np.ceil(margin_mm / spacing_mm[axis]))
        box.append(slice(max(0, idx[0] - m), min(mask.shape[axis], idx[-1] + 1 + m)))
    return tuple(box)  # type: ignore[return-value]


def target_shape(
    shape: tuple[int, ...], spacing_mm: tuple[float, ...], target_mm: tuple[float, ...]
) -> tuple[int, int, int]:
    return tuple(
        max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing_mm, target_mm, strict=False)
    )  # type: ignore[return-value]


def resample(
    array: np.ndarray | torch.Tensor, shape: tuple[int, int, int], *, mode: str = "trilinear"
):
    """Resample a (C, X, Y, Z) or (X, Y, Z) array to ``shape`` (trilinear or nearest).

    Voxel centres are aligned the way ``align_corners=False`` does (the field of view is kept).
    Returns the same kind (numpy or torch) as given.
    """
    is_np = isinstance(array, np.ndarray)
    t: torch.Tensor = torch.from_numpy(np.ascontiguousarray(array)) if is_np else array  # type: ignore[assignment]
    squeeze = t.ndim == 3
    if squeeze:
        t = t[None]
    if tuple(t.shape[1:]) == tuple(shape):
        out = t.float() if mode != "nearest" else t
    elif mode == "nearest":
        out = F.interpolate(t[None].float(), size=shape, mode="nearest-exact")[0].to(t.dtype)
    else:
        out = F.interpolate(t[None].float(), size=shape, mode="trilinear", align_corners=False)[0]
    if squeeze:
        out = out[0]
    return out.numpy() if is_np else out


def zscore(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Z-score one sequence over the brain voxels; 0 outside the brain; clipped to +-CLIP_Z."""
    out = np.zeros(image.shape, dtype=np.float32)
    if not mask.any():
        return out
    values = image[mask].astype(np.float64)
    std = values.std()
    out[mask] = ((values - values.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
    np.clip(out, -CLIP_Z, CLIP_Z, out=out)
    return out


def preprocess(
    images: Mapping[str, np.ndarray],
    spacing_mm: tuple[float, float, float],
    target_spacing_mm: tuple[float, float, float],
    *,
    brain_mask: np.ndarray | None = None,
    channels: tuple[str, ...] = CHANNELS,
) -> Preprocessed:
    """Crop to the brain, resample to ``target_spacing_mm``, z-score each sequence inside the brain."""
    missing = [c for c in channels if c not in images]
    if missing:
        raise ValueError(f"need the sequences {', '.join(channels)}; missing {', '.join(missing)}")
    shapes = {c: tuple(images[c].shape) for c in channels}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 3:
        raise ValueError(f"the four sequences must be 3-D arrays on one grid; got shapes {shapes}")
    native_shape = shapes[channels[0]]
    if brain_mask is None:
        brain_mask = brain_mask_of({c: images[c] for c in channels})
    elif tuple(brain_mask.shape) != native_shape:
        raise ValueError(
            f"brain_mask shape {brain_mask.shape} differs from the images {native_shape}"
        )
    brain_mask = brain_mask.astype(bool)
    box = crop_box(brain_mask, spacing_mm)
    cropped = np.stack([np.asarray(images[c][box], dtype=np.float32) for c in channels])
    cmask = brain_mask[box]
    cropped *= cmask[None]
    shape = target_shape(cmask.shape, spacing_mm, target_spacing_mm)
    res = resample(cropped, shape)
    rmask = resample(cmask.astype(np.float32), shape) >= 0.5
    image = np.stack([zscore(res[i], rmask) for i in range(len(channels))])
    return Preprocessed(image, rmask, box, native_shape, tuple(cmask.shape))  # type: ignore[arg-type]


def labels_to_regions(labels: np.ndarray) -> np.ndarray:
    """Label map {0,1,2,4} -> bool (3, ...) regions WT, TC, ET."""
    wt = np.isin(labels, (1, 2, 4))
    tc = np.isin(labels, (1, 4))
    et = labels == 4
    return np.stack([wt, tc, et])


def regions_to_labels(regions: np.ndarray) -> np.ndarray:
    """bool (3, ...) regions WT, TC, ET -> uint8 labels {0,1,2,4}, nested as BraTS defines them."""
    wt, tc, et = regions[0], regions[1], regions[2]
    out = np.zeros(wt.shape, dtype=np.uint8)
    out[wt] = 2
    out[wt & tc] = 1
    out[wt & tc & et] = 4
    return out


def quantise(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * QUANT_SCALE), -127, 127).astype(np.int8)


def dequantise(q: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) / QUANT_SCALE
