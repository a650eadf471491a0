"""BraTS metrics: Dice, HD95 (as medpy computes it), sensitivity, specificity and volumes.

Empty masks follow the BraTS 2018-2020 rules: both empty -> Dice 1, HD95 0; exactly one empty ->
Dice 0, HD95 373.13 mm.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

REGION_LABELS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
HD95_ONE_EMPTY_MM = 373.13


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    pred, ref = pred.astype(bool), ref.astype(bool)
    p, r = int(pred.sum()), int(ref.sum())
    if p == 0 and r == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / (p + r)


def _border(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask ^ ndimage.binary_erosion(mask, structure=structure, iterations=1)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """Distances (mm) from each border voxel of ``a`` to the nearest border voxel of ``b`` (medpy)."""
    a_border, b_border = _border(a), _border(b)
    dt = ndimage.distance_transform_edt(~b_border, sampling=spacing_mm)
    return dt[a_border]


def hd95(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """95th percentile of both directed surface-distance sets together (medpy.metric.binary.hd95)."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    p, r = pred.any(), ref.any()
    if not p and not r:
        return 0.0
    if not p or not r:
        return HD95_ONE_EMPTY_MM
    # crop to the union's bounding box plus one voxel: every border voxel lies inside, so exact
    idx = np.argwhere(pred | ref)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, pred.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    pb, rb = pred[box], ref[box]  # the one-voxel rim is False unless it is the array's own edge
    d = np.hstack([surface_distances(pb, rb, spacing_mm), surface_distances(rb, pb, spacing_mm)])
    return float(np.percentile(d, 95))


def sensitivity(pred: np.ndarray, ref: np.ndarray) -> float:
    pred, ref = pred.astype(bool), ref.astype(bool)
    r = int(ref.sum())
    if r == 0:
        return 1.0 if not pred.any() else 0.0
    return int(np.logical_and(pred, ref).sum()) / r


def specificity(pred: np.ndarray, ref: np.ndarray) -> float:
    pred, ref = pred.astype(bool), ref.astype(bool)
    negatives = int((~ref).sum())
    if negatives == 0:
        return 1.0
    return int(np.logical_and(~pred, ~ref).sum()) / negatives


def volume_ml(mask: np.ndarray, spacing_mm: Sequence[float]) -> float:
    return float(mask.astype(bool).sum() * float(np.prod(spacing_mm)) / 1000.0)


def evaluate_case(
    pred_labels: np.ndarray, ref_labels: np.ndarray, spacing_mm: Sequence[float]
) -> dict:
    """Per-region metrics for one case: {"dice", "hd95", "sensitivity", "specificity", "volume_ml"}."""
    if pred_labels.shape != ref_labels.shape:
        raise ValueError(
            f"prediction and reference must share a grid; got {pred_labels.shape} and {ref_labels.shape}"
        )
    out: dict[str, dict] = {
        "dice": {},
        "hd95": {},
        "sensitivity": {},
        "specificity": {},
        "volume_ml": {},
    }
    for region, labels in REGION_LABELS.items():
        p = np.isin(pred_labels, labels)
        r = np.isin(ref_labels, labels)
        out["dice"][region] = dice(p, r)
        out["hd95"][region] = hd95(p, r, spacing_mm)
        out["sensitivity"][region] = sensitivity(p, r)
        out["specificity"][region] = specificity(p, r)
        out["volume_ml"][region] = {
            "pred": volume_ml(p, spacing_mm),
            "ref": volume_ml(r, spacing_mm),
        }
    return out


def mean_metrics(cases: Sequence[dict]) -> dict:
    """Average of each metric and region over cases (volumes averaged as pred and ref)."""
    out: dict[str, dict] = {}
    if not cases:
        return out
    for metric in ("dice", "hd95", "sensitivity", "specificity"):
        out[metric] = {r: float(np.mean([c[metric][r] for c in cases])) for r in REGION_LABELS}
    out["volume_ml"] = {
        r: {k: float(np.mean([c["volume_ml"][r][k] for c in cases])) for k in ("pred", "ref")}
        for r in REGION_LABELS
    }
    return out
