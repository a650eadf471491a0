"""Sliding-window inference with Gaussian-weighted blending (imports only numpy and torch)."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def gaussian_weights(patch: tuple[int, int, int], sigma_scale: float = 0.125) -> torch.Tensor:
    """Separable Gaussian importance map (max 1, min clamped above 0), as nnU-Net blends windows."""
    axes = []
    for n in patch:
        x = torch.arange(n, dtype=torch.float32) - (n - 1) / 2
        axes.append(torch.exp(-0.5 * (x / (n * sigma_scale)) ** 2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    w = w / w.max()
    return w.clamp_min(1e-3)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1 - overlap)))
    n = int(np.ceil((size - patch) / step)) + 1
    return sorted({int(round(i * (size - patch) / (n - 1))) for i in range(n)})


@torch.no_grad()
def sliding_window_probs(
    net: torch.nn.Module,
    image: torch.Tensor,
    patch: tuple[int, int, int],
    *,
    overlap: float = 0.5,
    device: torch.device | str = "cpu",
    stitch_device: torch.device | str | None = None,
    mirror: bool = False,
    amp: bool = False,
) -> torch.Tensor:
    """Sigmoid probabilities (R, X, Y, Z) on the CPU for ``image`` (C, X, Y, Z).

    Windows of ``patch`` overlap by ``overlap``; each is weighted by a Gaussian so that window borders
    count least. With ``mirror`` each window is also run flipped along every axis combination (8 passes).
    Accumulation happens on ``stitch_device`` (default: ``device``).
    """
    device = torch.device(device)
    stitch = torch.device(stitch_device) if stitch_device is not None else device
    c, *shape = image.shape
    padded = [max(s, p) for s, p in zip(shape, patch, strict=False)]
    pads = []
    for s, p in zip(reversed(shape), reversed(padded), strict=False):
        extra = p - s
        pads += [extra // 2, extra - extra // 2]
    x = F.pad(image, pads) if any(pads) else image
    weights = gaussian_weights(patch).to(stitch)
    acc: torch.Tensor | None = None
    norm = torch.zeros(padded, dtype=torch.float32, device=stitch)
    flips: list[tuple[int, ...]] = [()]
    if mirror:
        flips = [f for r in range(4) for f in itertools.combinations((2, 3, 4), r)]
    starts = [window_starts(padded[a], patch[a], overlap) for a in range(3)]
    for sx, sy, sz in itertools.product(*starts):
        sl = (slice(sx, sx + patch[0]), slice(sy, sy + patch[1]), slice(sz, sz + patch[2]))
        window = x[(slice(None), *sl)][None].to(device, non_blocking=True)
        if device.type == "cpu":
            window = window.contiguous(memory_format=torch.channels_last_3d)  # faster mkldnn path
        pred: torch.Tensor | None = None
        for f in flips:
            inp = window.flip(f) if f else window
            with torch.autocast(
                device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"
            ):
                out = torch.sigmoid(net(inp).float())
            out = out.flip(f) if f else out
            pred = out if pred is None else pred + out
        assert pred is not None
        pred = (pred / len(flips))[0].to(stitch)
        if acc is None:
            acc = torch.zeros((pred.shape[0], *padded), dtype=torch.float32, device=stitch)
        acc[(slice(None), *sl)] += pred * weights
        norm[sl] += weights
    assert acc is not None, "no window was run"
    probs = acc / norm
    crop = tuple(slice(pads[2 * (2 - a)], pads[2 * (2 - a)] + shape[a]) for a in range(3))
    return probs[(slice(None), *crop)].cpu()
