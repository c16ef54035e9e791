"""GPU-native windowed Quickshift (Vedaldi & Soatto 2008, as skimage implements it), vectorised with
`unfold` over the (2w+1)^2 window, w = ceil(3 * kernel_size):

    density_i = sum_{j in window} exp(-d_ij^2 / (2 kernel_size^2)),  d^2 = |ratio (f_i - f_j)|^2 + dy^2 + dx^2
    parent_i  = nearest j in the window with density_j > density_i, if d_ij <= max_dist, else i
    label_i   = root of i's tree (pointer jumping)

On a GPU the node runs density and parents as Triton kernels (kernels/quickshift.py); this is their
reference.
"""
import functools
import math

import torch
import torch.nn.functional as F

from . import QuickshiftParams, tie_noise


def _window(x: torch.Tensor, half: int, pad_value: float) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, O, H*W): every pixel's (2 half + 1)^2 window, padded with pad_value."""
    b, c, h, w = x.shape
    padded = F.pad(x, (half, half, half, half), value=pad_value)
    return F.unfold(padded, 2 * half + 1).view(b, c, (2 * half + 1) ** 2, h * w)


def _window_sq_dist(x: torch.Tensor, half: int, unfold: bool = None, around: torch.Tensor = None) -> torch.Tensor:
    """(B, C, H, W) -> (B, O, H*W): squared feature distance of every pixel of x to each pixel of the
    window around it in `around` (default: x itself; a video's neighbouring frames otherwise), zero
    padding outside the grid (callers mask those). On the GPU one unfold is fastest; on the CPU the
    unfolded (B, C, O, HW) tensor is memory-bound and a loop over the window offsets is ~10x faster."""
    b, c, h, w = x.shape
    around = x if around is None else around
    if unfold if unfold is not None else x.device.type != "cpu":
        return ((_window(around, half, 0.0) - x.view(b, c, 1, h * w)) ** 2).sum(1)
    padded = F.pad(around, (half, half, half, half))
    k = 2 * half + 1
    out = torch.empty(b, k * k, h * w, dtype=x.dtype)
    for o in range(k * k):
        dy, dx = divmod(o, k)
        out[:, o] = ((padded[:, :, dy: dy + h, dx: dx + w] - x) ** 2).sum(1).view(b, -1)
    return out


@functools.lru_cache(maxsize=16)
def window_constants(h: int, w: int, half: int, device: torch.device, dtype: torch.dtype):
    """What depends only on the grid and the window, built once per grid (SDiT segments every step):
    which window offsets fall inside the grid (O, HW), their squared spatial distance (O, 1) and their
    offset in flat token indices (O,). Read-only."""
    offsets = torch.arange(-half, half + 1, device=device)
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    inside = _window(torch.ones(1, 1, h, w, dtype=dtype, device=device), half, 0.0)[0, 0] > 0
    return inside, (dy * dy + dx * dx).reshape(-1, 1).to(dtype), (dy * w + dx).reshape(-1)


def window_reach(kernel_size: float, frames: int = 1, frame_scale: float = 1.0):
    """How far the window reaches, in tokens: (rows and cols, frames), 3 sigma each way."""
    return int(math.ceil(3 * kernel_size)), min(frames - 1, int(math.ceil(3 * kernel_size / max(frame_scale, 1e-6))))


@functools.lru_cache(maxsize=16)
def tie_noise_on(h: int, w: int, seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """tie_noise on the features' device, (1, HW), drawn and copied once (a copy to a GPU blocks the host);
    cast on the host, as a device without float64 (Apple's MPS) takes no float64 copy."""
    return tie_noise(h, w, seed).to(dtype).to(device).reshape(1, -1)


def image_parents(features: torch.Tensor, params: QuickshiftParams) -> torch.Tensor:
    """(B, H, W, F) -> (B, HW): each token's parent, a flat index into its own image (itself where no
    denser token lies within max_dist). One pass for the whole batch: a sampler step segments every
    image of its batch with the same kernels."""
    batch, h, w, _ = features.shape
    dtype = torch.float64 if features.device.type == "cpu" else torch.float32
    x = (features.to(dtype) * params.ratio).permute(0, 3, 1, 2).contiguous()         # (B, F, H, W)
    half, _ = window_reach(params.kernel_size)
    inside, spatial, linear = window_constants(h, w, half, x.device, dtype)          # (O, HW), (O, 1), (O,)

    d2 = _window_sq_dist(x, half) + spatial                                           # (B, O, HW)
    density = torch.where(inside, torch.exp(d2 * (-0.5 / params.kernel_size ** 2)), 0).sum(1)      # (B, HW)
    density = density + tie_noise_on(h, w, params.seed, x.device, dtype)

    neighbour_density = _window(density.view(batch, 1, h, w), half, float("-inf"))[:, 0]          # (B, O, HW)
    candidate = torch.where(inside & (neighbour_density > density[:, None]), d2, math.inf)
    closest, best = candidate.min(1)                                                  # (B, HW)
    index = torch.arange(h * w, device=x.device).expand(batch, -1)
    return torch.where(closest <= params.max_dist ** 2, index + linear[best], index)


def grid_parents(features: torch.Tensor, params: QuickshiftParams, frame_scale: float = 1.0) -> torch.Tensor:
    """(B, T, H, W, F) -> (B, THW): Quickshift's parents over each item's grid of T frames (T = 1: an
    image; videos: quickshift_video.py). The PyTorch reference of kernels/quickshift.py."""
    if features.shape[1] == 1:
        return image_parents(features[:, 0], params)
    from .quickshift_video import video_parents
    return torch.stack([video_parents(item, params, frame_scale) for item in features])


def tree_roots(parent: torch.Tensor) -> torch.Tensor:
    """(B, N) parents -> (B, N) each token's tree root, by pointer jumping: a tree is at most N deep, and
    log2(N) jumps reach the roots."""
    for _ in range(max(1, math.ceil(math.log2(parent.shape[1]))) + 1):
        parent = parent.gather(1, parent)
    return parent
