"""Quickshift over a video's token grid (frames, rows, cols): the frame index is a third spatial
coordinate, scaled by `frame_scale` (the distance, in tokens, between one frame and the next):

    d^2 = |ratio (f_i - f_j)|^2 + (frame_scale dt)^2 + dy^2 + dx^2

over the window |dy|, |dx| <= ceil(3 kernel_size), |dt| <= ceil(3 kernel_size / frame_scale); density,
parents and roots as the 2-D backend computes them. One pass per window offset over shifted copies of
the grid (works on any device; the window has (2 w + 1)^2 (2 w_t + 1) offsets).
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from . import QuickshiftParams


def _shifted(x: torch.Tensor, dt: int, dy: int, dx: int, fill: float) -> torch.Tensor:
    """x (..., T, H, W) -> y with y[t, r, c] = x[t + dt, r + dy, c + dx], `fill` outside the grid."""
    t, h, w = x.shape[-3:]
    pt, py, px = abs(dt), abs(dy), abs(dx)
    padded = F.pad(x, (px, px, py, py, pt, pt), value=fill)
    return padded[..., pt + dt: pt + dt + t, py + dy: py + dy + h, px + dx: px + dx + w]


def quickshift_video(features: torch.Tensor, params: QuickshiftParams, frame_scale: float) -> torch.Tensor:
    """features (T, H, W, F) -> labels (T, H, W)."""
    t, h, w, _ = features.shape
    dtype = torch.float64 if features.device.type == "cpu" else torch.float32
    x = (features.to(dtype) * params.ratio).permute(3, 0, 1, 2).contiguous()            # (F, T, H, W)
    half = int(math.ceil(3 * params.kernel_size))
    half_t = min(t - 1, int(math.ceil(3 * params.kernel_size / max(frame_scale, 1e-6))))
    offsets = [(dt, dy, dx) for dt in range(-half_t, half_t + 1)
               for dy in range(-half, half + 1) for dx in range(-half, half + 1)]
    inside_grid = torch.ones(1, t, h, w, dtype=dtype, device=x.device)
    n = t * h * w
    gamma = -0.5 / params.kernel_size ** 2
    noise = np.random.default_rng(params.seed).normal(scale=0.00001, size=(t, h, w))
    density = torch.from_numpy(noise).to(x.device, dtype)
    d2s = []
    for dt, dy, dx in offsets:
        d2 = ((_shifted(x, dt, dy, dx, 0.0) - x) ** 2).sum(0) + (frame_scale * dt) ** 2 + dy * dy + dx * dx
        inside = _shifted(inside_grid, dt, dy, dx, 0.0)[0] > 0
        density = density + torch.where(inside, torch.exp(d2 * gamma), torch.zeros_like(d2))
        d2s.append(torch.where(inside, d2, torch.full_like(d2, math.inf)))
    index = torch.arange(n, device=x.device).view(t, h, w)
    closest = torch.full((t, h, w), math.inf, dtype=dtype, device=x.device)
    parent = index.clone()
    for (dt, dy, dx), d2 in zip(offsets, d2s):
        denser = _shifted(density[None], dt, dy, dx, -math.inf)[0] > density
        better = denser & (d2 < closest)
        closest = torch.where(better, d2, closest)
        parent = torch.where(better, index + (dt * h + dy) * w + dx, parent)
    parent = torch.where(closest <= params.max_dist ** 2, parent, index).reshape(-1)
    for _ in range(max(1, math.ceil(math.log2(n))) + 1):
        parent = parent[parent]
    return torch.unique(parent, return_inverse=True)[1].view(t, h, w)
