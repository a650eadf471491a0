"""Bring the four converted series onto one working grid, as the model expects.

``prepare(volumes)`` does, in order:

1. **Working grid** (:func:`working_grid`): the reference series' (T1c) own voxel axes, permuted
   and flipped to the RAS+ closest-canonical order (what ``nibabel.as_closest_canonical`` gives),
   covering the reference's voxel centres, at ~1 mm: an axis whose spacing is already within 5 %
   of 1 mm keeps it exactly, others get 1 mm, starting at the reference's first voxel centre.
   Why 1 mm: the training data (BraTS) are 1 mm isotropic, so the model's own resampling and
   normalisation (model/preprocessing.py) see serving inputs exactly as they saw training ones;
   a BraTS-like 1 mm study keeps its grid voxel for voxel (map-back is then exact), and a
   5 mm series whose in-plane spacing is 1 mm keeps every native voxel centre on the lattice.
   A 1 mm float32 grid of a head is about 40 MB per sequence; resampling it takes < 1 s.
2. **Rigid co-registration** (:func:`register_rigid`) of every other series to the reference:
   SimpleITK, Mattes mutual information (multi-modal), Euler 3D, two resolution levels on a
   2 mm copy of the reference grid, regular-step gradient descent, then a short polish against
   the native moving image. ``registration="auto"`` skips a series that already shares the
   reference's grid and FrameOfReferenceUID *and* looks skull-stripped (preprocessed, BraTS-like
   input); native series are registered even on a shared grid, because patients move between
   series (the shared TCIA case's T1 and T1c share grid and frame yet are 9 degrees apart).
   ``"rigid"`` always registers, ``"none"`` trusts the scanner coordinates.
3. **Resampling** of every series onto the working grid through its transform (linear).
4. **Brain extraction** (:mod:`worker.brain`): ``"auto"`` keeps the images as they are when they
   already look skull-stripped (large exact-zero background, brain-sized foreground) and runs
   deepbet otherwise; ``"deepbet"`` always runs it; ``"none"`` keeps the whole head (mask = all).
   deepbet runs on the T1 (its training contrast; the tumour's enhancing rim and dura in the T1c
   are what it handles worst), falling back to the T1c when no T1 is given.
   Voxels outside the mask are set to 0 (BraTS-like), and the mask is passed along too.

Everything map-back needs (grid, transforms) is kept in :class:`Prepared`, as plain numpy data
so it pickles between workers.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import SimpleITK as sitk

from config.errors import PermanentError
from config.logs import ref
from worker import brain
from worker.convert import Volume

log = logging.getLogger(__name__)

ROLES = ("T1", "T1c", "T2", "FLAIR")
WORKING_SPACING_MM = 1.0
KEEP_SPACING_REL_TOL = 0.05  # a reference spacing within 5 % of the target is kept exactly
REGISTRATION_SPACING_MM = 2.0
COARSE_SAMPLING = 0.05  # fraction of the 2 mm fixed voxels drawn as metric samples
FINE_SAMPLING = 0.03
FINE_ITERATIONS = 20
SAME_GRID_TOL_MM = 0.01
MAX_EXTENT_MM = 400.0  # a head fits; a bigger field of view is not a brain study
MIN_OVERLAP = 0.3  # of the smaller field of view, shared with the reference (bounding boxes)
MAX_ROTATION_DEG = 30.0  # registration results beyond these are not patient motion
MAX_SHIFT_MM = 60.0

BrainExtraction = Literal["auto", "deepbet", "none"]
Registration = Literal["auto", "rigid", "none"]
_LPS_OF_RAS = np.diag([-1.0, -1.0, 1.0])  # RAS axis vectors expressed in LPS


class PreprocessError(PermanentError):
    """The series cannot be brought onto one grid (bad geometry, registration failed)."""


@dataclass(frozen=True, eq=False)
class Grid:
    """A voxel grid in LPS physical space, SimpleITK conventions.

    Numpy arrays on this grid are indexed ``[i, j, k]`` = SimpleITK ``(x, y, z)`` (the transpose
    of ``sitk.GetArrayFromImage``). For the working grid, i, j, k run towards R, A, S.
    """

    size: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major; columns are the axis unit vectors (LPS)

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        return cls(
            tuple(int(v) for v in image.GetSize()),  # type: ignore[arg-type]
            tuple(float(v) for v in image.GetSpacing()),  # type: ignore[arg-type]
            tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
            tuple(float(v) for v in image.GetDirection()),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.size

    def image(self, array_ijk: np.ndarray | None = None) -> sitk.Image:
        """An image on this grid (zeros when ``array_ijk`` is None)."""
        if array_ijk is None:
            img = sitk.Image(list(self.size), sitk.sitkUInt8)
        else:
            if tuple(array_ijk.shape) != self.size:
                raise ValueError(f"array shape {array_ijk.shape} does not match grid {self.size}")
            img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array_ijk, (2, 1, 0))))
        img.SetSpacing(self.spacing_mm)
        img.SetOrigin(self.origin_mm)
        img.SetDirection(self.direction)
        return img

    @property
    def affine_lps(self) -> np.ndarray:
        a = np.eye(4)
        a[:3, :3] = np.asarray(self.direction).reshape(3, 3) * np.asarray(self.spacing_mm)
        a[:3, 3] = self.origin_mm
        return a

    @property
    def affine_ras(self) -> np.ndarray:
        """The nibabel affine of arrays indexed [i, j, k] on this grid."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps

    def same_as(self, other: Grid, tol_mm: float = SAME_GRID_TOL_MM) -> bool:
        return (
            self.size == other.size
            and np.allclose(self.spacing_mm, other.spacing_mm, atol=1e-4)
            and np.allclose(self.origin_mm, other.origin_mm, atol=tol_mm)
            and np.allclose(self.direction, other.direction, atol=1e-4)
        )


