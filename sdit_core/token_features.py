"""Token descriptors for segmentation: f_i = [x_pred_i || eps_i] (SDiT Eq. 3), per token."""
import torch
import torch.nn.functional as F

from .token_metrics import pool_frames


def token_features(x_pred: torch.Tensor, noise: torch.Tensor, patch_size: int, temporal_patch: int = 1) -> torch.Tensor:
    """(B, C, [T,] H, W) x2 -> (B, [T',] h, w, 2C): both maps averaged over each token's patch (per
    frame, and over each token's `temporal_patch` frames), each channel standardised over the image (video), scaled
    so two unrelated tokens lie about sqrt(2) apart (Quickshift's `ratio` then weighs features against token
    positions)."""
    pooled = torch.cat([x_pred.float(), noise.float()], dim=1)
    lead = pooled.shape[:-2]                                                     # (B, 2C[, T])
    flat = pooled.reshape(-1, 1, *pooled.shape[-2:])
    pad_h, pad_w = (-flat.shape[-2]) % patch_size, (-flat.shape[-1]) % patch_size
    if pad_h or pad_w:
        flat = F.pad(flat, (0, pad_w, 0, pad_h), mode="replicate")
    flat = F.avg_pool2d(flat, patch_size)
    pooled = flat.view(*lead, *flat.shape[-2:])                                  # (B, 2C, [T,] h, w)
    if pooled.ndim == 5:
        pooled = pool_frames(pooled, temporal_patch, dim=2)
    axes = tuple(range(2, pooled.ndim))
    mean = pooled.mean(dim=axes, keepdim=True)
    std = pooled.std(dim=axes, keepdim=True).clamp_min(1e-6)
    standard = (pooled - mean) / std / pooled.shape[1] ** 0.5
    return standard.movedim(1, -1).contiguous()
