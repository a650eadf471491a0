"""Geometry identity: a BraTS ground truth goes DICOM -> convert -> prepare -> map_back unchanged.

The four images of a BraTS case are written as DICOM series by studygen (axial 1 mm, oblique,
5 mm). The ground-truth label volume is sampled (nearest) from its own NIfTI onto the prepared
grid, then mapped back onto the T1c series' native grid. The result must equal, voxel for voxel,
studygen's own label volume on that series' grid (``series_grid(..., order=0)``), slice k
matched to the instance with the same SOPInstanceUID; for axial 1 mm it must equal the original
segmentation itself. The two sides share no geometry code: studygen writes DICOM from the NIfTI
affine; the worker reads it back from the DICOM headers only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from dicom_node.studygen import series_grid, write_brats_case
from worker.convert import convert_series
from worker.mapback import NativeLabels, map_back
from worker.preprocess import Prepared, prepare

pytestmark = [pytest.mark.integration, pytest.mark.data, pytest.mark.slow]

CASE = "Brats18_TCIA02_370_1"
VARIANTS = {
    "axial_1mm": {},
    "oblique_20deg": {"oblique_deg": 20.0},
    "axial_5mm": {"slice_mm": 5.0},
}


def nifti_to_sitk(img: nib.Nifti1Image) -> sitk.Image:
    """A NIfTI as a SimpleITK image in LPS space, from its affine alone."""
    data = np.asanyarray(img.dataobj)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    out = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0))))
    out.SetSpacing(spacing.tolist())
    out.SetOrigin(lps[:3, 3].tolist())
    out.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    return out


@pytest.fixture(scope="module", params=list(VARIANTS))
def case(
    request: pytest.FixtureRequest, datasets: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, object, dict, Prepared]]:
    variant = request.param
    out = tmp_path_factory.mktemp(variant)
    study = write_brats_case(datasets / "brats" / CASE, out, **VARIANTS[variant])
    volumes = {role: convert_series(s.paths, out) for role, s in study.series.items()}
    prepared = prepare(volumes, registration="none", brain_extraction="auto")
    yield variant, study, volumes, prepared


def test_map_back_reproduces_the_ground_truth_on_the_native_grid(case, datasets: Path) -> None:  # type: ignore[no-untyped-def]
    variant, study, volumes, prepared = case
    seg_img = nib.load(datasets / "brats" / CASE / f"{CASE}_seg.nii.gz")
    seg = np.asanyarray(seg_img.dataobj).astype(np.uint8)

    # ground truth on the prepared grid, sampled from the NIfTI by its affine
    on_grid = sitk.Resample(
        nifti_to_sitk(nib.Nifti1Image(seg, seg_img.affine)),
        prepared.grid.image(),
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        0,
        sitk.sitkUInt8,
    )
    labels = np.transpose(sitk.GetArrayFromImage(on_grid), (2, 1, 0))
    assert labels.shape == prepared.images["T1c"].shape

    native = map_back(labels, prepared, volumes["T1c"])
    assert isinstance(native, NativeLabels)
    written = study.series["T1c"]
    expected, _ = series_grid(seg, seg_img.affine, order=0, **VARIANTS[variant])
    assert native.labels.shape == (expected.shape[2], expected.shape[1], expected.shape[0])
    index_of = {uid: k for k, uid in enumerate(written.sop_uids)}
    mismatched = 0
    for k, ds in enumerate(native.datasets):
        instance = index_of[str(ds.SOPInstanceUID)]
        want = expected[:, :, instance].T  # (rows, columns)
        mismatched += int(np.count_nonzero(native.labels[k] != want))
    assert mismatched == 0, f"{variant}: {mismatched} voxels differ"
    assert set(np.unique(native.labels)) == {0, 1, 2, 4}
    if variant == "axial_1mm":
        # the 1 mm axial series is the BraTS grid itself
        np.testing.assert_array_equal(np.asarray(expected), seg)


def test_prepared_images_are_ras_canonical_and_match_the_nifti(case, datasets: Path) -> None:  # type: ignore[no-untyped-def]
    variant, _, _, prepared = case
    codes = nib.aff2axcodes(prepared.affine_ras)
    assert codes == ("R", "A", "S")
    assert prepared.spacing_mm == pytest.approx((1.0, 1.0, 1.0))
    assert any("skull-stripped" in n for n in prepared.notes)
    if variant == "axial_1mm":
        t1c = nib.load(datasets / "brats" / CASE / f"{CASE}_t1ce.nii.gz")
        canonical = nib.as_closest_canonical(t1c)
        np.testing.assert_allclose(prepared.affine_ras, canonical.affine, atol=1e-4)
        np.testing.assert_allclose(
            prepared.images["T1c"], canonical.get_fdata(dtype=np.float32), atol=0.5
        )
