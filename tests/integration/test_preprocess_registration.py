"""Registration: a series moved by a known rigid transform is brought back within 1 mm and 1 degree.

BraTS images are co-registered, so moving the T2's geometry (the same pixels written into DICOM
with a rotated and shifted ImagePositionPatient/ImageOrientationPatient, as if the patient had
moved) makes the true T1c-to-T2 transform exactly the known one; the moved T2 has its own
(rotated) grid, as a clinical series would. Registration is multi-modal (T2 against T1c, mutual
information) and runs through ``prepare(registration="auto")``.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dicom_node.studygen import write_study
from worker.convert import convert_series
from worker.preprocess import RigidTransform, prepare

pytestmark = [pytest.mark.integration, pytest.mark.data, pytest.mark.slow]

CASE = "Brats18_CBICA_AME_1"
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def rotation(axis: int, deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    r = np.eye(3)
    i, j = [k for k in range(3) if k != axis]
    r[i, i], r[j, j], r[i, j], r[j, i] = c, c, -s, s
    return r


def rigid_about(centre_ras: np.ndarray, rot: np.ndarray, shift_mm: np.ndarray) -> np.ndarray:
    """4x4 RAS transform: rotate about ``centre_ras`` then shift."""
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = centre_ras - rot @ centre_ras + shift_mm
    return m


def errors(estimated: RigidTransform, truth_lps: np.ndarray, centre_lps: np.ndarray):  # type: ignore[no-untyped-def]
    """Max distance (mm) over the corners of a 120 x 140 x 100 mm box around the head centre,
    and the residual rotation angle (degrees)."""
    corners = centre_lps + np.array(
        [[x, y, z] for x in (-60, 60) for y in (-70, 70) for z in (-50, 50)], dtype=float
    )
    want = corners @ truth_lps[:3, :3].T + truth_lps[:3, 3]
    dist = float(np.linalg.norm(estimated.apply(corners) - want, axis=1).max())
    residual = estimated.matrix.T @ truth_lps[:3, :3]
    angle = float(np.degrees(np.arccos(np.clip((np.trace(residual) - 1) / 2, -1, 1))))
    return dist, angle


@pytest.mark.parametrize(
    ("rot_deg", "shift_mm"),
    [((4.0, -3.0, 5.0), (4.0, -3.0, 5.0))],
)
def test_known_rigid_motion_is_recovered(
    datasets: Path, tmp_path: Path, rot_deg: tuple[float, float, float], shift_mm: tuple
) -> None:
    folder = datasets / "brats" / CASE
    t1c = nib.load(folder / f"{CASE}_t1ce.nii.gz")
    t2 = nib.load(folder / f"{CASE}_t2.nii.gz")
    centre_ras = (t1c.affine @ np.append((np.array(t1c.shape) - 1) / 2, 1.0))[:3]
    rot = rotation(0, rot_deg[0]) @ rotation(1, rot_deg[1]) @ rotation(2, rot_deg[2])
    motion_ras = rigid_about(centre_ras, rot, np.array(shift_mm))
    study = write_study(
        {
            "T1c": (np.asanyarray(t1c.dataobj), t1c.affine),
            "T2": (np.asanyarray(t2.dataobj), motion_ras @ t2.affine),
        },
        tmp_path,
    )
    volumes = {role: convert_series(s.paths) for role, s in study.series.items()}
    prepared = prepare(volumes, registration="auto", brain_extraction="none")
    assert any(n.startswith("T2: registered") for n in prepared.notes), prepared.notes

    truth_lps = LPS @ motion_ras @ LPS  # T1c point -> the same anatomy in the moved T2
    dist, angle = errors(prepared.transforms["T2"], truth_lps, (LPS[:3, :3] @ centre_ras))
    before, _ = errors(RigidTransform.identity(), truth_lps, LPS[:3, :3] @ centre_ras)
    print(f"registration: {before:.1f} mm before, {dist:.2f} mm / {angle:.2f} deg after")
    assert before > 10, "the test motion must be large enough to matter"
    assert dist <= 1.0
    assert angle <= 1.0

    # and the resampled T2 lines up with the T1c again: brain outlines agree
    t1c_brain = prepared.images["T1c"] > 0
    t2_brain = prepared.images["T2"] > 0
    dice = 2 * np.sum(t1c_brain & t2_brain) / (np.sum(t1c_brain) + np.sum(t2_brain))
    assert dice > 0.97, f"brain outline Dice after registration {dice:.3f}"
