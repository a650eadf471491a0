"""Metric code on small hand-made arrays with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from model.metrics import (
    HD95_ONE_EMPTY_MM,
    dice,
    evaluate_case,
    hd95,
    mean_metrics,
    sensitivity,
    specificity,
    volume_ml,
)


def vox(shape, *points):
    a = np.zeros(shape, dtype=bool)
    for p in points:
        a[p] = True
    return a


def test_dice_known_values():
    a = vox((4, 4, 4), (0, 0, 0), (0, 0, 1))
    b = vox((4, 4, 4), (0, 0, 1), (0, 0, 2), (0, 0, 3))
    assert dice(a, b) == pytest.approx(2 * 1 / 5)
    assert dice(a, a) == 1.0


def test_empty_mask_rules_brats_2018_2020():
    empty = np.zeros((3, 3, 3), bool)
    one = vox((3, 3, 3), (1, 1, 1))
    assert dice(empty, empty) == 1.0
    assert hd95(empty, empty, (1, 1, 1)) == 0.0
    assert dice(one, empty) == 0.0 and dice(empty, one) == 0.0
    assert hd95(one, empty, (1, 1, 1)) == HD95_ONE_EMPTY_MM == 373.13
    assert hd95(empty, one, (1, 1, 1)) == 373.13


def test_hd95_single_voxels_is_their_distance_in_mm():
    a = vox((8, 8, 8), (0, 0, 0))
    b = vox((8, 8, 8), (3, 4, 0))
    assert hd95(a, b, (1, 1, 1)) == pytest.approx(5.0)
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(np.sqrt(6**2 + 4**2))


def test_hd95_identical_masks_is_zero():
    a = np.zeros((10, 10, 10), bool)
    a[2:7, 3:8, 1:9] = True
    assert hd95(a, a, (1, 1, 1)) == 0.0


def _brute_hd95(a, b, spacing):
    """Independent check: medpy's definition by brute force over border voxels (6-connectivity)."""

    def border(m):
        out = []
        for p in np.argwhere(m):
            for d in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
                q = p + d
                if np.any(q < 0) or np.any(q >= m.shape) or not m[tuple(q)]:
                    out.append(p)
                    break
        return np.array(out, dtype=float) * spacing

    pa, pb = border(a), border(b)
    dist = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return np.percentile(np.hstack([dist.min(1), dist.min(0)]), 95)


def test_hd95_matches_brute_force_on_shifted_boxes():
    a = np.zeros((12, 12, 12), bool)
    b = np.zeros((12, 12, 12), bool)
    a[2:8, 2:8, 2:6] = True
    b[4:11, 3:9, 2:8] = True
    spacing = np.array([1.0, 1.5, 2.0])
    assert hd95(a, b, spacing) == pytest.approx(_brute_hd95(a, b, spacing))


def test_hd95_at_the_array_edge_matches_brute_force():
    a = np.zeros((6, 6, 6), bool)
    b = np.zeros((6, 6, 6), bool)
    a[0:6, 0:3, 0:6] = True  # touches the edges: edge voxels count as border, as in medpy
    b[0:4, 0:4, 0:2] = True
    assert hd95(a, b, (1, 1, 1)) == pytest.approx(_brute_hd95(a, b, np.ones(3)))


def test_sensitivity_specificity_counts():
    ref = vox((2, 2, 2), (0, 0, 0), (0, 0, 1))  # 2 positives, 6 negatives
    pred = vox((2, 2, 2), (0, 0, 0), (1, 1, 1))  # TP 1, FP 1
    assert sensitivity(pred, ref) == pytest.approx(0.5)
    assert specificity(pred, ref) == pytest.approx(5 / 6)
    assert sensitivity(np.zeros_like(ref), np.zeros_like(ref)) == 1.0


def test_volume_ml():
    m = np.ones((10, 10, 10), bool)
    assert volume_ml(m, (1, 1, 1)) == pytest.approx(1.0)
    assert volume_ml(m, (2, 1, 1)) == pytest.approx(2.0)


def test_evaluate_case_regions_and_mean():
    ref = np.zeros((6, 6, 6), np.uint8)
    ref[1:3, 1:3, 1:3] = 2  # edema only: TC and ET empty
    ref[3, 3, 3] = 4
    pred = ref.copy()
    pred[3, 3, 3] = 1  # ET missed (called necrosis): ET one-empty, TC still matches
    m = evaluate_case(pred, ref, (1, 1, 1))
    assert m["dice"] == {"WT": 1.0, "TC": 1.0, "ET": 0.0}
    assert m["hd95"]["ET"] == 373.13 and m["hd95"]["WT"] == 0.0
    assert m["volume_ml"]["WT"] == {"pred": 0.009, "ref": 0.009}
    mean = mean_metrics([m, evaluate_case(ref, ref, (1, 1, 1))])
    assert mean["dice"]["ET"] == 0.5
    assert set(mean) == {"dice", "hd95", "sensitivity", "specificity", "volume_ml"}
    for region, labels in itertools.product(("WT",), ((1, 2, 4),)):
        assert mean["volume_ml"][region]["ref"] == pytest.approx(np.isin(ref, labels).sum() / 1000)


def test_label_contrast_on_a_hand_made_case():
    from model.contrast import case_contrast

    shape = (40, 40, 40)
    brain = np.zeros(shape, np.float32)
    brain[5:35, 5:35, 5:35] = 100.0
    labels = np.zeros(shape, np.uint8)
    labels[18:22, 18:22, 18:22] = 4  # a bright enhancing core
    labels[16:24, 16:24, 16:24][labels[16:24, 16:24, 16:24] == 0] = 2
    t1c = brain.copy()
    t1c[labels == 4] = 300.0
    r = case_contrast({"T1c": t1c, "FLAIR": brain.copy()}, labels)
    assert r["volume_ml"] == {"ET": 0.1, "NCR": 0.0, "ED": 0.4}
    z = r["z"]["T1c"]
    assert z["ET"] > 5 and abs(z["shell"] - z["ED"]) < 1e-6 and z["NCR"] is None
    assert z["ET"] - z["shell"] > 5
    assert r["z"]["FLAIR"]["ET"] == r["z"]["FLAIR"]["shell"] == 0.0  # flat: nothing stands out
