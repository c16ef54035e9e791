"""Approximate-nearest-neighbour Quickshift (the SDiT paper's ANN acceleration) with hnswlib.

A kNN graph over the joint [ratio * features, row, col] space replaces the spatial window: density
from each point's k nearest neighbours, parent = nearest of them with a higher density within
max_dist, roots by pointer jumping. O(N log N) instead of a dense window scan.
"""
import math

import hnswlib
import numpy as np
import torch

from . import QuickshiftParams, tie_noise


def quickshift_hnsw(features: torch.Tensor, params: QuickshiftParams) -> torch.Tensor:
    h, w, f = features.shape
    n = h * w
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    points = np.concatenate([features.detach().to("cpu", torch.float64).numpy().reshape(n, f) * params.ratio,
                             rows.reshape(n, 1), cols.reshape(n, 1)], axis=1).astype(np.float32)
    # as many neighbours as the torch/skimage window holds in a disc of radius 3 sigma, unless set
    k = min(n, params.neighbours or math.ceil(math.pi * (3 * params.kernel_size) ** 2))
    index = hnswlib.Index(space="l2", dim=points.shape[1])              # l2 = squared distance
    index.init_index(max_elements=n, ef_construction=max(100, k), M=16, random_seed=params.seed)
    index.set_num_threads(1)                                            # deterministic graph
    index.add_items(points, np.arange(n))
    index.set_ef(max(2 * k, 64))
    neighbours, d2 = index.knn_query(points, k=k)                       # (n, k), squared distances
    neighbours = neighbours.astype(np.int64)
    d2 = d2.astype(np.float64)
    density = np.exp(d2 * (-0.5 / params.kernel_size ** 2)).sum(axis=1)
    density += tie_noise(h, w, params.seed).numpy().reshape(-1)
    higher = density[neighbours] > density[:, None]
    candidate = np.where(higher, d2, math.inf)
    best = candidate.argmin(axis=1)
    closest = candidate[np.arange(n), best]
    parent = np.where(closest <= params.max_dist ** 2, neighbours[np.arange(n), best], np.arange(n))
    for _ in range(max(1, math.ceil(math.log2(n))) + 1):
        parent = parent[parent]
    return torch.from_numpy(np.unique(parent, return_inverse=True)[1].reshape(h, w).astype(np.int64))
