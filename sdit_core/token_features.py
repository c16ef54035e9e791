"""Token descriptors for segmentation: f_i = [x_pred_i || eps_i] (SDiT Eq. 3), per token."""
import torch
import torch.nn.functional as F


def token_features(x_pred: torch.Tensor, noise: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) x2 -> (B, h, w, 2C): both maps averaged over each token's patch, each channel
    standardised over the image, scaled so two unrelated tokens lie about sqrt(2) apart (Quickshift's
    `ratio` then weighs features against token positions)."""
    pooled = torch.cat([x_pred.float(), noise.float()], dim=1)
    pad_h, pad_w = (-pooled.shape[-2]) % patch_size, (-pooled.shape[-1]) % patch_size
    if pad_h or pad_w:
        pooled = F.pad(pooled, (0, pad_w, 0, pad_h), mode="replicate")
    pooled = F.avg_pool2d(pooled, patch_size)                                   # (B, 2C, h, w)
    mean = pooled.mean(dim=(2, 3), keepdim=True)
    std = pooled.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    standard = (pooled - mean) / std / pooled.shape[1] ** 0.5
    return standard.permute(0, 2, 3, 1).contiguous()
