"""Per-layer key/value cache over the whole joint sequence [text | image tokens].

Each layer keeps one K and one V buffer shaped like a dense step's K/V (after RoPE and QK-norm, as
the attention function receives them). A sparse step writes the fresh text rows and the active image
rows into the buffers in place, then attends against the whole buffer: the context stays complete
without a per-layer `torch.cat` (RAS Eq. 2).
"""
from typing import Callable, Dict, Hashable, Tuple

import torch


def write_rows_reference(cache_k, cache_v, k, v, rows: torch.Tensor, seq_dim: int, shared: bool) -> None:
    """cache[b, rows[b, i]] = new[b, i] along seq_dim (1: (B, L, C), 2: (B, H, L, D)), for K and V.
    `shared`: every batch item has the same rows (one index_copy_ per tensor)."""
    if shared:
        cache_k.index_copy_(seq_dim, rows[0], k)
        cache_v.index_copy_(seq_dim, rows[0], v)
        return
    batch = torch.arange(rows.shape[0], device=rows.device)[:, None]
    if seq_dim == 2:   # advanced indexing puts (B, n) first, then H, D
        cache_k[batch, :, rows] = k.transpose(1, 2)
        cache_v[batch, :, rows] = v.transpose(1, 2)
    else:
        cache_k[batch, rows] = k
        cache_v[batch, rows] = v


RowWriter = Callable[..., None]


class JointKVCache:
    def __init__(self, write_rows: RowWriter = write_rows_reference) -> None:
        self._layers: Dict[Hashable, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._write_rows = write_rows
        self.generation = 0     # bumped when a buffer is (re)allocated: captured graphs hold the old addresses

    def __contains__(self, layer: Hashable) -> bool:
        return layer in self._layers

    def __len__(self) -> int:
        return len(self._layers)

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self._layers.values())

    def store_dense(self, layer: Hashable, k: torch.Tensor, v: torch.Tensor) -> None:
        """A dense step refreshes the whole layer cache (reusing its buffers when shapes match)."""
        entry = self._layers.get(layer)
        if entry is not None and entry[0].shape == k.shape and entry[0].dtype == k.dtype and entry[0].device == k.device:
            entry[0].copy_(k)
            entry[1].copy_(v)
        else:
            self._layers[layer] = (k.contiguous().clone(), v.contiguous().clone())
            self.generation += 1

    def write_sparse(self, layer: Hashable, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor,
                     seq_dim: int, shared: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """k, v hold the rows that ran (text, then active image tokens) along seq_dim; rows (B, L)
        are their rows in the full joint sequence. Returns the refreshed full K and V."""
        if layer not in self._layers:
            raise KeyError(f"no dense K/V cached for layer {layer!r}; a dense step must come first")
        cache_k, cache_v = self._layers[layer]
        if k.shape[seq_dim] != rows.shape[1]:
            raise ValueError(f"layer {layer!r}: sequence of {k.shape[seq_dim]} rows, {rows.shape[1]} expected")
        self._write_rows(cache_k, cache_v, k, v, rows, seq_dim, shared)
        return cache_k, cache_v
