"""Brain extraction (skull stripping) backends, offline.

All functions take arrays in RAS+ closest-canonical voxel order (the working grid of
:mod:`worker.preprocess`) and return boolean masks of the same shape.

- :func:`deepbet_mask`: deepbet 1.0.2 (MIT), TorchScript weights inside the wheel (nothing is
  downloaded), about 2-4 s per volume on 2 CPU cores. It was trained on T1 of healthy adults,
  so it is run on a T1-weighted image (the pre- or post-contrast T1).
- :func:`looks_skull_stripped`: the "auto" rule: images that already have a large exactly-zero
  background and a brain-sized foreground (BraTS-like) need no stripping.
- :func:`nonzero_mask`: the mask of such images (union of the non-zero voxels).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from config.errors import PermanentError

log = logging.getLogger(__name__)

STRIPPED_MIN_ZERO_FRACTION = (
    0.4  # BraTS volumes are about 80 % exact zeros; heads with skull < 15 %
)
STRIPPED_MAX_FOREGROUND_ML = 2300.0  # an adult brain is 1000-1800 mL; a head with scalp is more


class BrainExtractionError(PermanentError):
    """Brain extraction produced no usable mask."""


def looks_skull_stripped(
    images: Mapping[str, np.ndarray], voxel_volume_ml: Mapping[str, float]
) -> tuple[bool, str]:
    """Whether every image looks skull-stripped already, and why (for the job record).

    Skull-stripped: at least 40 % of the voxels are exactly 0 and the non-zero part is at most
    2300 mL (an adult brain is 1000-1800 mL; a head with scalp and neck is well above).
    """
    zero_fraction = min(float(np.mean(a == 0)) for a in images.values())
    foreground_ml = max(
        float(np.count_nonzero(a)) * voxel_volume_ml[role] for role, a in images.items()
    )
    stripped = (
        zero_fraction >= STRIPPED_MIN_ZERO_FRACTION and foreground_ml <= STRIPPED_MAX_FOREGROUND_ML
    )
    reason = (
        f"zero background {zero_fraction:.0%} (skull-stripped needs >= "
        f"{STRIPPED_MIN_ZERO_FRACTION:.0%}), foreground {foreground_ml:.0f} mL "
        f"(<= {STRIPPED_MAX_FOREGROUND_ML:.0f})"
    )
    return stripped, reason


def nonzero_mask(images: Mapping[str, np.ndarray]) -> np.ndarray:
    """Union of the non-zero voxels of all images, holes filled."""
    mask = np.zeros(next(iter(images.values())).shape, dtype=bool)
    for a in images.values():
        mask |= a != 0
    return ndimage.binary_fill_holes(mask)


@functools.lru_cache(maxsize=1)
def _deepbet():  # type: ignore[no-untyped-def]
    # Imported here: torch and deepbet load only in processes that strip skulls.
    from deepbet import BrainExtraction

    return BrainExtraction(no_gpu=True)


def deepbet_mask(
    image: np.ndarray, spacing_mm: tuple[float, float, float], *, threshold: float = 0.5
) -> np.ndarray:
    """deepbet's brain mask of one T1-weighted image (RAS canonical array)."""
    import nibabel as nib

    affine = np.diag([*spacing_mm, 1.0])
    bet = _deepbet()
    try:
        _, mask_img, _ = bet.run(
            nib.Nifti1Image(np.asarray(image, dtype=np.float32), affine), threshold=threshold
        )
    except (AssertionError, ValueError, RuntimeError) as exc:
        raise BrainExtractionError(
            f"deepbet found no brain in the image (shape {image.shape}): {exc}"
        ) from exc
    mask = np.asarray(mask_img.dataobj).astype(bool)
    if mask.shape != image.shape:
        raise BrainExtractionError(
            f"deepbet returned a mask of shape {mask.shape} for an image of shape {image.shape}"
        )
    return mask
