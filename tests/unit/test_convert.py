"""convert_series on small series built here with pydicom: geometry, slice order, rejections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage, generate_uid

from config.errors import ConversionError, PermanentError
from worker.convert import Volume, convert_series

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def pixels_for(k: int, rows: int, cols: int) -> np.ndarray:
    """A slice whose values encode its index, row and column (so any mix-up shows)."""
    r, c = np.mgrid[0:rows, 0:cols]
    return (1000 * (k + 1) + 10 * r + c % 10).astype(np.int16)


def write_series(
    folder: Path,
    *,
    n: int = 8,
    rows: int = 12,
    cols: int = 10,
    pixel_spacing: tuple[float, float] = (0.9, 1.1),
    slice_mm: float = 2.5,
    iop: tuple[float, ...] = AXIAL,
    origin: tuple[float, float, float] = (-20.0, -30.0, 10.0),
    shear_mm: float = 0.0,
    skip: tuple[int, ...] = (),
    series_uid: str | None = None,
    implicit: bool = False,
    reverse_instance_numbers: bool = True,
    slope: float = 1.0,
    intercept: float = 0.0,
) -> tuple[list[Path], list[str]]:
    """Write ``n`` single-frame MR slices; returns the paths and the SOP UIDs in position order."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    row_dir, col_dir = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row_dir, col_dir)
    paths, uids = [], []
    for k in range(n):
        if k in skip:
            continue
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        )
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = "1.2.3.4"
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = "1.2.3.4.5"
        ds.Modality = "MR"
        ds.Manufacturer = "SIEMENS"
        ds.PatientName = "CANARY^PHI"
        ds.InstanceNumber = n - k if reverse_instance_numbers else k + 1
        position = np.array(origin) + k * slice_mm * normal + k * shear_mm * row_dir
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.PixelSpacing = [f"{v}" for v in pixel_spacing]
        ds.SliceThickness = f"{slice_mm}"
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        if slope != 1.0 or intercept != 0.0:
            ds.RescaleSlope, ds.RescaleIntercept = f"{slope}", f"{intercept}"
        ds.PixelData = pixels_for(k, rows, cols).tobytes()
        path = folder / f"f{(k * 7919) % 1000:04d}_{k}.dcm"  # file order != slice order
        ds.save_as(path, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
        paths.append(path)
        uids.append(ds.SOPInstanceUID)
    return paths, uids


def test_axial_series_geometry_and_slice_order(tmp_path: Path) -> None:
    paths, uids = write_series(tmp_path)
    vol = convert_series(list(reversed(paths)), tmp_path)
    assert isinstance(vol, Volume)
    assert vol.shape == (8, 12, 10)
    assert vol.sop_uids == uids
    assert [str(ds.SOPInstanceUID) for ds in vol.datasets] == uids
    arr = sitk.GetArrayFromImage(vol.image)
    for k in range(8):
        np.testing.assert_array_equal(arr[k], pixels_for(k, 12, 10))
    assert vol.image.GetSpacing() == pytest.approx((1.1, 0.9, 2.5))
    assert vol.image.GetOrigin() == pytest.approx((-20.0, -30.0, 10.0))
    assert vol.image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    # voxel (column 3, row 5, slice 4) sits where the DICOM geometry says
    point = vol.image.TransformIndexToPhysicalPoint((3, 5, 4))
    assert point == pytest.approx((-20 + 3 * 1.1, -30 + 5 * 0.9, 10 + 4 * 2.5))


def test_sagittal_slices_sorted_along_the_normal(tmp_path: Path) -> None:
    # normal = row x col = (0,1,0) x (0,0,-1) = (-1,0,0): ascending along it = descending x
    paths, uids = write_series(tmp_path, iop=SAGITTAL)
    vol = convert_series(paths)
    normal = np.cross(SAGITTAL[:3], SAGITTAL[3:])
    proj = [float(np.array(ds.ImagePositionPatient, dtype=float) @ normal) for ds in vol.datasets]
    assert proj == sorted(proj)
    assert vol.sop_uids == uids
    arr = sitk.GetArrayFromImage(vol.image)
    np.testing.assert_array_equal(arr[2], pixels_for(2, 12, 10))


def test_oblique_implicit_vr_and_rescale(tmp_path: Path) -> None:
    a = np.deg2rad(17)
    iop = (np.cos(a), np.sin(a), 0.0, 0.0, 0.0, -1.0)  # oblique coronal-ish
    paths, _ = write_series(tmp_path, iop=iop, implicit=True, slope=0.5, intercept=-3)
    vol = convert_series(paths)
    d = np.array(vol.image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(d[:, 0], iop[:3], atol=1e-5)
    np.testing.assert_allclose(d[:, 2], np.cross(iop[:3], iop[3:]), atol=1e-5)
    arr = sitk.GetArrayFromImage(vol.image)
    np.testing.assert_allclose(arr[5], pixels_for(5, 12, 10) * 0.5 - 3)


def test_missing_slice_is_rejected_with_the_gap(tmp_path: Path) -> None:
    paths, _ = write_series(tmp_path, n=10, skip=(4,))
    with pytest.raises(ConversionError, match=r"uniform.*5\.000 mm.*missing"):
        convert_series(paths)


def test_sheared_stack_gantry_tilt_is_rejected(tmp_path: Path) -> None:
    paths, _ = write_series(tmp_path, shear_mm=0.5)  # 11 degrees
    with pytest.raises(ConversionError, match="sheared by 11"):
        convert_series(paths)


def test_mixed_orientations_rejected_but_a_localizer_is_dropped(tmp_path: Path) -> None:
    uid = generate_uid()
    axial, _ = write_series(tmp_path / "a", n=6, series_uid=uid)
    sag, _ = write_series(tmp_path / "s", n=6, iop=SAGITTAL, series_uid=uid)
    with pytest.raises(ConversionError, match="one slice orientation; found 2 orientations"):
        convert_series(axial + sag)
    vol = convert_series(axial + sag[:1])
    assert vol.shape[0] == 6
    assert vol.notes and "localizer" in vol.notes[0]


def test_multi_volume_series_is_rejected_as_4d(tmp_path: Path) -> None:
    uid = generate_uid()
    first, _ = write_series(tmp_path / "t0", series_uid=uid)
    second, _ = write_series(tmp_path / "t1", series_uid=uid)
    with pytest.raises(ConversionError, match="2 per position: a 4D series"):
        convert_series(first + second)


def test_single_slice_and_mixed_series_are_rejected(tmp_path: Path) -> None:
    one, _ = write_series(tmp_path / "one", n=1)
    with pytest.raises(ConversionError, match="at least 3 slices; received 1"):
        convert_series(one)
    a, _ = write_series(tmp_path / "a", n=4)
    b, _ = write_series(tmp_path / "b", n=4)
    with pytest.raises(ConversionError, match="one series; found 2"):
        convert_series(a + b)
    with pytest.raises(ConversionError, match="received none"):
        convert_series([])


def test_corrupt_file_is_rejected_naming_the_file(tmp_path: Path) -> None:
    paths, _ = write_series(tmp_path)
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) // 3])  # truncated mid pixel data
    with pytest.raises(PermanentError, match=paths[3].name):
        convert_series(paths)
    data = paths[5].read_bytes()
    paths[5].write_bytes(data[:-50])  # an interrupted transfer: pixel data cut short
    with pytest.raises(ConversionError, match=rf"{paths[5].name} is truncated"):
        convert_series(paths[5:])
    paths[4].write_bytes(b"not a dicom file at all")
    with pytest.raises(ConversionError, match=paths[4].name):
        convert_series([paths[4], *paths[6:]])


def test_error_messages_carry_no_phi(tmp_path: Path) -> None:
    paths, _ = write_series(tmp_path, n=10, skip=(4,))
    with pytest.raises(ConversionError) as info:
        convert_series(paths)
    assert "CANARY" not in str(info.value)
    assert "1.2.3.4" not in str(info.value)
