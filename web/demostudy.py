"""The demo's synthetic case: the MNI152 brain that ships inside nilearn, with a made-up tumour.

Nothing is downloaded: ``nilearn.datasets.load_mni152_template`` and the grey / white matter
templates are files inside the nilearn wheel. Four sequences are synthesised from the tissue
maps with textbook contrasts (T1: white > grey > CSF; T2: CSF > grey > white; FLAIR: CSF dark,
edema bright; T1c: T1 with an enhancing rim). The tumour is a lumpy sphere in the right
hemisphere: necrotic core (label 1), enhancing rim (label 4) and surrounding edema (label 2),
the BraTS 2017-2021 labels. It is NOT a patient and its volumes mean nothing clinically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROLES = ("T1", "T1c", "T2", "FLAIR")

# relative signal of each tissue class per sequence: csf, grey, white, necrosis, enhancing, edema
CONTRASTS: dict[str, tuple[float, float, float, float, float, float]] = {
    "T1": (0.25, 0.60, 0.95, 0.30, 0.55, 0.50),
    "T1c": (0.25, 0.60, 0.95, 0.25, 1.45, 0.50),
    "T2": (1.30, 0.70, 0.45, 1.35, 0.85, 1.05),
    "FLAIR": (0.15, 0.75, 0.55, 0.55, 0.95, 1.35),
}
LABEL_NECROTIC, LABEL_EDEMA, LABEL_ENHANCING = 1, 2, 4


@dataclass(frozen=True)
class SyntheticCase:
    volumes: dict[str, tuple[np.ndarray, np.ndarray]]  # role -> (float32 array, RAS affine)
    labels: np.ndarray  # uint8, BraTS labels, same grid
    affine: np.ndarray
    truth_ml: dict[str, float]  # the phantom's own volumes (what a perfect model would find)


def tumour_labels(
    shape: tuple[int, int, int],
    affine: np.ndarray,
    brain: np.ndarray,
    *,
    centre_mm: tuple[float, float, float] = (28.0, -12.0, 18.0),
    radius_mm: float = 20.0,
    seed: int = 7,
) -> np.ndarray:
    """Labels of a lumpy tumour centred at ``centre_mm`` (world RAS); edema stays in the brain."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    xyz = (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape((3, *shape))
    dist = np.sqrt(sum((xyz[a] - centre_mm[a]) ** 2 for a in range(3))) / radius_mm
    lumps = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=4.0)
    lumps /= max(float(np.abs(lumps).max()), 1e-6)
    d = dist * (1.0 + 0.35 * lumps)
    labels = np.zeros(shape, np.uint8)
    labels[(d < 1.4) & brain] = LABEL_EDEMA
    labels[d < 0.8] = LABEL_ENHANCING
    labels[d < 0.5] = LABEL_NECROTIC
    return labels


def synthetic_case(*, resolution_mm: int = 2, seed: int = 7, noise: float = 0.03) -> SyntheticCase:
    """Build the four sequences and the labels on the MNI152 grid at ``resolution_mm``."""
    from nilearn import datasets
    from scipy.ndimage import gaussian_filter

    template = datasets.load_mni152_template(resolution=resolution_mm)
    gm_img = datasets.load_mni152_gm_template(resolution=resolution_mm)
    wm_img = datasets.load_mni152_wm_template(resolution=resolution_mm)
    affine = np.asarray(template.affine, dtype=np.float64)
    t1_template = np.asarray(template.get_fdata(), np.float32)
    gm = np.clip(np.asarray(gm_img.get_fdata(), np.float32), 0, 1)
    wm = np.clip(np.asarray(wm_img.get_fdata(), np.float32), 0, 1)
    brain = t1_template > 0.05
    csf = np.where(brain, np.clip(1.0 - gm - wm, 0, 1), 0).astype(np.float32)
    labels = tumour_labels(t1_template.shape, affine, brain, seed=seed)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed + 1)
    masks = {
        LABEL_NECROTIC: labels == LABEL_NECROTIC,
        LABEL_ENHANCING: labels == LABEL_ENHANCING,
        LABEL_EDEMA: labels == LABEL_EDEMA,
    }
    # soft tumour boundaries, so the synthetic images do not show voxel staircases
    soft = {k: gaussian_filter(m.astype(np.float32), 0.7) for k, m in masks.items()}
    tumour = np.clip(sum(soft.values()), 0, 1)
    volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for role in ROLES:
        c_csf, c_gm, c_wm, c_nec, c_enh, c_ede = CONTRASTS[role]
        normal = c_csf * csf + c_gm * gm + c_wm * wm
        if role in ("T1", "T1c"):  # keep the template's own T1 texture
            normal = 0.5 * normal + 0.5 * t1_template * (c_wm / max(float(t1_template.max()), 1e-6))
        lesion = (
            c_nec * soft[LABEL_NECROTIC] + c_enh * soft[LABEL_ENHANCING] + c_ede * soft[LABEL_EDEMA]
        )
        image = (1 - tumour) * normal + lesion
        image = image * (1 + noise * rng.standard_normal(image.shape).astype(np.float32))
        image = np.where(brain | (labels > 0), np.clip(image, 0, None), 0) * 1000.0
        volumes[role] = (image.astype(np.float32), affine)
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    n = {k: int(m.sum()) for k, m in masks.items()}
    truth = {
        "necrotic": n[LABEL_NECROTIC] * voxel_ml,
        "enhancing": n[LABEL_ENHANCING] * voxel_ml,
        "edema": n[LABEL_EDEMA] * voxel_ml,
    }
    truth["tumor_core"] = truth["necrotic"] + truth["enhancing"]
    truth["whole_tumor"] = truth["tumor_core"] + truth["edema"]
    return SyntheticCase(volumes=volumes, labels=labels, affine=affine, truth_ml=truth)
