"""The shared TCIA native case (Siemens, 5.5 mm axial, skull on, four own grids) through prepare.

- the brain mask covers the brain and not the skull: plausible adult volume, none of the outer
  6 mm of the head (scalp and skull) inside it, the deep upper head fully inside, its bounding
  box inside the head's;
- registration of a known motion on this clinical geometry is recovered within 1 mm / 1 degree
  relative to the unmoved registration (the case's own T1 and T1c are not aligned: the patient
  moved between them, so the absolute truth is unknown);
- prints how long each step took.
"""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from dicom_node.studygen import write_study, write_tcia_native_case
from worker.convert import convert_series
from worker.mapback import map_back
from worker.preprocess import register_rigid, resample

from .test_preprocess_registration import LPS, errors, rigid_about, rotation

pytestmark = [pytest.mark.integration, pytest.mark.data, pytest.mark.slow]

CASE = "tcia_native/TCGA-FG-6692"


@pytest.fixture(scope="module")
def tcia(datasets: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("tcia")
    study = write_tcia_native_case(datasets / CASE, out)
    timings = {}
    t0 = time.perf_counter()
    volumes = {role: convert_series(s.paths) for role, s in study.series.items()}
    timings["convert"] = time.perf_counter() - t0
    from worker.preprocess import prepare

    t0 = time.perf_counter()
    prepared = prepare(volumes)  # auto: registers (own grids) and runs deepbet (skull on)
    timings["prepare"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    native = map_back(prepared.brain_mask.astype(np.uint8), prepared, volumes["T1c"])
    timings["map_back"] = time.perf_counter() - t0
    print(
        "\nTCIA 5.5 mm, 4 series: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
        + f"; prepare steps {prepared.timings_s}"
    )
    return study, volumes, prepared, native


def head_mask(image: np.ndarray) -> np.ndarray:
    threshold = 0.05 * float(np.percentile(image, 99))  # low: the scalp is darker at the back
    head = ndimage.binary_opening(image > threshold, iterations=2)
    labels, n = ndimage.label(head)
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    head = labels == largest
    return np.stack([ndimage.binary_fill_holes(head[:, :, k]) for k in range(head.shape[2])], -1)


def test_brain_mask_covers_the_brain_not_the_skull(tcia) -> None:  # type: ignore[no-untyped-def]
    _, volumes, prepared, native = tcia
    assert prepared.spacing_mm == pytest.approx((1.0, 1.0, 1.0))
    assert any("deepbet" in n for n in prepared.notes), prepared.notes
    mask = prepared.brain_mask
    volume_ml = mask.sum() * float(np.prod(prepared.spacing_mm)) / 1000
    assert 900 <= volume_ml <= 1900, f"brain mask {volume_ml:.0f} mL"

    raw = resample(volumes["T1c"].image, prepared.grid)  # the head, skull included
    head = head_mask(raw)
    # k runs towards superior; leave out the lowest 30 mm, where the brain stem leaves through
    # the skull base. The field of view cuts the head (top, back): its edges are not scalp, so
    # the erosion treats what lies outside the grid as head (border_value=1).
    upper = np.zeros_like(head)
    lowest = np.argwhere(head)[:, 2].min()
    upper[:, :, lowest + 30 :] = True
    outer = head & ~ndimage.binary_erosion(head, iterations=6, border_value=1) & upper
    in_outer = (mask & outer).sum() / outer.sum()
    assert in_outer < 0.02, f"{in_outer:.1%} of the outer 6 mm (scalp, skull) is in the mask"

    centre_k = int(np.argwhere(head)[:, 2].mean())
    deep = ndimage.binary_erosion(head, iterations=20)
    deep[:, :, :centre_k] = False
    covered = (mask & deep).sum() / deep.sum()
    assert covered > 0.95, f"only {covered:.1%} of the deep upper head is in the mask"

    # left-right, the head lies wholly inside the field of view: the brain sits inside it
    hb, mb = np.argwhere(head), np.argwhere(mask)
    assert mb[:, 0].min() >= hb[:, 0].min() + 3 and mb[:, 0].max() <= hb[:, 0].max() - 3

    # and it maps back onto the T1c slices
    assert native.labels.shape == volumes["T1c"].shape
    native_ml = native.labels.sum() * float(np.prod(volumes["T1c"].spacing_mm)) / 1000
    assert native_ml == pytest.approx(volume_ml, rel=0.05)


def test_known_motion_recovered_on_the_clinical_geometry(
    tcia, datasets: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    _, volumes, prepared, _ = tcia
    baseline = prepared.transforms["T1"]  # T1c -> T1 as the case came
    t1c_path = next((datasets / CASE).glob("*_t1c.nii.gz"))
    t1_path = next((datasets / CASE).glob("*_t1.nii.gz"))
    t1 = nib.load(t1_path)
    centre_ras = (t1.affine @ np.append((np.array(t1.shape) - 1) / 2, 1.0))[:3]
    motion_ras = rigid_about(
        centre_ras, rotation(0, -3.0) @ rotation(1, 2.0) @ rotation(2, 4.0), np.array([3, 4, -2.0])
    )
    t1c = nib.load(t1c_path)
    study = write_study(
        {
            "T1c": (np.asanyarray(t1c.dataobj), t1c.affine),
            "T1": (np.asanyarray(t1.dataobj), motion_ras @ t1.affine),
        },
        tmp_path,
    )
    moved = convert_series(study.series["T1"].paths)
    estimated, _ = register_rigid(volumes["T1c"].image, moved.image)
    motion_lps = LPS @ motion_ras @ LPS
    baseline_4x4 = np.eye(4)
    baseline_4x4[:3, :3] = baseline.matrix
    baseline_4x4[:3, 3] = baseline.apply(np.zeros(3))[0]
    truth = motion_lps @ baseline_4x4
    dist, angle = errors(estimated, truth, LPS[:3, :3] @ centre_ras)
    print(f"TCIA T1 moved: {dist:.2f} mm / {angle:.2f} deg from motion o baseline")
    assert dist <= 1.0
    assert angle <= 1.0