@dataclass(frozen=True, eq=False)
class RigidTransform:
    """x_native = matrix @ (x_ref - center) + center + translation (LPS mm).

    Maps a point of the reference's physical space to the same anatomy in this series' scanner
    space (SimpleITK's fixed-to-moving convention, what resampling needs).
    """

    matrix: np.ndarray
    translation_mm: np.ndarray
    center_mm: np.ndarray

    @classmethod
    def identity(cls) -> RigidTransform:
        return cls(np.eye(3), np.zeros(3), np.zeros(3))

    @classmethod
    def from_sitk(cls, t: sitk.Transform) -> RigidTransform:
        t = sitk.Euler3DTransform(t) if not isinstance(t, sitk.Euler3DTransform) else t
        return cls(
            np.asarray(t.GetMatrix(), dtype=np.float64).reshape(3, 3),
            np.asarray(t.GetTranslation(), dtype=np.float64),
            np.asarray(t.GetCenter(), dtype=np.float64),
        )

    def to_sitk(self) -> sitk.AffineTransform:
        t = sitk.AffineTransform(3)
        t.SetMatrix(tuple(float(v) for v in self.matrix.ravel()))
        t.SetTranslation(tuple(float(v) for v in self.translation_mm))
        t.SetCenter(tuple(float(v) for v in self.center_mm))
        return t

    def inverse_sitk(self) -> sitk.Transform:
        return self.to_sitk().GetInverse()

    def apply(self, points_mm: np.ndarray) -> np.ndarray:
        p = np.atleast_2d(points_mm)
        return (p - self.center_mm) @ self.matrix.T + self.center_mm + self.translation_mm

    @property
    def rotation_deg(self) -> float:
        cos = (np.trace(self.matrix) - 1.0) / 2.0
        return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))

    @property
    def is_identity(self) -> bool:
        return bool(np.allclose(self.matrix, np.eye(3)) and np.allclose(self.translation_mm, 0))


@dataclass(frozen=True, eq=False)
class Prepared:
    """The model's input and what map-back needs.

    Attributes
    ----------
    images
        role -> float32 array [i, j, k] on ``grid`` (RAS+ closest-canonical voxel order), raw
        intensities, 0 outside the brain mask.
    spacing_mm
        Voxel size of ``grid`` along i, j, k.
    brain_mask
        bool array, same shape (all True when brain extraction was "none").
    grid
        The working grid (LPS physical space of the reference series).
    reference
        The role whose physical space the grid lives in (T1c).
    series_uids
        role -> SeriesInstanceUID.
    transforms
        role -> reference-to-native rigid transform (identity for the reference).
    native_grids
        role -> the series' own grid.
    notes
        Human-readable decisions (registration skipped/metric, brain extraction method).
    timings_s
        Seconds per step.
    """

    images: dict[str, np.ndarray]
    spacing_mm: tuple[float, float, float]
    brain_mask: np.ndarray
    grid: Grid
    reference: str
    series_uids: dict[str, str]
    transforms: dict[str, RigidTransform]
    native_grids: dict[str, Grid]
    notes: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def affine_ras(self) -> np.ndarray:
        return self.grid.affine_ras

    def role_of(self, series_uid: str) -> str:
        for role, uid in self.series_uids.items():
            if uid == series_uid:
                return role
        raise PreprocessError(
            f"series {ref(series_uid)} was not among the prepared series "
            f"({', '.join(self.series_uids)}); map back only onto a series that was prepared"
        )


