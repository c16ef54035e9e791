"""Quickshift over a video's token grid (frames, rows, cols): the frame index is a third spatial
coordinate, scaled by `frame_scale` (the distance, in tokens, between one frame and the next):

    d^2 = |ratio (f_i - f_j)|^2 + (frame_scale dt)^2 + dy^2 + dx^2

over the window |dy|, |dx| <= ceil(3 kernel_size), |dt| <= ceil(3 kernel_size / frame_scale); density,
parents and roots as the 2-D backend computes them. Per frame offset dt, every (dy, dx) of the window
at once (the 2-D backend's window distances, the frames as a batch, in chunks that bound the memory):
on a GPU a handful of kernels per dt instead of a dozen per window offset (a 480p Wan video's window
has 2,197 offsets); on the CPU a loop over (dy, dx), as the 2-D backend does there.
Ties go to the first offset in (dt, dy, dx) order, as one pass over the offsets in that order would.
"""
import math

import torch

from . import QuickshiftParams
from .quickshift_torch import _window, _window_sq_dist, tie_noise_on, window_constants, window_reach

CHUNK_ELEMENTS = 1 << 25           # unfolded window elements per chunk of frames (128 MiB in float32)


def _frames(t: int, dt: int) -> torch.Tensor:
    """The frames f whose neighbour f + dt is in the video."""
    return torch.arange(max(0, -dt), min(t, t - dt))


def _window_terms(x: torch.Tensor, density: torch.Tensor, src: torch.Tensor, dt: int, half: int, frame_term: float,
                  unfold: bool = None):
    """For frames `src` of x (T, F, H, W) against the windows of frames src + dt, in chunks of frames:
    yields (frames, d2 (n, O, HW) with the window's position terms, the window's densities (n, O, HW),
    -inf outside the grid). `unfold`: as the 2-D backend's (default: on the GPU)."""
    t, f, h, w = x.shape
    position = window_constants(h, w, half, x.device, x.dtype)[1] + frame_term              # (O, 1)
    per_frame = f * (2 * half + 1) ** 2 * h * w
    step = max(1, CHUNK_ELEMENTS // per_frame)
    for start in range(0, len(src), step):
        frames = src[start: start + step].to(x.device)
        near = frames + dt
        d2 = _window_sq_dist(x[frames], half, unfold, around=x[near]) + position          # (n, O, HW)
        neighbour_density = _window(density[near].view(len(frames), 1, h, w), half, float("-inf"))[:, 0]
        yield frames, d2, neighbour_density


def video_parents(features: torch.Tensor, params: QuickshiftParams, frame_scale: float,
                             unfold: bool = None) -> torch.Tensor:
    """features (T, H, W, F) -> (THW,): each token's parent, a flat index into the video (itself where no
    denser token lies within max_dist)."""
    t, h, w, _ = features.shape
    dtype = torch.float64 if features.device.type == "cpu" else torch.float32
    x = (features.to(dtype) * params.ratio).permute(0, 3, 1, 2).contiguous()               # (T, F, H, W)
    half, half_t = window_reach(params.kernel_size, t, frame_scale)
    inside, _, linear = window_constants(h, w, half, x.device, dtype)                      # (O, HW), (O,)
    gamma = -0.5 / params.kernel_size ** 2
    density = tie_noise_on(t, h * w, params.seed, x.device, dtype).view(t, h * w).clone()   # (T, HW)
    zero = torch.zeros((), dtype=dtype, device=x.device)
    for dt in range(-half_t, half_t + 1):
        src = _frames(t, dt)
        for frames, d2, _ in _window_terms(x, density, src, dt, half, (frame_scale * dt) ** 2, unfold):
            density[frames] += torch.where(inside, torch.exp(d2 * gamma), zero).sum(1)
    # parents: the nearest denser token of the window, over the frame offsets in order
    index = torch.arange(t * h * w, device=x.device).view(t, h * w)
    closest = torch.full((t, h * w), math.inf, dtype=dtype, device=x.device)
    parent = index.clone()
    for dt in range(-half_t, half_t + 1):
        src = _frames(t, dt)
        for frames, d2, neighbour_density in _window_terms(x, density, src, dt, half, (frame_scale * dt) ** 2,
                                                           unfold):
            denser = inside & (neighbour_density > density[frames][:, None])
            nearest, best = torch.where(denser, d2, math.inf).min(1)                       # first of equals
            better = nearest < closest[frames]
            closest[frames] = torch.where(better, nearest, closest[frames])
            parent[frames] = torch.where(better, index[frames] + dt * h * w + linear[best], parent[frames])
    return torch.where(closest <= params.max_dist ** 2, parent, index).reshape(-1)
