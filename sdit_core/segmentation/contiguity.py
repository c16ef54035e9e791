"""Makes every region spatially contiguous: 4-connected (video: 6-connected) components of equal labels
get their own label."""
import math

import torch

ROUNDS_PER_CHECK = 3


def split_disconnected(labels: torch.Tensor, max_rounds: int = 10_000, batch_dims: int = 0) -> torch.Tensor:
    """(H, W) or (T, H, W) labels -> labels 0..K-1 of 4- (6-) connected components, numbered in raster
    order of their first token. Runs on the labels' device: each component's smallest token index
    wins, by hooking representatives onto smaller neighbouring labels and pointer jumping (whole trees
    merge each round: a region snaking through a 128x128 grid takes 18 rounds, not ~130).
    The first `batch_dims` axes are a batch: nothing connects across them, and each item's labels
    start at 0."""
    shape = labels.shape
    n = labels.numel()
    flat = labels.reshape(-1)
    comp = torch.arange(n, device=labels.device)
    idx = comp.view(shape)
    # every pair of neighbours along each axis, both ways; only pairs with equal labels connect (kept
    # as a mask, not selected: selecting has a data-dependent size, a host sync on the GPU)
    pairs = []
    for axis in range(batch_dims, len(shape)):
        pairs.append((idx.narrow(axis, 0, shape[axis] - 1).reshape(-1), idx.narrow(axis, 1, shape[axis] - 1).reshape(-1)))
    src = torch.cat([p[0] for p in pairs] + [p[1] for p in pairs])
    dst = torch.cat([p[1] for p in pairs] + [p[0] for p in pairs])
    connected = flat[src] == flat[dst]
    for _ in range(0, max_rounds, ROUNDS_PER_CHECK):
        previous = comp
        for _ in range(ROUNDS_PER_CHECK):      # converged rounds change nothing, so check only now and then
            offered = torch.where(connected, comp[src], n)      # across a region border: nothing
            # hook each representative onto the smallest label offered to any token it represents
            comp = comp.clone().scatter_reduce_(0, comp[dst], offered, reduce="amin")
            comp = comp[comp]                  # shortcut: jump to the representative's representative
        if torch.equal(comp, previous):        # a host sync on the GPU: once per ROUNDS_PER_CHECK rounds
            break
    labels = torch.unique(comp, return_inverse=True)[1].view(shape)
    if batch_dims:      # raster order numbers each item's components after the previous item's
        items = labels.reshape(math.prod(shape[:batch_dims]), -1)
        labels = (items - items.min(dim=1, keepdim=True).values).view(shape)
    return labels


