"""Quickshift's window pass over a (T, H, W) token grid as its definition: one window offset (dt, dy, dx)
at a time in that order, in float64. The oracle of the torch backend (test_segmentation.py) and of the
Triton kernels (kernel_checks.py)."""
import math

import torch


def window_pass(x, grid, half: int, half_t: int, frame_scale: float, kernel_size: float, max_dist: float,
                noise, density=None):
    """x: (N, F) features (times `ratio`) of the grid's tokens in (frame, row, col) order; noise: (N,).
    -> the density (N,), and each token's parent (N,) given `density` (default that density)."""
    t, h, w = grid
    frame, row, col = (a.reshape(-1) for a in torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w),
                                                             indexing="ij"))
    x = x.double()
    steps = []
    for dt in range(-half_t, half_t + 1):
        for dy in range(-half, half + 1):
            for dx in range(-half, half + 1):
                inside = ((frame + dt >= 0) & (frame + dt < t) & (row + dy >= 0) & (row + dy < h)
                          & (col + dx >= 0) & (col + dx < w))
                index = torch.where(inside, ((frame + dt) * h + row + dy) * w + col + dx, 0)
                d2 = ((x[index] - x) ** 2).sum(1) + (frame_scale * dt) ** 2 + dy * dy + dx * dx
                steps.append((inside, index, d2))
    own = noise.double()
    for inside, _, d2 in steps:
        own = own + torch.where(inside, torch.exp(-0.5 * d2 / kernel_size ** 2), 0.0)
    density = own if density is None else density.double()
    closest, parent = torch.full_like(own, math.inf), torch.arange(len(own))
    for inside, index, d2 in steps:
        take = inside & (density[index] > density) & (d2 < closest)
        closest, parent = torch.where(take, d2, closest), torch.where(take, index, parent)
    return own, torch.where(closest <= max_dist ** 2, parent, torch.arange(len(own)))


def tree_roots(parent: torch.Tensor) -> torch.Tensor:
    """(N,) parents -> each token's root."""
    for _ in range(math.ceil(math.log2(len(parent))) + 1):
        parent = parent[parent]
    return parent
