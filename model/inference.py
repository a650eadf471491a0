"""Whole-case inference: ``predict_case`` (the function the worker calls).

Crop to the brain, resample to the bundle's spacing and z-score (model/preprocessing.py, as in
training), sliding windows with Gaussian blending (optional mirror TTA), sigmoid probabilities
upsampled back to the native grid before thresholding, nested WT/TC/ET regions -> labels 1/2/4,
and the BraTS small-enhancing-tumour rule.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch

from model import preprocessing as pp
from model.bundle import Bundle
from model.sliding import sliding_window_probs

log = logging.getLogger(__name__)

# BraTS post-processing (Isensee et al., nnU-Net for BraTS 2020): when less enhancing tumour than this
# is predicted, call it necrosis instead (cases without enhancement score Dice 1 instead of 0).
MIN_ET_MM3 = 200.0


def _probs(bundle: Bundle, image: np.ndarray, tta: bool) -> torch.Tensor:
    patch = bundle.patch_size
    overlap = float(bundle.metadata.get("inference", {}).get("overlap", 0.5))
    x = torch.from_numpy(image)
    dev = bundle.device
    if dev.type != "cuda":
        return sliding_window_probs(
            bundle.network, x, patch, overlap=overlap, device=dev, mirror=tta
        )
    try:
        return sliding_window_probs(
            bundle.network, x, patch, overlap=overlap, device=dev, mirror=tta, amp=True
        )
    except torch.cuda.OutOfMemoryError:
        log.warning("GPU memory ran out while stitching; stitching on the CPU instead")
        torch.cuda.empty_cache()
    try:
        return sliding_window_probs(
            bundle.network,
            x,
            patch,
            overlap=overlap,
            device=dev,
            stitch_device="cpu",
            mirror=tta,
            amp=True,
        )
    except torch.cuda.OutOfMemoryError:
        log.warning("GPU memory ran out for one window; running this case on the CPU")
        torch.cuda.empty_cache()
    net = bundle.network.to("cpu")
    try:
        return sliding_window_probs(net, x, patch, overlap=overlap, device="cpu", mirror=tta)
    finally:
        net.to(dev)


def postprocess_et(
    labels: np.ndarray, spacing_mm: tuple[float, float, float], min_et_mm3: float
) -> np.ndarray:
    """Relabel enhancing tumour (4) as necrosis (1) when its total volume is below ``min_et_mm3``."""
    et = labels == 4
    if min_et_mm3 > 0 and et.any() and et.sum() * float(np.prod(spacing_mm)) < min_et_mm3:
        labels = labels.copy()
        labels[et] = 1
    return labels


def predict_case(
    bundle: Bundle,
    images: Mapping[str, np.ndarray],
    spacing_mm: tuple[float, float, float],
    *,
    brain_mask: np.ndarray | None = None,
    tta: bool = False,
    min_et_mm3: float = MIN_ET_MM3,
) -> np.ndarray:
    """Labels uint8 {0, 1 necrotic core, 2 edema, 4 enhancing} on the grid of ``images``.

    ``images``: "T1", "T1c", "T2", "FLAIR" on one grid, RAS+ closest-canonical axes, raw intensities,
    skull-stripped (background 0) or with ``brain_mask``. ``spacing_mm``: voxel size along those axes.
    """
    spacing_mm = tuple(float(s) for s in spacing_mm)  # type: ignore[assignment]
    if len(spacing_mm) != 3 or any(not np.isfinite(s) or s <= 0 for s in spacing_mm):
        raise ValueError(f"spacing_mm must be three positive numbers; got {spacing_mm}")
    pre = pp.preprocess(images, spacing_mm, bundle.spacing_mm, brain_mask=brain_mask)
    labels = np.zeros(pre.native_shape, dtype=np.uint8)
    if not pre.mask.any():
        log.warning("empty brain mask: nothing to segment")
        return labels
    probs = _probs(bundle, pre.image, tta)
    probs = pp.resample(probs, pre.cropped_shape)  # back to the native grid, then threshold
    regions = probs.numpy() >= 0.5
    mask = (
        brain_mask[pre.box].astype(bool)
        if brain_mask is not None
        else pp.brain_mask_of({c: images[c][pre.box] for c in pp.CHANNELS})
    )
    regions &= mask[None]
    cropped = pp.regions_to_labels(regions)
    cropped = postprocess_et(cropped, spacing_mm, min_et_mm3)
    labels[pre.box] = cropped
    return labels
