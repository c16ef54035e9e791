"""Quickshift segmentation of the token grid (SDiT Eq. 3-4), three interchangeable backends.

    labels = segment(features, QuickshiftParams(...), backend="torch" | "hnsw" | "skimage")
    labels = segment_batch(features, ...)      # (B, ...) features: the torch backend does a batch in one pass

features: (H, W, F) token features; labels: (H, W) int64 in 0..K-1, every region spatially
contiguous (4-connected: disconnected parts of one Quickshift tree become separate regions).
A video's features (T, H, W, F) are segmented as a 3-D grid (quickshift_video.py, the torch backend;
regions 6-connected), the frame index a third coordinate scaled by `frame_scale`.
"""
import importlib
from dataclasses import dataclass

import torch

from .contiguity import split_disconnected

BACKENDS = ("torch", "hnsw", "skimage")
# modules each backend imports when it runs (every one ends with the contiguity pass: scikit-image), and
# the pip package of each
_NEEDS = {"torch": ("skimage.measure",), "hnsw": ("hnswlib", "skimage.measure"),
          "skimage": ("skimage.segmentation", "skimage.measure")}
_PACKAGES = {"skimage": "scikit-image", "hnswlib": "hnswlib"}


def missing_packages(backend: str) -> list:
    """pip packages the backend needs that cannot be imported here: checked before sampling, so a missing
    one is named there rather than failing the first segmentation."""
    missing = []
    for module in _NEEDS[backend]:
        try:
            importlib.import_module(module)
        except ImportError:
            package = _PACKAGES[module.split(".")[0]]
            if package not in missing:
                missing.append(package)
    return missing


@dataclass(frozen=True)
class QuickshiftParams:
    kernel_size: float = 2.0     # sigma of the Gaussian density kernel (tokens); window = ceil(3 sigma)
    max_dist: float = 6.0        # longest link to a denser neighbour (joint feature+position distance)
    ratio: float = 1.0           # weight of features against position (features are multiplied by it)
    seed: int = 42               # tie-breaking noise, as skimage does
    neighbours: int = 0          # hnsw backend: neighbours of the kNN graph (0: those of a radius-3-sigma disc)

    def validate(self) -> "QuickshiftParams":
        if self.kernel_size <= 0 or self.max_dist <= 0 or self.ratio < 0:
            raise ValueError("kernel_size and max_dist must be > 0, ratio >= 0")
        return self


def tie_noise(height: int, width: int, seed: int) -> torch.Tensor:
    """The tiny density noise that breaks ties, drawn as skimage draws it (same seed, same values)."""
    import numpy as np
    return torch.from_numpy(np.random.default_rng(seed).normal(scale=0.00001, size=(height, width)))


def segment(features: torch.Tensor, params: QuickshiftParams = QuickshiftParams(), backend: str = "torch",
            frame_scale: float = 1.0, parents=None) -> torch.Tensor:
    params.validate()
    if features.ndim not in (3, 4):
        raise ValueError(f"features must be (H, W, F) or (T, H, W, F), got {tuple(features.shape)}")
    if backend == "torch":          # one code path for images and videos: a batch of one
        return segment_batch(features[None], params, backend, frame_scale, parents)[0]
    if features.ndim == 4:
        raise ValueError(f"segmentation backend '{backend}' is 2-D only; videos are segmented by 'torch'")
    if backend == "hnsw":
        from .quickshift_hnsw import quickshift_hnsw as run
    elif backend == "skimage":
        from .quickshift_skimage import quickshift_skimage as run
    else:
        raise ValueError(f"unknown segmentation backend '{backend}', expected one of {BACKENDS}")
    labels = run(features, params)
    return split_disconnected(labels.to(features.device))


def segment_batch(features: torch.Tensor, params: QuickshiftParams = QuickshiftParams(), backend: str = "torch",
                  frame_scale: float = 1.0, parents=None) -> torch.Tensor:
    """(B, H, W, F) or (B, T, H, W, F) -> (B, H, W) or (B, T, H, W): segment() of every item, equal to
    stacking them. The torch backend segments the whole batch in one pass (fewer kernel launches and
    host syncs per sampler step); the others go item by item. `parents`: how the torch backend computes
    Quickshift's parents, as `quickshift_torch.grid_parents` (its default) does: the node hands it
    kernels.quickshift.quickshift_parents (Triton kernels on a GPU)."""
    params.validate()
    if backend != "torch":
        return torch.stack([segment(item, params, backend, frame_scale) for item in features])
    if features.ndim not in (4, 5):
        raise ValueError(f"features must be (B, H, W, F) or (B, T, H, W, F), got {tuple(features.shape)}")
    from .quickshift_torch import grid_parents, tree_roots
    grid = features if features.ndim == 5 else features[:, None]
    roots = tree_roots((parents or grid_parents)(grid, params, frame_scale))
    return split_disconnected(roots.view(features.shape[:-1]), batch_dims=1)
