"""Turns ranked regions into an exact token budget per image (SDiT Eq. 7-8 with a rectangular batch).

Regions are taken in score order, each with its 8-connected dilation by r tokens (Eq. 7); the
last region that does not fit whole is filled by token complexity. Vectorised: a token's priority is
the best rank of any selected region whose dilation covers it (a min-pool of the rank map), so one
sort by (priority, -complexity) gives the fill order.
"""
import torch
import torch.nn.functional as F

DILATION_MODES = ("inside", "on_top")


def region_rank_map(labels: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """(h, w) labels, (K,) scores -> (h, w) rank of each token's region (0 = most complex)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank[labels]


def dilate_min(values: torch.Tensor, radius: int) -> torch.Tensor:
    """8-connected dilation of a rank map: each token takes the minimum over its (2r+1)^2 square."""
    if radius <= 0:
        return values
    v = values[None, None].float()
    return (-F.max_pool2d(-v, 2 * radius + 1, stride=1, padding=radius))[0, 0].to(values.dtype)


def fill_order(priority: torch.Tensor, complexity: torch.Tensor) -> torch.Tensor:
    """Token indices sorted by priority (ascending), then complexity (descending)."""
    by_complexity = torch.sort(complexity.reshape(-1), descending=True, stable=True).indices
    return by_complexity[torch.sort(priority.reshape(-1)[by_complexity], stable=True).indices]


def select_regions(labels: torch.Tensor, scores, complexity: torch.Tensor, budget: int, dilation: int = 1,
                   mode: str = "inside", forced: torch.Tensor = None, selectable: torch.Tensor = None) -> torch.Tensor:
    """labels (B, h, w); scores: list of (K_b,) per image; complexity (B, h, w) -> (B, n) sorted token
    indices. mode "inside": exactly `budget` tokens, dilation included. mode "on_top": the budget's
    regions plus their dilation. `forced` (B, h*w) bool: tokens that run whatever their region (skipped
    too long); they take part of the budget, and go beyond it only when they are more. `selectable` (B, h*w) bool: the only tokens that may be
    picked (inpainting: inside the mask). Every image gets as many tokens as the largest set (a
    rectangular batch), topped up in fill order: forced, chosen regions, the rest, unselectable last."""
    if mode not in DILATION_MODES:
        raise ValueError(f"dilation mode '{mode}' is not one of {DILATION_MODES}")
    batch, h, w = labels.shape
    n = h * w
    budget = max(1, min(int(budget), n))
    orders, sizes = [], []
    for b in range(batch):
        rank = region_rank_map(labels[b], scores[b])
        dilated = dilate_min(rank, dilation).reshape(-1)
        allowed = selectable[b] if selectable is not None else torch.ones(n, dtype=torch.bool, device=labels.device)
        must = forced[b] & allowed if forced is not None else torch.zeros_like(allowed)
        if mode == "inside":
            priority, size = dilated, budget
        else:
            chosen = torch.zeros(n, dtype=torch.bool, device=labels.device)
            outside = torch.where(allowed, rank.reshape(-1), rank.reshape(-1) + n)    # regions' own tokens first
            chosen[fill_order(outside, complexity[b])[:max(budget - int(must.sum()), 0)]] = True   # forced: inside
            chosen &= allowed
            grown = F.max_pool2d(chosen.view(1, 1, h, w).float(), 2 * dilation + 1, 1, dilation)[0, 0] > 0 \
                if dilation > 0 else chosen.view(h, w)
            grown = grown.reshape(-1) & allowed
            priority = torch.where(grown, torch.zeros_like(dilated), dilated + 1)
            size = int((grown | must).sum())
        priority = torch.where(must, torch.full_like(priority, -1), priority)
        priority = torch.where(allowed, priority, priority + 2 * n + 2)                 # never before allowed ones
        orders.append(fill_order(priority, complexity[b]))
        sizes.append(max(min(size, int(allowed.sum())), int(must.sum()), 1))
    count = max(sizes)
    return torch.stack([order[:count] for order in orders]).sort(dim=1).values
