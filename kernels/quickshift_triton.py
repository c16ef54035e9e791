"""Triton kernels of kernels.quickshift: Quickshift's density and parents over a grid of T frames of
H x W tokens (T = 1: an image), one program per (item, block of tokens), the window's offsets in a loop.
Each window token's features are read where they lie; the reference unfolds every token's window into
a (B, F, window, tokens) tensor first (177 MB for a batch of two 64x64 grids with 32 features and a
13 x 13 window) and launches a dozen kernels over it, and a video's window per frame offset.

    d2_ij     = |f_i - f_j|^2 + (frame_scale dt)^2 + dy^2 + dx^2          (f already times `ratio`)
    density_i = noise_i + sum_{j in window} exp(gamma d2_ij),  gamma = -1 / (2 kernel_size^2)
    parent_i  = the first j in (dt, dy, dx) order with the least d2_ij among those with density_j >
                density_i, if that d2_ij <= max_dist^2; else i
"""
import triton
import triton.language as tl


@triton.jit
def _neighbour(x, item, own, t, r, c, dt, dy, dx, frames, rows, cols, width, offs_f, in_f, frame_scale):
    """The window token (dt, dy, dx) away from each of the block's tokens: inside the grid?, its flat
    index, and d2 to it."""
    nt, nr, nc = t + dt, r + dy, c + dx
    inside = (nt >= 0) & (nt < frames) & (nr >= 0) & (nr < rows) & (nc >= 0) & (nc < cols)
    index = (nt * rows + nr) * cols + nc
    other = tl.load(x + item + index[:, None] * width + offs_f[None, :], mask=inside[:, None] & in_f[None, :],
                    other=0.0)
    diff = other - own
    position = (dy * dy + dx * dx) * 1.0 + (frame_scale * dt) * (frame_scale * dt)       # float32 on a GPU
    return inside, index, tl.sum(diff * diff, axis=1) + position


@triton.jit
def _block(x, program_item, frames, rows, cols, width, BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr):
    """The block's tokens: their flat indices, which exist, their (frame, row, col) and features."""
    tokens = frames * rows * cols
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    valid = offs_n < tokens
    offs_f = tl.arange(0, BLOCK_F)
    in_f = offs_f < width
    item = program_item.to(tl.int64) * tokens * width
    own = tl.load(x + item + offs_n[:, None] * width + offs_f[None, :], mask=valid[:, None] & in_f[None, :], other=0.0)
    frame, row, col = offs_n // (rows * cols), (offs_n // cols) % rows, offs_n % cols
    return tokens, offs_n, valid, offs_f, in_f, item, own, frame, row, col


@triton.jit
def _density_kernel(x, noise, density, frames, rows, cols, width, half, half_t, frame_scale, gamma,
                    BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr):
    b = tl.program_id(0)
    tokens, offs_n, valid, offs_f, in_f, item, own, t, r, c = _block(x, b, frames, rows, cols, width, BLOCK_N, BLOCK_F)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for dt in range(-half_t, half_t + 1):
        for dy in range(-half, half + 1):
            for dx in range(-half, half + 1):
                inside, _, d2 = _neighbour(x, item, own, t, r, c, dt, dy, dx, frames, rows, cols, width, offs_f, in_f,
                                           frame_scale)
                acc += tl.where(inside, tl.exp(d2 * gamma), 0.0)
    acc += tl.load(noise + offs_n, mask=valid, other=0.0)
    tl.store(density + b.to(tl.int64) * tokens + offs_n, acc, mask=valid)


@triton.jit
def _parent_kernel(x, density, parent, frames, rows, cols, width, half, half_t, frame_scale, max_dist_sq,
                   BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr):
    b = tl.program_id(0)
    tokens, offs_n, valid, offs_f, in_f, item, own, t, r, c = _block(x, b, frames, rows, cols, width, BLOCK_N, BLOCK_F)
    row = density + b.to(tl.int64) * tokens
    mine = tl.load(row + offs_n, mask=valid, other=0.0)
    closest = tl.full([BLOCK_N], float("inf"), tl.float32)
    best = offs_n
    for dt in range(-half_t, half_t + 1):
        for dy in range(-half, half + 1):
            for dx in range(-half, half + 1):
                inside, index, d2 = _neighbour(x, item, own, t, r, c, dt, dy, dx, frames, rows, cols, width, offs_f,
                                               in_f, frame_scale)
                theirs = tl.load(row + index, mask=inside & valid, other=float("-inf"))
                take = inside & (theirs > mine) & (d2 < closest)       # strictly nearer: the first of equals stays
                closest = tl.where(take, d2, closest)
                best = tl.where(take, index, best)
    best = tl.where(closest <= max_dist_sq, best, offs_n)
    tl.store(parent + b.to(tl.int64) * tokens + offs_n, best.to(tl.int64), mask=valid)


def quickshift_parents_triton(x, noise, grid, half: int, half_t: int, frame_scale: float, kernel_size: float,
                              max_dist: float, with_density: bool = False):
    """x: (B, N, F) float32 contiguous features (times `ratio`) of N = T*H*W tokens in (frame, row, col)
    order; noise: (N,) float32, the tie-breaking density noise; grid: (T, H, W). -> (B, N) int64 parents,
    flat indices into each item (and the (B, N) density, for tests)."""
    import torch
    batch, tokens, width = x.shape
    frames, rows, cols = grid
    block_f = triton.next_power_of_2(width)
    block_n = max(16, min(64, 2048 // block_f))      # at most 2,048 feature values per program's tile
    launch = (batch, triton.cdiv(tokens, block_n))
    density = torch.empty(batch, tokens, dtype=torch.float32, device=x.device)
    _density_kernel[launch](x, noise, density, frames, rows, cols, width, half, half_t, frame_scale,
                            -0.5 / kernel_size ** 2, BLOCK_N=block_n, BLOCK_F=block_f)
    parent = torch.empty(batch, tokens, dtype=torch.int64, device=x.device)
    _parent_kernel[launch](x, density, parent, frames, rows, cols, width, half, half_t, frame_scale,
                           max_dist ** 2, BLOCK_N=block_n, BLOCK_F=block_f)
    return (parent, density) if with_density else parent
