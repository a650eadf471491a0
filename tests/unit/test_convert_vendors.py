"""convert_series on the real vendor series in the shared datasets (quirks handled or rejected)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from config.errors import ConversionError
from worker.convert import convert_series


def files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.endswith(".txt"))


def normal_projections(vol) -> list[float]:  # type: ignore[no-untyped-def]
    d = np.array(vol.image.GetDirection()).reshape(3, 3)
    out = []
    for ds, frame in zip(
        vol.datasets, vol.frame_numbers or [None] * len(vol.datasets), strict=True
    ):
        if frame is None:
            ipp = ds.ImagePositionPatient
        else:
            item = ds.PerFrameFunctionalGroupsSequence[frame - 1]
            ipp = item.PlanePositionSequence[0].ImagePositionPatient
        out.append(float(np.asarray(ipp, dtype=float) @ d[:, 2]))
    return out


@pytest.mark.data
@pytest.mark.parametrize(
    ("folder", "shape", "spacing"),
    [
        ("dicom2nifti/ge/anatomical/001", (4, 256, 256), (1.0, 1.0, 1.0)),
        ("dicom2nifti/siemens/anatomical/001", (4, 256, 256), (1.0, 1.0, 1.0)),
        ("dicom2nifti/philips/anatomical/001", (4, 240, 240), (1.0417, 1.0417, 0.6)),  # implicit VR
        ("dicom2nifti/hitachi/anatomical/001", (4, 64, 64), (2.3438, 2.3438, 4.0)),
        ("dicom2nifti/philips_enhanced/anatomical/001", (8, 256, 256), (1.0, 1.0, 1.2)),
        ("dicom2nifti/siemens_multiframe/anatomical/001", (8, 256, 256), (0.9375, 0.9375, 0.9)),
    ],
)
def test_vendor_series_convert_like_dicom2nifti(
    datasets: Path, folder: str, shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> None:
    src = datasets / "dicom" / folder
    vol = convert_series(files_of(src))
    assert vol.shape == shape
    assert vol.image.GetSpacing() == pytest.approx(spacing, abs=1e-3)
    proj = normal_projections(vol)
    assert proj == sorted(proj), "slices must ascend along the normal"
    if "enhanced" in folder or "multiframe" in folder:
        assert sorted(vol.frame_numbers or []) == list(range(1, shape[0] + 1))
    # Same voxels at the same physical points as dicom2nifti's own reference output.
    truth = sitk.ReadImage(str(src.parent / "001_ground_truth.nii.gz"), sitk.sitkFloat32)
    if truth.GetDimension() == 4:
        truth = truth[:, :, :, 0]
    on_ours = sitk.Resample(truth, vol.image, sitk.Transform(), sitk.sitkNearestNeighbor, -1e6)
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(on_ours), sitk.GetArrayFromImage(vol.image), rtol=1e-4, atol=1e-3
    )


@pytest.mark.data
def test_oblique_ge_mprage(datasets: Path) -> None:
    vol = convert_series(files_of(datasets / "dicom/dcm_qa_ge/05_3D_Ax_T1_MP_RAGE_R22"))
    assert vol.shape == (130, 256, 256)
    assert vol.image.GetSpacing() == pytest.approx((0.9375, 0.9375, 1.2), abs=1e-4)
    d = np.array(vol.image.GetDirection()).reshape(3, 3)
    assert abs(d[2, 2]) < 0.9999, "this series is oblique"
    proj = normal_projections(vol)
    assert proj == sorted(proj)
    assert len(set(vol.sop_uids)) == 130


@pytest.mark.data
@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("dicom/dcm_qa_nih/20180918GE/mr_0004", r"150 images at 15 positions.*4D"),
        ("dicom/dcm_qa_nih/20180918Si/mr_0003", "MOSAIC"),
        ("dicom/pydicom-data/emri_small.dcm", "PerFrameFunctionalGroupsSequence"),
        ("dicom/pydicom-data/emri_small_jpeg_2k_lossless.dcm", "PerFrameFunctionalGroupsSequence"),
    ],
)
def test_unusable_series_are_rejected_with_a_reason(
    datasets: Path, path: str, message: str
) -> None:
    src = datasets / path
    files = files_of(src) if src.is_dir() else [src]
    with pytest.raises(ConversionError, match=message):
        convert_series(files)
