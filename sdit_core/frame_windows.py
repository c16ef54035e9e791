"""Token-sparse forwards over context windows of a video (ComfyUI's context windows).

Long videos are sampled in overlapping windows of frames: each step runs the model once per window, on
that window's frames alone, and blends the outputs. The policy plans one active set per step over the
whole video's token grid; a window's forward runs the planned tokens of its own frames. Each window is
its own stream (its own K/V cache and cached output), since its self-attention sees its frames only:
what a sparse window forward computes is exact against a dense forward of the same window.

The planned tokens of a window differ in number between the videos of a batch; every row of a forward
runs the same count, so rows are topped up with the window's tokens that waited longest (as the count
grid does, count_grid.py): computing more tokens never makes a step less exact.
"""
from typing import Optional, Sequence

import torch

from .count_grid import rounded_count, top_up_priority


def window_tokens(frames: Sequence[int], frame_tokens: int) -> torch.Tensor:
    """Whole-video token index of each token of a window holding `frames` (in the window's order),
    with tokens numbered in raster order over (frames, rows, cols)."""
    frames = torch.as_tensor(list(frames), dtype=torch.int64)
    return (frames[:, None] * frame_tokens + torch.arange(frame_tokens)).reshape(-1)


def window_active(active: torch.Tensor, tokens: torch.Tensor, num_tokens: int, waited: Optional[torch.Tensor] = None,
                  grid: int = 1, selectable: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The active set of one window, in the window's own token numbering.

    active: (B, n) whole-video token indices planned for this step; tokens: the window's tokens as
    whole-video indices (window_tokens); num_tokens: the video's; waited: (B, N) evaluations since each
    token last ran (None: all equal); grid: the count grid; selectable: (B, N) bool, inpainting's
    repaintable tokens.
    Returns (B, m) sorted window indices: every planned token of the window, topped up per row to the
    largest row's count rounded up to the grid (at most the window's size, at least one token) with
    the window's tokens that waited longest, selectable ones first, then the lower index."""
    batch = active.shape[0]
    planned = torch.zeros(batch, num_tokens, dtype=torch.bool).scatter_(1, active.cpu(), True)[:, tokens]
    size = tokens.shape[0]
    most = int(planned.sum(dim=1).max())
    target = max(1, rounded_count(most, grid, size))
    priority = top_up_priority(waited, selectable, batch, num_tokens)[:, tokens]
    priority = priority.masked_fill(planned, int(priority.max()) + 1)        # planned tokens first, always
    chosen = torch.sort(priority, dim=1, descending=True, stable=True).indices[:, :target]
    return chosen.sort(dim=1).values
