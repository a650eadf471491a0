"""Working grid, transforms and map-back on small synthetic volumes (no data, seconds)."""

from __future__ import annotations

import pickle

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from config.errors import PermanentError
from worker import brain
from worker.convert import Volume
from worker.mapback import map_back
from worker.preprocess import Grid, RigidTransform, prepare, resample, working_grid


def image(size, spacing, direction=None, origin=(0.0, 0.0, 0.0), array=None) -> sitk.Image:  # type: ignore[no-untyped-def]
    direction = np.eye(3) if direction is None else direction
    if array is None:
        array = np.zeros(size[::-1], dtype=np.float32)
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(tuple(np.asarray(direction, dtype=float).ravel()))
    return img


def volume(img: sitk.Image, uid: str = "1.2.3", frame: str = "9.9") -> Volume:
    n = img.GetSize()[2]
    datasets = []
    for k in range(n):
        ds = pydicom.Dataset()
        ds.SOPInstanceUID = f"{uid}.{k}"
        ds.FrameOfReferenceUID = frame
        datasets.append(ds)
    return Volume(img, [d.SOPInstanceUID for d in datasets], datasets, uid)


SAG = np.column_stack([[0, 1, 0], [0, 0, -1], [-1, 0, 0]]).astype(float)  # LPS columns


@pytest.mark.parametrize(
    ("direction", "spacing"),
    [
        (np.eye(3), (1.0, 1.0, 1.0)),  # DICOM axial: i->L, j->P, k->S
        (SAG, (0.9, 0.9, 5.5)),  # sagittal, thick slices
        (
            sitk.VersorRigid3DTransform((0.1, 0.2, 0.05, 0.97)).GetMatrix(),
            (0.94, 0.94, 1.2),
        ),  # oblique
    ],
)
def test_working_grid_is_ras_canonical_and_covers_the_reference(direction, spacing) -> None:  # type: ignore[no-untyped-def]
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    ref = image((30, 20, 12), spacing, d, origin=(5.0, -7.0, 3.0))
    grid = working_grid(ref)
    assert nib.aff2axcodes(grid.affine_ras) == ("R", "A", "S")
    for axis_spacing in grid.spacing_mm:
        assert axis_spacing == pytest.approx(1.0, rel=0.05)
    # the reference's corner voxel centres lie inside the grid
    corners = [
        ref.TransformIndexToPhysicalPoint((x, y, z))
        for x in (0, 29)
        for y in (0, 19)
        for z in (0, 11)
    ]
    g = grid.image()
    for p in corners:
        idx = np.array(g.TransformPhysicalPointToContinuousIndex(p))
        assert np.all(idx > -1.0) and np.all(idx < np.array(grid.size)), (p, idx)


def test_axial_1mm_reference_keeps_its_lattice_exactly() -> None:
    arr = np.random.default_rng(0).random((10, 12, 14)).astype(np.float32)  # (z, y, x)
    ref = image((14, 12, 10), (1.0, 1.0, 1.0), array=arr, origin=(-3.0, 4.0, 5.0))
    grid = working_grid(ref)
    out = resample(ref, grid)
    # LPS axial -> RAS: i and j flipped, k kept
    np.testing.assert_allclose(out, np.transpose(arr, (2, 1, 0))[::-1, ::-1, :], atol=1e-6)