# ----------------------------------------------------------------------------------------------
# working grid


def working_grid(reference: sitk.Image, spacing_mm: float = WORKING_SPACING_MM) -> Grid:
    """The RAS-canonical grid covering ``reference``'s voxel centres at ~``spacing_mm``."""
    d = np.asarray(reference.GetDirection(), dtype=np.float64).reshape(3, 3)
    size = np.asarray(reference.GetSize())
    spacing = np.asarray(reference.GetSpacing(), dtype=np.float64)
    origin = np.asarray(reference.GetOrigin(), dtype=np.float64)
    # Which reference axis best matches each RAS world axis (like nibabel.io_orientation).
    cos = _LPS_OF_RAS.T @ d  # cos[w, a] = RAS axis w . voxel axis a
    perm = max(
        itertools.permutations(range(3)),
        key=lambda p: float(np.prod([abs(cos[w, p[w]]) for w in range(3)])),
    )
    signs = [1.0 if cos[w, perm[w]] >= 0 else -1.0 for w in range(3)]
    new_dir = np.column_stack([signs[w] * d[:, perm[w]] for w in range(3)])
    new_spacing, new_size = [], []
    corner_index = np.zeros(3)
    for w in range(3):
        a = perm[w]
        s = float(spacing[a])
        target = s if abs(s - spacing_mm) <= KEEP_SPACING_REL_TOL * spacing_mm else spacing_mm
        extent = float((size[a] - 1) * s)
        if extent > MAX_EXTENT_MM:
            raise PreprocessError(
                f"the reference series spans {extent:.0f} mm along one axis; a brain study "
                f"spans at most {MAX_EXTENT_MM:.0f} mm"
            )
        new_spacing.append(target)
        new_size.append(int(np.floor(extent / target + 1e-6)) + 1)
        corner_index[a] = 0 if signs[w] > 0 else size[a] - 1
    new_origin = origin + d @ (corner_index * spacing)
    return Grid(
        tuple(new_size),  # type: ignore[arg-type]
        tuple(new_spacing),  # type: ignore[arg-type]
        tuple(float(v) for v in new_origin),  # type: ignore[arg-type]
        tuple(float(v) for v in new_dir.ravel()),
    )


