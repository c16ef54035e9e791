"""Gathering and scattering rows of token sequences with a per-batch-row index."""
import math

import torch
import torch.nn.functional as F


def is_image_shape(shape) -> bool:
    """(batch, channels, height, width), or a single-frame video latent (batch, channels, 1, height, width)
    as Qwen-Image's (Wan 2.1 latent format) is."""
    return len(shape) == 4 or (len(shape) == 5 and int(shape[2]) == 1)


def is_latent_shape(shape) -> bool:
    """An image latent, or a video latent (batch, channels, frames, height, width)."""
    return len(shape) in (4, 5)


def token_grid(shape, patch_size: int, temporal_patch: int = 1):
    """The token grid of a latent: (rows, cols) for an image or a single frame, (frames, rows, cols)
    for a video of more than one frame. Tokens are numbered in raster order over that grid."""
    p = int(patch_size)
    rows, cols = -(-int(shape[-2]) // p), -(-int(shape[-1]) // p)
    if len(shape) == 5 and int(shape[2]) > 1:
        return (-(-int(shape[2]) // int(temporal_patch)), rows, cols)
    return (rows, cols)


def image_view(x: torch.Tensor) -> torch.Tensor:
    """A single-frame 5-D latent as (batch, channels, height, width); 4-D and videos unchanged."""
    return x[:, :, 0] if x.ndim == 5 and x.shape[2] == 1 else x


def leading_part(x: torch.Tensor, latent_shape) -> torch.Tensor:
    """A latent of several parts packed as (batch, 1, every part's values in turn) -> its first part, of
    `latent_shape`'s channels, frames and size (the batch is x's); a latent of `latent_shape`'s rank unchanged."""
    if x.ndim == len(latent_shape):
        return x
    return x[:, 0, :math.prod(latent_shape[1:])].reshape(x.shape[0], *latent_shape[1:])


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x: (B, N, ...), index: (B, n) -> (B, n, ...), row b taking x[b, index[b]]."""
    if x.shape[0] != index.shape[0]:
        raise ValueError(f"batch mismatch: tokens {tuple(x.shape)} vs index {tuple(index.shape)}")
    expanded = index.view(*index.shape, *([1] * (x.ndim - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, expanded)


def scatter_rows_(full: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """In place: full[b, index[b]] = rows[b]. Returns full."""
    expanded = index.view(*index.shape, *([1] * (full.ndim - 2))).expand(-1, -1, *full.shape[2:])
    return full.scatter_(1, expanded, rows.to(full.dtype))


def validate_active_index(active: torch.Tensor, batch: int, num_tokens: int) -> torch.Tensor:
    """Checks a policy's active set: (batch, n) distinct token indices in [0, num_tokens)."""
    if active.ndim != 2 or active.shape[0] != batch:
        raise ValueError(f"active set must be (batch={batch}, n), got {tuple(active.shape)}")
    if active.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"active set must hold integer token indices, got {active.dtype}")
    n = active.shape[1]
    if n < 1 or n > num_tokens:
        raise ValueError(f"active set size {n} outside 1..{num_tokens}")
    if int(active.min()) < 0 or int(active.max()) >= num_tokens:
        raise ValueError(f"active token index outside 0..{num_tokens - 1}")
    sorted_idx = active.sort(dim=1).values
    if n > 1 and bool((sorted_idx[:, 1:] == sorted_idx[:, :-1]).any()):
        raise ValueError("active set holds a token twice")
    return sorted_idx.long()


def same_rows(index: torch.Tensor) -> bool:
    """(B, n) index: does every row hold the same tokens? (the K/V writes take one index for all rows)"""
    return bool((index == index[:1]).all())


def mask_to_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, N) bool with the same count per row -> (B, n) sorted indices."""
    counts = mask.sum(dim=1)
    if bool((counts != counts[0]).any()):
        raise ValueError(f"every image needs the same active count, got {counts.tolist()}")
    return mask.nonzero()[:, 1].view(mask.shape[0], int(counts[0]))


def index_to_mask(index: torch.Tensor, num_tokens: int) -> torch.Tensor:
    mask = torch.zeros(index.shape[0], num_tokens, dtype=torch.bool, device=index.device)
    mask.scatter_(1, index, True)
    return mask


def tokens_inside(mask: torch.Tensor, latent_shape, patch_size: int, temporal_patch: int = 1) -> torch.Tensor:
    """An inpainting mask (batch, [channels, [frames,]] H x W at any resolution; > 0 = repaint) ->
    (batch, N) bool over the latent's token grid: the tokens whose patch has any repainted latent
    pixel. The mask is brought to the latent size as the sampler does (bilinear), so a token on the
    mask's edge counts as inside. A video mask without a frame axis applies to every frame."""
    batch, grid = int(latent_shape[0]), token_grid(latent_shape, patch_size, temporal_patch)
    frames = int(latent_shape[2]) if len(grid) == 3 else 1
    if len(grid) == 3 and mask.ndim == 5:
        m = mask.amax(dim=1).float()                                         # (B', T', H, W)
        m = F.interpolate(m[:, None], size=(frames,) + tuple(latent_shape[-2:]), mode="trilinear")[:, 0]
    else:
        m = mask.reshape(-1, mask.shape[-2], mask.shape[-1]).float()
        m = F.interpolate(m[:, None], size=tuple(latent_shape[-2:]), mode="bilinear")[:, 0]
        if len(grid) == 3:
            m = m[:, None].expand(-1, frames, -1, -1)
    pooled = F.max_pool2d(m.reshape(-1, 1, *m.shape[-2:]), patch_size, ceil_mode=True)   # (B' [x T], 1, h, w)
    if len(grid) == 3:                   # frames -> token frames (temporal patch)
        pooled = F.max_pool3d(pooled.view(m.shape[0], 1, frames, *pooled.shape[-2:]), (temporal_patch, 1, 1),
                              ceil_mode=True)
    inside = (pooled > 0).reshape(m.shape[0], -1)
    if inside.shape[0] != batch:
        inside = inside[:1].expand(batch, -1) if inside.shape[0] == 1 else inside[:batch]
    return inside
