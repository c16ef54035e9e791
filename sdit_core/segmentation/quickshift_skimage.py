"""Reference backend: scikit-image's Quickshift on the token features (convert2lab=False)."""
import numpy as np
import torch
from skimage.segmentation import quickshift

from . import QuickshiftParams


def quickshift_skimage(features: torch.Tensor, params: QuickshiftParams) -> torch.Tensor:
    image = np.ascontiguousarray(features.detach().to("cpu", torch.float64).numpy())
    labels = quickshift(image, ratio=params.ratio, kernel_size=params.kernel_size, max_dist=params.max_dist,
                        sigma=0, convert2lab=False, rng=params.seed, channel_axis=-1)
    return torch.from_numpy(np.asarray(labels, dtype=np.int64))
