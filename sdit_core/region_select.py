"""Turns ranked regions into an exact token budget per image (SDiT Eq. 7-8 with a rectangular batch).

Regions are taken in score order, each with its 8-connected dilation by r tokens (Eq. 7; a video's
3-D grid: 26-connected, the (2r+1)^3 cube, or 6-connected, r steps along the faces); the last region
that does not fit whole is filled by token complexity. Vectorised: a token's priority is
the best rank of any selected region whose dilation covers it (a min-pool of the rank map), so one
sort by (priority, -complexity) gives the fill order.
"""
import torch
import torch.nn.functional as F

DILATION_MODES = ("inside", "on_top")


CONNECTIVITIES = (26, 6)


def region_rank_map(labels: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """(*grid) labels, (K,) scores -> (*grid) rank of each token's region (0 = most complex)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank[labels]


def dilate_min(values: torch.Tensor, radius: int, connectivity: int = 26) -> torch.Tensor:
    """Dilation of a rank map: each token takes the minimum over its neighbourhood: the (2r+1)^2 square
    (8-connected) of an image grid; for a video grid the (2r+1)^3 cube (26-connected) or r steps of
    the 6 face neighbours (6-connected)."""
    if radius <= 0:
        return values
    v = values.float()
    if v.ndim == 2:
        return (-F.max_pool2d(-v[None, None], 2 * radius + 1, stride=1, padding=radius))[0, 0].to(values.dtype)
    if connectivity == 26:
        return (-F.max_pool3d(-v[None, None], 2 * radius + 1, stride=1, padding=radius))[0, 0].to(values.dtype)
    if connectivity != 6:
        raise ValueError(f"connectivity {connectivity} is not one of {CONNECTIVITIES}")
    for _ in range(radius):
        padded = F.pad(v[None, None], (1, 1, 1, 1, 1, 1), value=float("inf"))[0, 0]
        t, h, w = v.shape
        v = torch.stack([v, padded[:-2, 1:-1, 1:-1], padded[2:, 1:-1, 1:-1], padded[1:-1, :-2, 1:-1],
                         padded[1:-1, 2:, 1:-1], padded[1:-1, 1:-1, :-2], padded[1:-1, 1:-1, 2:]]).amin(0)
    return v.to(values.dtype)


def dilate_mask(mask: torch.Tensor, radius: int, connectivity: int = 26) -> torch.Tensor:
    """The same neighbourhoods for a bool mask: a token is in when any of its neighbourhood is."""
    return dilate_min((~mask).to(torch.int8), radius, connectivity) == 0


def fill_order(priority: torch.Tensor, complexity: torch.Tensor) -> torch.Tensor:
    """Token indices sorted by priority (ascending), then complexity (descending)."""
    by_complexity = torch.sort(complexity.reshape(-1), descending=True, stable=True).indices
    return by_complexity[torch.sort(priority.reshape(-1)[by_complexity], stable=True).indices]


def select_regions(labels: torch.Tensor, scores, complexity: torch.Tensor, budget: int, dilation: int = 1,
                   mode: str = "inside", forced: torch.Tensor = None, selectable: torch.Tensor = None,
                   connectivity: int = 26) -> torch.Tensor:
    """labels (B, *grid); scores: list of (K_b,) per image; complexity (B, *grid) -> (B, n) sorted token
    indices (grid (h, w), or (t, h, w) for a video: `connectivity` 26 or 6 for its dilation). mode "inside": exactly `budget` tokens, dilation included. mode "on_top": the budget's
    regions plus their dilation. `forced` (B, h*w) bool: tokens that run whatever their region (skipped
    too long); they take part of the budget, and go beyond it only when they are more. `selectable` (B, h*w) bool: the only tokens that may be
    picked (inpainting: inside the mask). Every image gets as many tokens as the largest set (a
    rectangular batch), topped up in fill order: forced, chosen regions, the rest, unselectable last."""
    if mode not in DILATION_MODES:
        raise ValueError(f"dilation mode '{mode}' is not one of {DILATION_MODES}")
    batch, grid = labels.shape[0], labels.shape[1:]
    n = labels[0].numel()
    budget = max(1, min(int(budget), n))
    orders, sizes = [], []
    for b in range(batch):
        rank = region_rank_map(labels[b], scores[b])
        dilated = dilate_min(rank, dilation, connectivity).reshape(-1)
        allowed = selectable[b] if selectable is not None else torch.ones(n, dtype=torch.bool, device=labels.device)
        must = forced[b] & allowed if forced is not None else torch.zeros_like(allowed)
        if mode == "inside":
            priority, size = dilated, budget
        else:
            chosen = torch.zeros(n, dtype=torch.bool, device=labels.device)
            outside = torch.where(allowed, rank.reshape(-1), rank.reshape(-1) + n)    # regions' own tokens first
            chosen[fill_order(outside, complexity[b])[:max(budget - int(must.sum()), 0)]] = True   # forced: inside
            chosen &= allowed
            grown = dilate_mask(chosen.view(grid), dilation, connectivity).reshape(-1) & allowed
            priority = torch.where(grown, torch.zeros_like(dilated), dilated + 1)
            size = int((grown | must).sum())
        priority = torch.where(must, torch.full_like(priority, -1), priority)
        priority = torch.where(allowed, priority, priority + 2 * n + 2)                 # never before allowed ones
        orders.append(fill_order(priority, complexity[b]))
        sizes.append(max(min(size, int(allowed.sum())), int(must.sum()), 1))
    count = max(sizes)
    return torch.stack([order[:count] for order in orders]).sort(dim=1).values
