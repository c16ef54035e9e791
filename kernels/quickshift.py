"""Quickshift's density and parents over SDiT's token grid, every sampler step (SDiT Eq. 3-4).

The PyTorch reference (sdit_core.segmentation.quickshift_torch.grid_parents) unfolds every token's window
into a tensor of (batch, features, window, tokens) and launches a dozen kernels over it, per frame offset
for a video; the Triton kernels read each window token's features where they lie, two launches for a
whole batch of images or videos. Both compute in float32 on a GPU; where densities differ by a rounding
step the two may pick another parent for a token (tests bound how rarely).
"""
import torch

from ..sdit_core.segmentation import QuickshiftParams
from ..sdit_core.segmentation.quickshift_torch import grid_parents, tie_noise_on, window_reach
from . import triton_enabled


def quickshift_parents(features: torch.Tensor, params: QuickshiftParams, frame_scale: float = 1.0) -> torch.Tensor:
    """(B, T, H, W, F) -> (B, THW): each token's parent, a flat index into its own item (T = 1: images)."""
    if not triton_enabled(features):
        return grid_parents(features, params, frame_scale)
    from .quickshift_triton import quickshift_parents_triton
    batch, frames, rows, cols, width = features.shape
    x = (features.float() * params.ratio).reshape(batch, -1, width).contiguous()
    noise = tie_noise_on(frames, rows * cols, params.seed, features.device, torch.float32).reshape(-1)
    half, half_t = window_reach(params.kernel_size, frames, frame_scale)
    return quickshift_parents_triton(x, noise, (frames, rows, cols), half, half_t, float(frame_scale),
                                     params.kernel_size, params.max_dist)