def test_rigid_transform_apply_matches_simpleitk_and_pickles() -> None:
    t = sitk.Euler3DTransform((10.0, -5.0, 3.0), 0.05, -0.02, 0.08, (2.0, 1.0, -4.0))
    rt = RigidTransform.from_sitk(t)
    p = np.array([[12.0, 7.0, -3.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(rt.apply(p), [t.TransformPoint(tuple(x)) for x in p], atol=1e-9)
    back = rt.inverse_sitk()
    np.testing.assert_allclose(back.TransformPoint(tuple(rt.apply(p)[0])), p[0], atol=1e-9)
    assert pickle.loads(pickle.dumps(rt)).rotation_deg == pytest.approx(rt.rotation_deg)
    assert 5 < rt.rotation_deg < 6


def test_map_back_through_a_transform_onto_a_moved_series() -> None:
    # reference: a 1 mm cube; other series: a 2 mm sagittal grid of a moved patient
    ref = image((40, 40, 40), (1.0, 1.0, 1.0))
    other = image((20, 20, 20), (2.0, 2.0, 2.0), SAG, origin=(45.0, -5.0, 45.0))
    vols = {"T1c": volume(ref, "1.1"), "FLAIR": volume(other, "1.2")}
    prepared = prepare(vols, registration="none", brain_extraction="none")
    motion = RigidTransform.from_sitk(
        sitk.Euler3DTransform((20.0, 20.0, 20.0), 0.1, 0.0, -0.05, (1.5, -2.0, 0.5))
    )
    prepared.transforms["FLAIR"] = motion  # as if registration had found it
    # labels: a ball on the working grid, centred at (20, 20, 20) mm LPS
    g = prepared.grid.image()
    centre = np.array(g.TransformPhysicalPointToContinuousIndex((20.0, 20.0, 20.0)))
    ii, jj, kk = np.meshgrid(*[np.arange(s) for s in prepared.grid.size], indexing="ij")
    labels = ((ii - centre[0]) ** 2 + (jj - centre[1]) ** 2 + (kk - centre[2]) ** 2 <= 64).astype(
        np.uint8
    ) * 2
    native = map_back(labels, prepared, vols["FLAIR"])
    assert native.labels.shape == (20, 20, 20)
    assert native.datasets == vols["FLAIR"].datasets
    # every labelled native voxel, pulled back through the motion, lies in the ball
    z, y, x = np.nonzero(native.labels)
    assert len(z) > 50
    pts = np.array(
        [
            other.TransformIndexToPhysicalPoint((int(a), int(b), int(c)))
            for a, b, c in zip(x, y, z, strict=True)
        ]
    )
    inv = np.linalg.inv(motion.matrix)
    ref_pts = (pts - motion.center_mm - motion.translation_mm) @ inv.T + motion.center_mm
    assert np.all(np.linalg.norm(ref_pts - 20.0, axis=1) <= 8 + 1.0)
    # and the ball's centre moved where the motion says
    centre_native = pts.mean(axis=0)
    np.testing.assert_allclose(
        centre_native, motion.apply(np.array([20.0, 20.0, 20.0]))[0], atol=1.0
    )


def test_map_back_checks_its_inputs() -> None:
    ref = image((8, 8, 8), (1.0, 1.0, 1.0))
    vols = {"T1c": volume(ref, "1.1")}
    prepared = prepare(vols, brain_extraction="none")
    with pytest.raises(PermanentError, match="prepared grid's shape"):
        map_back(np.zeros((3, 3, 3), np.uint8), prepared, vols["T1c"])
    stranger = volume(image((8, 8, 8), (1.0, 1.0, 1.0)), "7.7")
    with pytest.raises(PermanentError, match="not among the prepared series"):
        map_back(np.zeros(prepared.grid.size, np.uint8), prepared, stranger)


def test_prepare_rejects_a_missing_reference_and_huge_fields_of_view() -> None:
    small = volume(image((8, 8, 8), (1.0, 1.0, 1.0)))
    with pytest.raises(PermanentError, match="reference role"):
        prepare({"T1": small})
    huge = volume(image((10, 10, 10), (50.0, 50.0, 50.0)))
    with pytest.raises(PermanentError, match="at most 400 mm"):
        prepare({"T1c": huge})


def test_skull_stripped_rule() -> None:
    head = np.ones((100, 100, 100), np.float32)  # 1 L of signal everywhere: a head with skull
    brainish = np.zeros((100, 100, 100), np.float32)
    brainish[20:80, 20:80, 20:80] = 1  # 216 mL, 78 % zeros
    assert brain.looks_skull_stripped({"a": brainish}, {"a": 0.001})[0]
    stripped, why = brain.looks_skull_stripped({"a": head}, {"a": 0.001})
    assert not stripped and "zero background 0%" in why


def test_grid_roundtrip() -> None:
    img = image((5, 6, 7), (1.0, 2.0, 3.0), SAG, origin=(1.0, 2.0, 3.0))
    grid = Grid.of(img)
    assert grid.same_as(Grid.of(grid.image()))
    arr = np.arange(5 * 6 * 7, dtype=np.uint8).reshape(5, 6, 7)
    np.testing.assert_array_equal(
        np.transpose(sitk.GetArrayFromImage(grid.image(arr)), (2, 1, 0)), arr
    )


def test_series_that_do_not_share_the_field_of_view_fail_with_a_reason() -> None:
    ref = volume(image((40, 40, 20), (1.0, 1.0, 2.0)), "1.1")
    far = volume(image((40, 40, 20), (1.0, 1.0, 2.0), origin=(0.0, 0.0, 150.0)), "1.2")
    with pytest.raises(PermanentError, match=r"at least 30% of its field of view.*shares 0%"):
        prepare({"T1c": ref, "FLAIR": far}, brain_extraction="none")
