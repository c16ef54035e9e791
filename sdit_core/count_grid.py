"""Sparse-step token counts on a grid, so a GPU sees few distinct shapes.

Every new query length costs a GPU once per process: PyTorch's cuDNN attention builds an execution
plan per shape (55-70 ms each, flashinfer#5245; ~50 ms per new count measured on an H200, docs/
BENCHMARKS.md), and a CUDA graph (forward_graphs.py) is recorded only for a count that comes back.
Without a grid the default schedules meet a new count at nearly every sparse step (RAS's dynamic
ratio, SDiT's cosine budget and dilation), and SDiT's counts change with every image too, so a
process never stops paying. On a grid of 64 tokens a 1024² image has at most 64 counts, ever.

Schedules round their counts to the grid keeping their total (ratio_schedule.on_count_grid: RAS
does); the engine rounds whatever count a policy plans up to the grid (SDiT after its dilation).
The tokens it adds are those that waited longest since they last ran (inside an inpainting mask
first), so the extra work refreshes the stalest outputs; computing more tokens never makes a step
less exact. Policies are not told about the added tokens: SDiT counts them as skipped, which can
only make it refresh them sooner.
"""
import os
from typing import Optional

import torch

ENV_FLAG = "SDIT_TOKEN_GRID"        # an integer overrides the grid (0 or 1: off)
GPU_GRID = 64                        # tokens; at most 1/64 of the image grid


def count_grid(device_type: str, num_tokens: int) -> int:
    """The grid for a model on `device_type` sampling a grid of `num_tokens` tokens: 64 tokens on a
    GPU (at most 1/64 of the grid, so small images keep fine steps), 1 (off) on the CPU, where shapes
    cost nothing. SDIT_TOKEN_GRID overrides it."""
    override = os.environ.get(ENV_FLAG, "").strip()
    if override:
        return max(1, int(override))
    if device_type != "cuda":
        return 1
    return max(1, min(GPU_GRID, num_tokens // 64))


def round_up_count(active: torch.Tensor, waited: Optional[torch.Tensor], grid: int, num_tokens: int,
                   selectable: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, n) sorted active tokens -> (B, m), m = n rounded up to a multiple of `grid` (at most
    num_tokens). Added per image: the tokens not active that waited longest (`waited` (B, N), the
    evaluations since each last ran; None: all equal), selectable ones first, then the lower index."""
    batch, n = active.shape
    target = rounded_count(n, grid, num_tokens)
    if target == n:
        return active
    taken = torch.zeros(batch, num_tokens, dtype=torch.bool).scatter_(1, active, True)
    priority = top_up_priority(waited, selectable, batch, num_tokens)
    priority[taken] = -1
    extra = torch.sort(priority, dim=1, descending=True, stable=True).indices[:, :target - n]
    return torch.cat([active, extra], dim=1).sort(dim=1).values


def rounded_count(n: int, grid: int, most: int) -> int:
    """n rounded up to a multiple of the grid, at most `most` (grid 1: n)."""
    return min(most, -(-n // grid) * grid) if grid > 1 else n


def top_up_priority(waited: Optional[torch.Tensor], selectable: Optional[torch.Tensor], batch: int,
                    num_tokens: int) -> torch.Tensor:
    """(B, N) int64: which tokens to add first when a count is topped up: those that waited longest
    (`waited`, None: all equal), inside an inpainting mask (`selectable`) before any outside it."""
    priority = waited.to(torch.int64).clone() if waited is not None else torch.zeros(batch, num_tokens, dtype=torch.int64)
    if selectable is not None:
        priority += selectable.cpu().to(torch.int64) * (int(priority.max()) + 1)
    return priority
