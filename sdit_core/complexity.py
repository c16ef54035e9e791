"""Denoising complexity per token (SDiT Eq. 5) and per region (Eq. 6)."""

import torch
import torch.nn.functional as F

from .token_metrics import patch_average


def _replicate(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (1, 1, 1, 1), mode="replicate")


def pixel_complexity(x_t: torch.Tensor, x_pred: torch.Tensor, alpha: float, gamma: float, beta: float) -> torch.Tensor:
    """Eq. 5 per latent pixel: (B, C, H, W) -> (B, H, W), the channel mean of
    alpha * |grad x_pred| (edges, central differences) + gamma * |Laplacian x_pred| (fine detail)
    + beta * |x_t - x_pred| (residual noise)."""
    x_pred = x_pred.float()
    p = _replicate(x_pred)
    dx = (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) / 2
    dy = (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) / 2
    laplacian = p[..., 2:, 1:-1] + p[..., :-2, 1:-1] + p[..., 1:-1, 2:] + p[..., 1:-1, :-2] - 4 * x_pred
    score = alpha * torch.sqrt(dx * dx + dy * dy) + gamma * laplacian.abs() + beta * (x_t.float() - x_pred).abs()
    return score.mean(dim=1)


def token_complexity(x_t, x_pred, patch_size: int, alpha=1.0, gamma=0.5, beta=0.25, temporal=0.0,
                     temporal_patch: int = 1) -> torch.Tensor:
    """Eq. 5 averaged over each token's patch: (B, h, w), or for a video (B, C, T, H, W) -> (B, T', h, w),
    each frame's spatial terms plus `temporal` x the mean |x_pred| difference to its neighbouring frames
    (motion: what changes from frame to frame needs computing), averaged over each token's `temporal_patch` frames."""
    if x_pred.ndim == 4:
        return patch_average(pixel_complexity(x_t, x_pred, alpha, gamma, beta), patch_size)
    b, c, t, h, w = x_pred.shape
    frames = lambda v: v.transpose(1, 2).reshape(b * t, c, h, w)    # noqa: E731  frames as images
    score = pixel_complexity(frames(x_t), frames(x_pred), alpha, gamma, beta).view(b, t, h, w)
    if temporal > 0 and t > 1:
        step = (x_pred[:, :, 1:] - x_pred[:, :, :-1]).float().abs().mean(dim=1)          # (B, T-1, H, W)
        motion = torch.zeros(b, t, h, w, dtype=step.dtype, device=step.device)
        count = torch.zeros(1, t, 1, 1, dtype=step.dtype, device=step.device)
        motion[:, 1:] += step
        motion[:, :-1] += step
        count[:, 1:] += 1
        count[:, :-1] += 1
        score = score + temporal * motion / count
    return patch_average(score, patch_size, temporal_patch)


def region_scores(labels: torch.Tensor, complexity: torch.Tensor, top_q: float, regions: int = 0) -> torch.Tensor:
    """Eq. 6 for one image: labels (N,) in 0..K-1, complexity (N,) -> (K,) the mean of each region's
    top q fraction of token complexities (at least one token), so thin sharp structures are not
    diluted by the smooth area around them. `regions` > 0 fixes K (labels absent score 0)."""
    labels = labels.reshape(-1)
    complexity = complexity.reshape(-1).float()
    k = regions if regions > 0 else int(labels.max()) + 1
    by_value = torch.sort(complexity, descending=True, stable=True).indices
    order = by_value[torch.sort(labels[by_value], stable=True).indices]      # grouped by label, high first
    sizes = torch.bincount(labels, minlength=k)
    starts = torch.cumsum(sizes, 0) - sizes
    grouped = labels[order]
    rank = torch.arange(labels.numel(), device=labels.device) - starts[grouped]
    keep_count = torch.clamp(torch.ceil(sizes.float() * top_q), min=1)
    kept = torch.where(rank < keep_count[grouped], complexity[order], 0.0)   # masked, not selected: no host sync
    sums = torch.zeros(k, device=labels.device).index_add_(0, grouped, kept)
    return sums / keep_count


def batch_region_labels(labels: torch.Tensor, regions: int) -> torch.Tensor:
    """(B, *grid) labels 0..regions-1 per image -> (B * N,) labels that no two images share (image b's
    region r is b * regions + r), so one pass over the batch treats every image's regions apart."""
    offsets = torch.arange(labels.shape[0], device=labels.device) * regions
    return (labels.reshape(labels.shape[0], -1) + offsets[:, None]).reshape(-1)


def region_scores_batch(labels: torch.Tensor, complexity: torch.Tensor, top_q: float) -> torch.Tensor:
    """Eq. 6 for a batch in one pass (one host sync for the whole batch, not one per image): labels and
    complexity (B, *grid) -> (B, K), K the most regions of any image. Regions an image does not have
    score 0 (scores are >= 0) and have the highest labels, so a stable ranking puts them after all of
    its own: each image's ranking is the one it has alone."""
    batch = labels.shape[0]
    regions = int(labels.max()) + 1
    flat = batch_region_labels(labels, regions)
    return region_scores(flat, complexity.reshape(-1), top_q, regions=batch * regions).view(batch, regions)
