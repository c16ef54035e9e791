"""Makes every region spatially contiguous: 4-connected (video: 6-connected) components of equal labels
get their own label."""
import numpy as np
import torch


def split_disconnected(labels: torch.Tensor, batch_dims: int = 0) -> torch.Tensor:
    """(H, W) or (T, H, W) labels -> labels 0..K-1 of 4- (6-) connected components, numbered in raster
    order of their first token, on the labels' device. The first `batch_dims` axes are a batch: nothing
    connects across them, and each item's labels start at 0.

    Runs on the host (scikit-image's connected-component labelling, C): one copy of the labels each way.
    On a GPU the same pass in torch took ~100 small kernels and five host syncs per sampler step (label
    propagation rounds and their convergence checks), on the CPU ~35x the time (docs/BENCHMARKS.md)."""
    from skimage.measure import label as connected_components
    host = labels.detach().cpu().numpy()
    items = host.reshape(-1, *host.shape[batch_dims:])
    # background=-1 is a value no label takes: every token belongs to a component, numbered from 1
    split = np.stack([connected_components(item, background=-1, connectivity=1) - 1 for item in items])
    return torch.from_numpy(split.astype(np.int64).reshape(host.shape)).to(labels.device)