def fov_overlap(a: sitk.Image, b: sitk.Image) -> float:
    """Shared fraction of the smaller of two fields of view (axis-aligned LPS bounding boxes)."""

    def box(img: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
        size = np.asarray(img.GetSize()) - 1
        corners = np.array(
            [
                img.TransformContinuousIndexToPhysicalPoint(
                    [float(c) for c in (x * size[0], y * size[1], z * size[2])]
                )
                for x in (0, 1)
                for y in (0, 1)
                for z in (0, 1)
            ]
        )
        return corners.min(0), corners.max(0)

    (alo, ahi), (blo, bhi) = box(a), box(b)
    inter = np.prod(np.clip(np.minimum(ahi, bhi) - np.maximum(alo, blo), 0, None))
    smaller = min(np.prod(ahi - alo), np.prod(bhi - blo))
    return float(inter / smaller) if smaller > 0 else 0.0


def _coarse(grid: Grid, spacing_mm: float) -> Grid:
    extent = (np.asarray(grid.size) - 1) * np.asarray(grid.spacing_mm)
    size = tuple(int(np.floor(e / spacing_mm + 1e-6)) + 1 for e in extent)
    return Grid(size, (spacing_mm,) * 3, grid.origin_mm, grid.direction)  # type: ignore[arg-type]


def resample(
    image: sitk.Image,
    grid: Grid,
    transform: RigidTransform | None = None,
    *,
    nearest: bool = False,
) -> np.ndarray:
    """``image`` sampled on ``grid`` (point p of grid space read at transform(p)); [i, j, k]."""
    t = transform.to_sitk() if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    out = sitk.Resample(
        image,
        grid.image(),
        t,
        sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear,
        0.0,
        image.GetPixelID() if nearest else sitk.sitkFloat32,
    )
    return np.transpose(sitk.GetArrayFromImage(out), (2, 1, 0))


# ----------------------------------------------------------------------------------------------
# registration


def register_rigid(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    same_frame: bool = True,
    spacing_mm: float = REGISTRATION_SPACING_MM,
    seed: int = 20261204,
) -> tuple[RigidTransform, float]:
    """Rigid transform taking ``fixed`` physical points to ``moving`` ones, and the final metric.

    Mattes mutual information (multi-modal) with random samples drawn with a fixed seed (a re-run
    gives the same result), regular-step gradient descent, physical-shift scales, in two stages:

    1. coarse: both images smoothed and resampled to ``spacing_mm`` (each on its own axes, so
       nothing outside the fixed field of view is lost), two levels (4 and 2 mm);
    2. fine: the native moving image against the 2 mm fixed copy, small steps, few iterations.

    The metric's cost grows with the size of the moving image, so stage 1 does the long walk on
    small images and stage 2 only polishes (sub-millimetre).
    ``same_frame``: both series come from one scanner session (same FrameOfReferenceUID), so the
    identity is the right start; otherwise start by aligning the centres of mass.
    """
    fixed_grid = _coarse(working_grid(fixed, spacing_mm), spacing_mm)
    fixed_img = fixed_grid.image(resample(_smooth(fixed, spacing_mm), fixed_grid))
    moving_f = sitk.Cast(moving, sitk.sitkFloat32)
    moving_grid = _coarse(working_grid(moving_f, spacing_mm), spacing_mm)
    moving_small = moving_grid.image(resample(_smooth(moving_f, spacing_mm), moving_grid))
    if same_frame:
        initial = sitk.Euler3DTransform()
        initial.SetCenter(
            fixed_img.TransformContinuousIndexToPhysicalPoint(
                [(s - 1) / 2.0 for s in fixed_img.GetSize()]
            )
        )
    else:
        initial = sitk.Euler3DTransform(
            sitk.CenteredTransformInitializer(
                fixed_img,
                moving_small,
                sitk.Euler3DTransform(),
                sitk.CenteredTransformInitializerFilter.MOMENTS,
            )
        )

    def run(
        moving_img: sitk.Image,
        start: sitk.Euler3DTransform,
        *,
        shrink: list[int],
        sigmas_mm: list[float],
        learning_rate: float,
        iterations: int,
        sampling: float,
        min_step: float,
    ) -> tuple[sitk.Euler3DTransform, float]:
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(sampling, seed)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=learning_rate,
            minStep=min_step,
            numberOfIterations=iterations,
            relaxationFactor=0.5,
            gradientMagnitudeTolerance=1e-6,
        )
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel(shrink)
        reg.SetSmoothingSigmasPerLevel(sigmas_mm)
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        reg.SetInitialTransform(start, inPlace=False)
        try:
            result = reg.Execute(fixed_img, moving_img)
        except RuntimeError as exc:
            raise PreprocessError(
                f"rigid registration failed (the series may not overlap the reference): {exc}"
            ) from exc
        euler = sitk.Euler3DTransform(sitk.CompositeTransform(result).GetBackTransform())
        return euler, float(reg.GetMetricValue())

    coarse, _ = run(
        moving_small,
        initial,
        shrink=[2, 1],
        sigmas_mm=[2.0, 1.0],
        learning_rate=2.0,
        iterations=200,
        sampling=COARSE_SAMPLING,
        min_step=1e-3,
    )
    fine, metric = run(
        moving_f,
        coarse,
        shrink=[1],
        sigmas_mm=[0.0],
        learning_rate=0.25,
        iterations=FINE_ITERATIONS,
        sampling=FINE_SAMPLING,
        min_step=1e-3,
    )
    return RigidTransform.from_sitk(fine), metric


