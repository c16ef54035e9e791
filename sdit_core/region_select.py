"""Turns ranked regions into an exact token budget per image (SDiT Eq. 7-8 with a rectangular batch).

Regions are taken in score order, each with its 8-connected dilation by r tokens (Eq. 7; a video's
3-D grid: 26-connected, the (2r+1)^3 cube, or 6-connected, r steps along the faces); the last region
that does not fit whole is filled by token complexity. Vectorised over tokens and images: a token's
priority is the best rank of any selected region whose dilation covers it (a min-pool of the rank
map), so one sort by (priority, -complexity) per image gives the fill order. Everything runs on the
labels' device with one host sync per call (the batch's token count).
"""
from typing import List, Union

import torch
import torch.nn.functional as F

DILATION_MODES = ("inside", "on_top")
CONNECTIVITIES = (26, 6)


def score_table(scores: Union[torch.Tensor, List[torch.Tensor]], device: torch.device) -> torch.Tensor:
    """Region scores as a (B, K) table: a list of per-image (K_b,) scores is padded with 0 (absent
    regions, labelled after every real one, so they never rank before one)."""
    if torch.is_tensor(scores):
        return scores.to(device)
    width = max(int(s.numel()) for s in scores)
    table = torch.zeros(len(scores), width, device=device)
    for b, s in enumerate(scores):
        table[b, :s.numel()] = s.to(device, table.dtype)
    return table


def region_rank_map(labels: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Rank of each token's region (0 = most complex): (*grid) labels with (K,) scores, or a batch,
    (B, *grid) labels with (B, K) scores."""
    if scores.ndim == 1:
        return region_rank_map(labels[None], scores[None])[0]
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return torch.gather(rank, 1, labels.reshape(labels.shape[0], -1)).view(labels.shape)


def dilate_min(values: torch.Tensor, radius: int, connectivity: int = 26, batched: bool = False) -> torch.Tensor:
    """Dilation of a rank map: each token takes the minimum over its neighbourhood: the (2r+1)^2 square
    (8-connected) of an image grid; for a video grid the (2r+1)^3 cube (26-connected) or r steps of
    the 6 face neighbours (6-connected). `batched`: the first axis is a batch of grids."""
    if radius <= 0:
        return values
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity {connectivity} is not one of {CONNECTIVITIES}")
    v = (values if batched else values[None]).float()[:, None]          # (B, 1, *grid)
    if v.ndim == 4:
        v = -F.max_pool2d(-v, 2 * radius + 1, stride=1, padding=radius)
    elif connectivity == 26:
        v = -F.max_pool3d(-v, 2 * radius + 1, stride=1, padding=radius)
    else:
        for _ in range(radius):
            p = F.pad(v, (1, 1, 1, 1, 1, 1), value=float("inf"))
            v = torch.stack([v, p[..., :-2, 1:-1, 1:-1], p[..., 2:, 1:-1, 1:-1], p[..., 1:-1, :-2, 1:-1],
                             p[..., 1:-1, 2:, 1:-1], p[..., 1:-1, 1:-1, :-2], p[..., 1:-1, 1:-1, 2:]]).amin(0)
    v = v[:, 0].to(values.dtype)
    return v if batched else v[0]


def dilate_mask(mask: torch.Tensor, radius: int, connectivity: int = 26, batched: bool = False) -> torch.Tensor:
    """The same neighbourhoods for a bool mask: a token is in when any of its neighbourhood is."""
    return dilate_min((~mask).to(torch.int8), radius, connectivity, batched) == 0


def fill_order(priority: torch.Tensor, complexity: torch.Tensor) -> torch.Tensor:
    """(B, n) -> (B, n) token indices of each image sorted by priority (ascending), then complexity
    (descending), then index."""
    by_complexity = torch.sort(complexity, dim=1, descending=True, stable=True).indices
    ranked = torch.sort(torch.gather(priority, 1, by_complexity), dim=1, stable=True).indices
    return torch.gather(by_complexity, 1, ranked)


def select_regions(labels: torch.Tensor, scores, complexity: torch.Tensor, budget: int, dilation: int = 1,
                   mode: str = "inside", forced: torch.Tensor = None, selectable: torch.Tensor = None,
                   connectivity: int = 26) -> torch.Tensor:
    """labels (B, *grid); scores (B, K) or a list of (K_b,) per image; complexity (B, *grid) -> (B, n)
    sorted token indices (grid (h, w), or (t, h, w) for a video: `connectivity` 26 or 6 for its
    dilation). mode "inside": exactly `budget` tokens, dilation included. mode "on_top": the budget's
    regions plus their dilation. `forced` (B, N) bool: tokens that run whatever their region (skipped
    too long); they take part of the budget, and go beyond it only when they are more. `selectable`
    (B, N) bool: the only tokens that may be picked (inpainting: inside the mask). Every image gets as
    many tokens as the largest set (a rectangular batch), topped up in fill order: forced, chosen
    regions, the rest, unselectable last. Inputs may live on any device; the work runs on the labels'."""
    if mode not in DILATION_MODES:
        raise ValueError(f"dilation mode '{mode}' is not one of {DILATION_MODES}")
    device = labels.device
    batch, grid = labels.shape[0], labels.shape[1:]
    n = labels[0].numel()
    budget = max(1, min(int(budget), n))
    complexity = complexity.to(device).reshape(batch, n)
    allowed = (selectable.to(device).reshape(batch, n) if selectable is not None
               else torch.ones(batch, n, dtype=torch.bool, device=device))
    must = forced.to(device).reshape(batch, n) & allowed if forced is not None else torch.zeros_like(allowed)
    rank = region_rank_map(labels, score_table(scores, device))
    dilated = dilate_min(rank, dilation, connectivity, batched=True).reshape(batch, n)
    rank = rank.reshape(batch, n)
    if mode == "inside":
        priority, size = dilated, torch.full((batch,), budget, device=device)
    else:
        outside = torch.where(allowed, rank, rank + n)                      # regions' own tokens first
        order = fill_order(outside, complexity)
        position = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=device).expand(batch, n))
        room = (budget - must.sum(dim=1)).clamp_min(0)                     # forced tokens take part of the budget
        chosen = (position < room[:, None]) & allowed
        grown = dilate_mask(chosen.view(batch, *grid), dilation, connectivity, batched=True).reshape(batch, n) & allowed
        priority = torch.where(grown, torch.zeros_like(dilated), dilated + 1)
        size = (grown | must).sum(dim=1)
    priority = torch.where(must, torch.full_like(priority, -1), priority)
    priority = torch.where(allowed, priority, priority + 2 * n + 2)           # never before allowed ones
    sizes = torch.maximum(torch.minimum(size, allowed.sum(dim=1)), must.sum(dim=1)).clamp_min(1)
    count = int(sizes.max())                                                  # the one host sync
    return fill_order(priority, complexity)[:, :count].sort(dim=1).values
