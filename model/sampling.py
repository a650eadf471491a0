"""Patch sampling and augmentation for training (imports only numpy and torch)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F


def pad_to(arr: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Zero-pad the last three axes of ``arr`` up to ``shape`` (centred)."""
    pads = [(0, 0)] * (arr.ndim - 3)
    for n, p in zip(arr.shape[-3:], shape, strict=False):
        extra = max(0, p - n)
        pads.append((extra // 2, extra - extra // 2))
    if all(a == 0 and b == 0 for a, b in pads):
        return arr
    return np.pad(arr, pads)


def sample_patch(
    image: np.ndarray,
    regions: np.ndarray,
    patch: tuple[int, int, int],
    rng: np.random.Generator,
    *,
    tumour_prob: float,
    tumour_voxels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One patch of ``image`` (C, X, Y, Z) and ``regions`` (R, X, Y, Z).

    With probability ``tumour_prob`` the patch is centred (with jitter) on a random tumour voxel,
    otherwise placed uniformly at random. Volumes smaller than the patch are zero-padded.
    """
    original = image.shape[1:]
    image = pad_to(image, patch)
    regions = pad_to(regions, patch)
    shape = image.shape[1:]
    use_tumour = tumour_voxels is not None and len(tumour_voxels) > 0 and rng.random() < tumour_prob
    centre = (
        tumour_voxels[rng.integers(len(tumour_voxels))]
        if use_tumour and tumour_voxels is not None
        else None
    )
    starts = []
    for a in range(3):
        hi = shape[a] - patch[a]
        if centre is not None:
            offset = max(0, patch[a] - original[a]) // 2  # padding added before the volume
            s = int(centre[a]) + offset - patch[a] // 2
            s += int(rng.integers(-(patch[a] // 4), patch[a] // 4 + 1))
            starts.append(int(np.clip(s, 0, hi)))
        else:
            starts.append(int(rng.integers(0, hi + 1)))
    sl = tuple(slice(s, s + p) for s, p in zip(starts, patch, strict=False))
    return image[(slice(None), *sl)], regions[(slice(None), *sl)]


def _rotation(angles: np.ndarray) -> np.ndarray:
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def augment(
    image: torch.Tensor,
    regions: torch.Tensor,
    rng: np.random.Generator,
    *,
    p_spatial: float = 0.25,
    max_rotation_deg: float = 15.0,
    scale_range: tuple[float, float] = (0.85, 1.15),
    p_intensity: float = 0.5,
    p_bias: float = 0.3,
    p_gamma: float = 0.3,
    p_noise: float = 0.0,
    p_blur: float = 0.0,
    p_lowres: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch: image (B, C, X, Y, Z) float, regions (B, R, X, Y, Z) float in {0, 1}.

    Small rotations and isotropic scaling (probability ``p_spatial``), random flips along each axis,
    a smooth multiplicative bias field per channel (probability ``p_bias``), a per-channel gamma
    (contrast) change (probability ``p_gamma``), and per-channel intensity scale/shift (probability
    ``p_intensity``). Off by default (``gliomaseg train --scan-quality-aug`` turns them on with
    nnU-Net's probabilities): Gaussian noise (``p_noise``), Gaussian blur (``p_blur``) and a
    simulated low acquisition resolution (``p_lowres``), the three standard nnU-Net intensity
    augmentations this set lacked, for older and thick-slice scans. Brain background stays 0.
    """
    b = image.shape[0]
    if rng.random() < p_spatial:
        thetas = []
        for _ in range(b):
            angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
            scale = rng.uniform(*scale_range)
            m = _rotation(angles) / scale
            thetas.append(np.concatenate([m, np.zeros((3, 1))], axis=1))
        theta = torch.tensor(np.stack(thetas), dtype=image.dtype, device=image.device)
        grid = F.affine_grid(theta, list(image.shape), align_corners=False)
        image = F.grid_sample(
            image, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        regions = F.grid_sample(
            regions, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        regions = (regions >= 0.5).to(image.dtype)
    for axis in (2, 3, 4):
        if rng.random() < 0.5:
            image = image.flip(axis)
            regions = regions.flip(axis)
    if rng.random() < p_lowres:
        image = _low_resolution(image, rng)
    if rng.random() < p_blur:
        image = _blur(image, rng)
    if rng.random() < p_noise:
        image = _noise(image, rng)
    if rng.random() < p_bias:
        image = _bias_field(image, rng)
    if rng.random() < p_gamma:
        image = _gamma(image, rng)
    if rng.random() < p_intensity:
        c = image.shape[1]
        gain = torch.tensor(
            rng.uniform(0.9, 1.1, (b, c, 1, 1, 1)), dtype=image.dtype, device=image.device
        )
        shift = torch.tensor(
            rng.uniform(-0.1, 0.1, (b, c, 1, 1, 1)), dtype=image.dtype, device=image.device
        )
        brain = (image != 0).any(dim=1, keepdim=True)
        image = torch.where(brain, image * gain + shift, image)
    return image.contiguous(), regions.contiguous()


def _brain_of(image: torch.Tensor) -> torch.Tensor:
    return (image != 0).any(dim=1, keepdim=True)


def _noise(
    image: torch.Tensor, rng: np.random.Generator, max_variance: float = 0.1
) -> torch.Tensor:
    """Additive Gaussian noise inside the brain, variance drawn from [0, ``max_variance``] (nnU-Net)."""
    sd = float(np.sqrt(rng.uniform(0, max_variance)))
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    noise = torch.randn(image.shape, generator=gen, dtype=image.dtype).to(image.device) * sd
    return torch.where(_brain_of(image), image + noise, image)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _per_channel(
    image: torch.Tensor,
    rng: np.random.Generator,
    p_channel: float,
    transform: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Apply ``transform`` to each channel (B, 1, X, Y, Z) with probability ``p_channel``; 0 outside
    the brain afterwards."""
    brain = _brain_of(image)
    out = image.clone()
    for ch in range(image.shape[1]):
        if rng.random() < p_channel:
            out[:, ch : ch + 1] = transform(image[:, ch : ch + 1])
    return torch.where(brain, out, torch.zeros_like(out))


def _blur(
    image: torch.Tensor,
    rng: np.random.Generator,
    sigma_range: tuple[float, float] = (0.5, 1.0),
    p_channel: float = 0.5,
) -> torch.Tensor:
    """Gaussian blur (sigma in voxels) of each channel with probability ``p_channel`` (nnU-Net)."""

    def blur(v: torch.Tensor) -> torch.Tensor:
        k = _gaussian_kernel(float(rng.uniform(*sigma_range))).to(image.device, image.dtype)
        r = (len(k) - 1) // 2
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = len(k)
            pad = [0, 0, 0, 0, 0, 0]
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
            v = F.conv3d(F.pad(v, pad, mode="replicate"), k.view(shape))
        return v

    return _per_channel(image, rng, p_channel, blur)


def _low_resolution(
    image: torch.Tensor,
    rng: np.random.Generator,
    zoom_range: tuple[float, float] = (0.5, 1.0),
    p_channel: float = 0.5,
) -> torch.Tensor:
    """Simulate a coarser acquisition: each channel (probability ``p_channel``) is downsampled by a
    zoom drawn from ``zoom_range`` (nearest) and upsampled back (trilinear), as nnU-Net does."""
    size = tuple(int(n) for n in image.shape[2:])

    def coarsen(v: torch.Tensor) -> torch.Tensor:
        zoom = float(rng.uniform(*zoom_range))
        small = tuple(max(1, int(round(n * zoom))) for n in size)
        v = F.interpolate(v, size=small, mode="nearest")
        return F.interpolate(v, size=size, mode="trilinear", align_corners=False)

    return _per_channel(image, rng, p_channel, coarsen)


def _bias_field(
    image: torch.Tensor, rng: np.random.Generator, max_log_gain: float = 0.5
) -> torch.Tensor:
    """A smooth multiplicative field (MR intensity inhomogeneity) applied to z-scored images.

    On raw intensities x * b; after z-scoring with brain mean m and deviation s that is
    z * b + (m / s) * (b - 1); m / s is drawn from 2-4 (typical of brain MR).
    """
    b, c = image.shape[:2]
    coarse = torch.tensor(
        rng.uniform(-1, 1, (b, c, 3, 3, 3)), dtype=image.dtype, device=image.device
    )
    field = F.interpolate(coarse, size=image.shape[2:], mode="trilinear", align_corners=True)
    gain = torch.tensor(
        rng.uniform(0, max_log_gain, (b, c, 1, 1, 1)), dtype=image.dtype, device=image.device
    )
    field = torch.exp(field * gain)
    k = torch.tensor(rng.uniform(2, 4, (b, c, 1, 1, 1)), dtype=image.dtype, device=image.device)
    brain = (image != 0).any(dim=1, keepdim=True)
    return torch.where(brain, image * field + k * (field - 1), image)


def _gamma(
    image: torch.Tensor, rng: np.random.Generator, gamma_range: tuple[float, float] = (0.7, 1.5)
) -> torch.Tensor:
    """Per-channel gamma on the brain's intensity range, mean and deviation kept (as nnU-Net does).

    Each channel's brain voxels are rescaled to [0, 1], raised to a gamma drawn from
    ``gamma_range``, mapped back to the original range, and re-standardised to the original mean
    and standard deviation: contrast between tissues changes, the z-scoring stays valid.
    """
    b, c = image.shape[:2]
    brain = (image != 0).any(dim=1, keepdim=True)
    out = image.clone()
    for i in range(b):
        m = brain[i, 0]
        if not bool(m.any()):
            continue
        for ch in range(c):
            v = image[i, ch][m]
            lo, hi = v.min(), v.max()
            if float(hi - lo) < 1e-6:
                continue
            g = float(rng.uniform(*gamma_range))
            w = ((v - lo) / (hi - lo)).pow(g) * (hi - lo) + lo
            w = (w - w.mean()) / (w.std() + 1e-6) * v.std() + v.mean()
            out[i, ch][m] = w
    return out


def region_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Binary cross-entropy + soft Dice (batch Dice per region), averaged over the regions."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probs = torch.sigmoid(logits)
    dims = (0, 2, 3, 4)
    inter = (probs * target).sum(dims)
    denom = probs.sum(dims) + target.sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)
    return bce + (1 - dice).mean()
