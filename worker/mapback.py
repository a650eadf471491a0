"""Map labels from the working grid back onto a prepared series' own native grid.

The labels live on :attr:`worker.preprocess.Prepared.grid` (RAS canonical, the reference's
physical space). A native voxel q of series S is looked up at ``T_S^-1(q)`` in the working grid,
where ``T_S`` is S's reference-to-native rigid transform (identity for the reference), by nearest
neighbour. The result is indexed like the series' DICOM: ``labels[k, row, column]`` is drawn on
``datasets[k]``, slices sorted by ascending position along the slice normal
(:func:`worker.convert.convert_series` already orders them so).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pydicom
import SimpleITK as sitk

from worker.convert import Volume
from worker.preprocess import Grid, Prepared, PreprocessError


@dataclass(frozen=True, eq=False)
class NativeLabels:
    """uint8 labels (n_slices, Rows, Columns) on a series' own grid; labels[k] on datasets[k]."""

    labels: np.ndarray
    datasets: list[pydicom.Dataset]
    series_uid: str = ""
    frame_numbers: list[int] | None = (
        None  # for a multi-frame source: frame of each slice (1-based)
    )


def map_back(labels: np.ndarray, prepared: Prepared, reference: Volume) -> NativeLabels:
    """Nearest-neighbour labels of ``reference``'s native voxels (see the module docstring)."""
    labels = np.asarray(labels)
    if tuple(labels.shape) != prepared.grid.size:
        raise PreprocessError(
            f"labels must have the prepared grid's shape {prepared.grid.size}; "
            f"received {tuple(labels.shape)}"
        )
    role = prepared.role_of(reference.series_uid)
    native = Grid.of(reference.image)
    if not native.same_as(prepared.native_grids[role], tol_mm=1e-3):
        raise PreprocessError(
            f"the {role} volume given to map-back does not have the grid it was prepared with "
            f"({native.size} vs {prepared.native_grids[role].size})"
        )
    source = prepared.grid.image(labels.astype(np.uint8, copy=False))
    transform = prepared.transforms[role]
    t = sitk.Transform(3, sitk.sitkIdentity) if transform.is_identity else transform.inverse_sitk()
    out = sitk.Resample(source, native.image(), t, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    array = sitk.GetArrayFromImage(out)  # (z, y, x) = (slice, row, column)
    return NativeLabels(
        labels=np.ascontiguousarray(array, dtype=np.uint8),
        datasets=list(reference.datasets),
        series_uid=reference.series_uid,
        frame_numbers=reference.frame_numbers,
    )
