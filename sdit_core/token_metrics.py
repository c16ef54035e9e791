"""Per-token scores of a model output map (RAS Eq. 1 and the supplement's l2-norm variant)."""
import torch
import torch.nn.functional as F

METRICS = ("std", "l2norm")


def noise_prediction(x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(x - x0) / sigma: the model-output space of both eps models (= eps) and flow models (= v)."""
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return (x - denoised) / sigma.clamp_min(1e-8)


def pool_frames(values: torch.Tensor, temporal_patch: int, dim: int) -> torch.Tensor:
    """Latent frames on `dim` -> token frames: the mean of each `temporal_patch` consecutive frames (a model whose
    tokens span several latent frames, CogVideoX 1.5), the last group filled up by repeating its last frame."""
    if temporal_patch <= 1:
        return values
    frames = values.shape[dim]
    pad = (-frames) % temporal_patch
    if pad:
        values = torch.cat([values, values.narrow(dim, frames - 1, 1).expand(
            *values.shape[:dim], pad, *values.shape[dim + 1:])], dim=dim)
    grouped = values.unflatten(dim, ((frames + pad) // temporal_patch, temporal_patch))
    return grouped.mean(dim=dim + 1)


def patch_average(values: torch.Tensor, patch_size: int, temporal_patch: int = 1) -> torch.Tensor:
    """(B, [T,] H, W) per latent pixel -> (B, [T',] h, w) per token: a patch_size x patch_size patch of each frame,
    and for a video `temporal_patch` latent frames per token frame."""
    p = patch_size
    pad_h, pad_w = (-values.shape[-2]) % p, (-values.shape[-1]) % p
    v = values.reshape(-1, 1, *values.shape[-2:])
    if pad_h or pad_w:
        v = F.pad(v, (0, pad_w, 0, pad_h), mode="replicate")
    pooled = F.avg_pool2d(v, p)[:, 0]
    pooled = pooled.view(*values.shape[:-2], *pooled.shape[-2:])
    return pool_frames(pooled, temporal_patch, dim=1) if pooled.ndim == 4 else pooled


def token_metric(output: torch.Tensor, patch_size: int, kind: str = "std", temporal_patch: int = 1) -> torch.Tensor:
    """output (B, C, [T,] H, W) -> (B, [T',] h, w): std (or l2 norm) over channels, averaged over each patch (and
    each token's `temporal_patch` frames)."""
    output = output.float()
    if kind == "std":
        per_pixel = output.std(dim=1)
    elif kind == "l2norm":
        per_pixel = torch.linalg.vector_norm(output, dim=1)
    else:
        raise ValueError(f"unknown metric '{kind}', expected one of {METRICS}")
    return patch_average(per_pixel, patch_size, temporal_patch)
