"""Makes every region spatially contiguous: 4-connected components of equal labels get their own label."""
import torch

ROUNDS_PER_CHECK = 4


def split_disconnected(labels: torch.Tensor, max_rounds: int = 10_000) -> torch.Tensor:
    """(H, W) labels -> (H, W) labels 0..K-1 of 4-connected components, numbered in raster order
    of their first pixel. Runs on the labels' device (min-label propagation with shortcutting)."""
    h, w = labels.shape
    n = h * w
    flat = labels.reshape(-1)
    comp = torch.arange(n, device=labels.device)
    idx = comp.view(h, w)
    # neighbour index per direction, -1 outside the grid or across a label change
    pairs = []
    for dy, dx in ((0, 1), (1, 0)):
        a = idx[: h - dy, : w - dx].reshape(-1)
        b = idx[dy:, dx:].reshape(-1)
        same = flat[a] == flat[b]
        pairs.append((a[same], b[same]))
    src = torch.cat([p[0] for p in pairs] + [p[1] for p in pairs])
    dst = torch.cat([p[1] for p in pairs] + [p[0] for p in pairs])
    for _ in range(0, max_rounds, ROUNDS_PER_CHECK):
        previous = comp
        for _ in range(ROUNDS_PER_CHECK):      # converged rounds change nothing, so check only now and then
            neighbour_min = comp.clone().scatter_reduce_(0, dst, comp[src], reduce="amin")
            comp = torch.minimum(comp, neighbour_min)
            comp = comp[comp]                  # shortcut: jump to the representative's representative
        if torch.equal(comp, previous):        # a host sync on the GPU: once per ROUNDS_PER_CHECK rounds
            break
    return torch.unique(comp, return_inverse=True)[1].view(h, w)