def _smooth(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Anti-aliasing before resampling to ``spacing_mm`` (sigma = half the new spacing)."""
    return sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), spacing_mm / 2.0)


# ----------------------------------------------------------------------------------------------
# prepare


def prepare(
    volumes: Mapping[str, Volume],
    *,
    reference: str = "T1c",
    brain_extraction: BrainExtraction | str = "auto",
    registration: Registration | str = "auto",
    spacing_mm: float = WORKING_SPACING_MM,
) -> Prepared:
    """Register, resample and skull-strip ``volumes`` (role -> Volume) onto one RAS grid."""
    if reference not in volumes:
        raise PreprocessError(
            f"the reference role must be among the series; reference {reference!r}, "
            f"received {', '.join(volumes) or 'none'}"
        )
    if brain_extraction not in ("auto", "deepbet", "none"):
        raise ValueError(
            f"brain_extraction must be auto, deepbet or none; got {brain_extraction!r}"
        )
    if registration not in ("auto", "rigid", "none"):
        raise ValueError(f"registration must be auto, rigid or none; got {registration!r}")
    timings: dict[str, float] = {}
    notes: list[str] = []
    ref_volume = volumes[reference]
    t0 = time.perf_counter()
    grid = working_grid(ref_volume.image, spacing_mm)
    native_grids = {role: Grid.of(v.image) for role, v in volumes.items()}

    natives = {role: sitk.GetArrayViewFromImage(v.image) for role, v in volumes.items()}
    stripped, stripped_why = brain.looks_skull_stripped(
        natives,
        {role: float(np.prod(v.image.GetSpacing())) / 1000.0 for role, v in volumes.items()},
    )
    del natives
    for role, volume in volumes.items():
        overlap = fov_overlap(volume.image, ref_volume.image)
        if role != reference and overlap < MIN_OVERLAP:
            raise PreprocessError(
                f"the {role} series must share at least {MIN_OVERLAP:.0%} of its field of view "
                f"with the {reference} series; it shares {overlap:.0%} (not the same anatomy?)"
            )
    transforms: dict[str, RigidTransform] = {}
    for role, volume in volumes.items():
        if role == reference:
            transforms[role] = RigidTransform.identity()
            continue
        same_frame = (
            volume.frame_of_reference_uid is not None
            and volume.frame_of_reference_uid == ref_volume.frame_of_reference_uid
        )
        same_grid = native_grids[role].same_as(native_grids[reference])
        # Same grid and frame alone do not prove alignment: a patient moves between series
        # (the TCIA case's T1 and T1c share grid and frame but are 9 degrees apart). Only
        # preprocessed, BraTS-like input (skull-stripped on one grid) is taken as co-registered.
        if registration == "none" or (
            registration == "auto" and same_grid and same_frame and stripped
        ):
            transforms[role] = RigidTransform.identity()
            why = (
                "registration off"
                if registration == "none"
                else "same grid and frame, skull-stripped: co-registered input"
            )
            notes.append(f"{role}: not registered ({why})")
            continue
        t1 = time.perf_counter()
        transform, metric = register_rigid(ref_volume.image, volume.image, same_frame=same_frame)
        transforms[role] = transform
        shift = float(np.linalg.norm(transform.translation_mm))
        if transform.rotation_deg > MAX_ROTATION_DEG or shift > MAX_SHIFT_MM:
            raise PreprocessError(
                f"registering {role} to {reference} needs at most {MAX_ROTATION_DEG:.0f} degrees "
                f"and {MAX_SHIFT_MM:.0f} mm to be patient motion; it found "
                f"{transform.rotation_deg:.1f} degrees and {shift:.1f} mm (different anatomy "
                "or a failed registration)"
            )
        notes.append(
            f"{role}: registered to {reference} (rotation {transform.rotation_deg:.2f} deg, "
            f"shift {shift:.2f} mm, MI {metric:.3f})"
        )
        timings[f"register_{role}"] = round(time.perf_counter() - t1, 3)

    t1 = time.perf_counter()
    images = {
        role: resample(volume.image, grid, transforms[role]) for role, volume in volumes.items()
    }
    timings["resample"] = round(time.perf_counter() - t1, 3)

    t1 = time.perf_counter()
    voxel_ml = float(np.prod(grid.spacing_mm)) / 1000.0
    if brain_extraction == "none":
        mask = np.ones(grid.size, dtype=bool)
        notes.append("brain extraction: none")
    else:
        if brain_extraction == "auto" and stripped:
            mask = brain.nonzero_mask(images)
            notes.append(f"brain extraction: skipped, already skull-stripped ({stripped_why})")
        else:
            source = "T1" if "T1" in images else reference
            mask = brain.deepbet_mask(images[source], grid.spacing_mm)
            notes.append(
                f"brain extraction: deepbet on {source} ({mask.sum() * voxel_ml:.0f} mL; "
                f"{stripped_why})"
            )
        for array in images.values():
            array[~mask] = 0.0
    timings["brain_extraction"] = round(time.perf_counter() - t1, 3)
    timings["total"] = round(time.perf_counter() - t0, 3)
    log.info(
        "prepared",
        extra={
            "series_ref": ref(ref_volume.series_uid),
            "grid": list(grid.size),
            "spacing_mm": list(grid.spacing_mm),
            "timings_s": timings,
        },
    )
    return Prepared(
        images=images,
        spacing_mm=grid.spacing_mm,
        brain_mask=mask,
        grid=grid,
        reference=reference,
        series_uids={role: v.series_uid for role, v in volumes.items()},
        transforms=transforms,
        native_grids=native_grids,
        notes=notes,
        timings_s=timings,
    )
