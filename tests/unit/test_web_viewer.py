"""Slices for the browser viewer: orientation, windowing, grids (pure numpy + nibabel)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from config.errors import PermanentError
from web.viewer import (
    LABELS_FILE,
    REFERENCE_FILE,
    Plane,
    VolumeCache,
    cut,
    load_viewer_volume,
    png_bytes,
    to_uint8,
)


def ras_marker_volume() -> np.ndarray:
    """(X=10, Y=12, Z=8) RAS volume, zero except one voxel toward patient right, anterior, superior."""
    vol = np.zeros((10, 12, 8), np.uint8)
    vol[8, 10, 6] = 255  # x high = right, y high = anterior, z high = superior
    return vol


def where(img: np.ndarray) -> tuple[int, int]:
    r, c = np.argwhere(img == 255)[0]
    return int(r), int(c)


def test_axial_slice_is_radiological_with_anterior_up():
    img = cut(ras_marker_volume(), Plane.AXIAL, 6)
    assert img.shape == (12, 10)  # rows: y, columns: x
    r, c = where(img)
    assert r < 6, "anterior must be in the upper half"
    assert c < 5, "patient right must be on the left of the screen"


def test_coronal_slice_has_superior_up_and_right_on_left():
    img = cut(ras_marker_volume(), Plane.CORONAL, 10)
    assert img.shape == (8, 10)
    r, c = where(img)
    assert r < 4 and c < 5


def test_sagittal_slice_has_superior_up_and_anterior_on_left():
    img = cut(ras_marker_volume(), Plane.SAGITTAL, 8)
    assert img.shape == (8, 12)
    r, c = where(img)
    assert r < 4 and c < 6


def test_slice_index_out_of_range_names_the_range():
    with pytest.raises(PermanentError, match=r"0\.\.7 for the axial plane; got 8"):
        cut(ras_marker_volume(), Plane.AXIAL, 8)


def test_to_uint8_windows_nonzero_voxels_and_keeps_background_black():
    data = np.zeros((4, 4, 4), np.float32)
    data[1:3, 1:3, 1:3] = np.linspace(100, 900, 8).reshape(2, 2, 2)
    out = to_uint8(data)
    assert out.dtype == np.uint8
    assert out[0, 0, 0] == 0
    assert out[1:3, 1:3, 1:3].max() == 255
    assert to_uint8(np.zeros((2, 2, 2))).max() == 0


def test_png_keeps_label_values(tmp_path):
    from PIL import Image

    labels = np.array([[0, 1], [2, 4]], np.uint8)
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(labels))
    assert np.array_equal(np.asarray(Image.open(path)), labels)


def save_pair(folder, image, labels, affine, labels_affine=None):
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), folder / REFERENCE_FILE)
    la = affine if labels_affine is None else labels_affine
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), la), folder / LABELS_FILE)


def test_lps_volume_is_brought_to_ras_and_labels_follow(tmp_path):
    # An LPS-stored volume (as from DICOM): voxel i grows toward patient LEFT, j toward POSTERIOR.
    affine = np.diag([-1.0, -1.0, 2.5, 1.0])  # nibabel RAS affine of LPS voxel axes
    image = np.random.default_rng(0).random((20, 24, 10)).astype(np.float32) * 500 + 10
    labels = np.zeros((20, 24, 10), np.uint8)
    labels[2, 3, 4] = 4  # world (-2, -3, 10) mm
    save_pair(tmp_path, image, labels, affine)
    vol = load_viewer_volume(tmp_path)
    assert vol.image_u8.shape == (20, 24, 10)
    assert vol.spacing_mm == (1.0, 1.0, 2.5)
    # world x of voxel i=2 is -2 mm; in RAS canonical order it is index 20-1-2 = 17 (toward right)
    assert vol.labels[17, 20, 4] == 4
    desc = vol.describe()
    assert desc["planes"]["axial"]["initial"] == 4
    assert desc["planes"]["coronal"]["row_mm"] == 2.5
    assert [r["value"] for r in desc["regions"] if r["present"]] == [4]


def test_labels_on_another_grid_are_resampled_nearest(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    image = np.ones((10, 10, 10), np.float32)
    fine = np.zeros((20, 20, 20), np.uint8)
    fine[8:12, 8:12, 8:12] = 2
    save_pair(tmp_path, image, fine, affine, labels_affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    vol = load_viewer_volume(tmp_path)
    assert vol.labels.shape == (10, 10, 10)
    assert set(np.unique(vol.labels)) == {0, 2}


def test_cache_reloads_when_a_file_changes(tmp_path):
    affine = np.eye(4)
    save_pair(tmp_path, np.ones((4, 4, 4)), np.zeros((4, 4, 4)), affine)
    cache = VolumeCache()
    first = cache.get(tmp_path)
    assert cache.get(tmp_path) is first
    import os
    import time

    labels = np.zeros((4, 4, 4), np.uint8)
    labels[1, 1, 1] = 1
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / LABELS_FILE)
    later = time.time() + 5
    os.utime(tmp_path / LABELS_FILE, (later, later))
    assert cache.get(tmp_path).labels.max() == 1


def test_missing_viewer_files_say_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="viewer"):
        VolumeCache().get(tmp_path)
