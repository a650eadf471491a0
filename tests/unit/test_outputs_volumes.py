"""Region volumes and deterministic UIDs (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.unit.outputs_support import make_labels, make_mr_series
from worker.outputs._common import OutputsError
from worker.outputs.uids import derived_uid, instance_uid, series_uid
from worker.outputs.volumes import region_volumes_ml, voxel_volumes_ml


def test_volumes_count_voxels_times_voxel_size():
    ds = make_mr_series(10, 16, 16, pixel_mm=2.0, slice_mm=5.0)
    labels = np.zeros((10, 16, 16), np.uint8)
    labels[2, :5, :4] = 1  # 20 voxels
    labels[3, :10, :10] = 2  # 100
    labels[4, 0, :7] = 4  # 7
    vol = region_volumes_ml(labels, ds)
    voxel_ml = 2.0 * 2.0 * 5.0 / 1000
    assert vol == pytest.approx(
        {
            "necrotic": 20 * voxel_ml,
            "edema": 100 * voxel_ml,
            "enhancing": 7 * voxel_ml,
            "tumor_core": 27 * voxel_ml,
            "whole_tumor": 127 * voxel_ml,
        }
    )


def test_oblique_series_spacing_is_measured_along_the_normal():
    ds = make_mr_series(8, 8, 8, pixel_mm=1.0, slice_mm=4.0, oblique_deg=25)
    assert voxel_volumes_ml(ds) == pytest.approx(np.full(8, 4.0e-3))


def test_uneven_slices_count_half_the_gap_to_each_neighbour():
    ds = make_mr_series(4, 8, 8, pixel_mm=1.0, slice_mm=2.0)
    normal = np.array([0, 0, 1.0])
    for k, z in enumerate([0.0, 2.0, 6.0, 8.0]):  # one 4 mm gap
        ds[k].ImagePositionPatient = list(
            np.asarray(ds[0].ImagePositionPatient) * [1, 1, 0] + normal * z
        )
    assert voxel_volumes_ml(ds) * 1000 == pytest.approx([2.0, 3.0, 3.0, 2.0])


def test_order_of_datasets_does_not_matter():
    ds = make_mr_series(12, 32, 32, shuffle=True)
    labels = make_labels(12, 32, 32)
    sorted_ds = sorted(range(12), key=lambda k: float(ds[k].ImagePositionPatient[2]))
    assert region_volumes_ml(labels, ds) == region_volumes_ml(
        labels[sorted_ds], [ds[k] for k in sorted_ds]
    )


def test_empty_labels_give_zero_volumes():
    ds = make_mr_series(6, 8, 8)
    vol = region_volumes_ml(np.zeros((6, 8, 8), np.uint8), ds)
    assert set(vol) == {"necrotic", "edema", "enhancing", "tumor_core", "whole_tumor"}
    assert all(v == 0 for v in vol.values())


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((5, 8, 8), np.uint8), "one slice per source instance"),
        (np.zeros((6, 8, 9), np.uint8), "Rows x Columns"),
        (np.full((6, 8, 8), 3, np.uint8), "values in {0, 1, 2, 4}"),
        (np.zeros((6, 8, 8), np.float32), "integers"),
    ],
)
def test_bad_labels_are_rejected_with_the_rule_and_the_value(labels, message):
    with pytest.raises(OutputsError, match=message.replace("{", r"\{").replace("}", r"\}")):
        region_volumes_ml(labels, make_mr_series(6, 8, 8))


def test_duplicate_positions_are_rejected():
    ds = make_mr_series(4, 8, 8)
    ds[2].ImagePositionPatient = ds[1].ImagePositionPatient
    with pytest.raises(OutputsError, match="distinct positions"):
        region_volumes_ml(np.zeros((4, 8, 8), np.uint8), ds)


def test_derived_uids_are_deterministic_and_distinct():
    a = series_uid("1.2.3", "0.1.0", "seg")
    assert a == series_uid("1.2.3", "0.1.0", "seg")
    others = {
        series_uid("1.2.4", "0.1.0", "seg"),
        series_uid("1.2.3", "0.2.0", "seg"),
        series_uid("1.2.3", "0.1.0", "sr"),
        instance_uid("1.2.3", "0.1.0", "seg", 0),
        instance_uid("1.2.3", "0.1.0", "seg", 1),
    }
    assert a not in others and len(others) == 5
    assert derived_uid("x", 1) == derived_uid("x", "1")
    assert len(a) <= 64 and all(part.isdigit() for part in a.split("."))


def test_multiframe_source_volumes_equal_single_frame():
    from tests.unit.outputs_support import make_enhanced_mr

    series = make_mr_series(10, 16, 16, oblique_deg=10, slice_mm=4.0)
    labels = make_labels(10, 16, 16)
    mf = make_enhanced_mr(series, reverse=True)
    frames = [10 - k for k in range(10)]
    assert region_volumes_ml(labels, [mf] * 10, frames) == region_volumes_ml(labels, series)
