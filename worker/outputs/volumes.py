"""Region volumes in mL from native labels and the source geometry (pure)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydicom

from ._common import (
    REGION_LABELS,
    OutputsError,
    check_labels,
    frame_attribute,
    frame_numbers_for,
    slice_geometry,
)


def voxel_volumes_ml(
    datasets: Sequence[pydicom.Dataset], frame_numbers: Sequence[int] | None = None
) -> np.ndarray:
    """Volume of one voxel of each slice, in mL (PixelSpacing x slice spacing / 1000).

    The slice spacing comes from the positions along the slice normal (each slice stands for half
    the distance to each neighbour, so uneven spacing is counted right); a single slice falls
    back to SpacingBetweenSlices, then SliceThickness.
    """
    geom = slice_geometry(datasets, frame_numbers)
    area_mm2 = geom.row_spacing_mm * geom.column_spacing_mm
    if len(datasets) == 1:
        ds, frame = datasets[0], frame_numbers_for(datasets, frame_numbers)[0]
        value = frame_attribute(
            ds, frame, "PixelMeasuresSequence", "SpacingBetweenSlices"
        ) or frame_attribute(ds, frame, "PixelMeasuresSequence", "SliceThickness")
        if value is None or float(value) <= 0:
            raise OutputsError(
                "one source slice needs a positive SpacingBetweenSlices or SliceThickness; "
                f"got {value!r}"
            )
        thickness = np.asarray([float(value)])
    else:
        thickness = geom.slice_thickness_mm()
    return area_mm2 * thickness / 1000.0


def region_volumes_ml(
    labels: np.ndarray,
    datasets: Sequence[pydicom.Dataset],
    frame_numbers: Sequence[int] | None = None,
) -> dict[str, float]:
    """Volumes in mL of "necrotic", "edema", "enhancing", "tumor_core" and "whole_tumor".

    ``labels[k]`` (values 0, 1, 2, 4) is drawn on ``datasets[k]`` (frame ``frame_numbers[k]`` of
    a multi-frame source). Rounded to 0.001 mL.
    """
    arr = check_labels(labels, datasets)
    per_slice_ml = voxel_volumes_ml(datasets, frame_numbers)
    counts = {v: np.count_nonzero(arr == v, axis=(1, 2)) for v in (1, 2, 4)}
    out: dict[str, float] = {}
    for region, values in REGION_LABELS.items():
        n = sum(counts[v] for v in values)
        out[region.value] = round(float(np.dot(n, per_slice_ml)), 3)
    return out
