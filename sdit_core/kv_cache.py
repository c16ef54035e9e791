"""Per-layer key/value cache over the whole joint sequence [text | image tokens].

Each layer keeps one K and one V buffer shaped like a dense step's K/V (after RoPE and QK-norm, as
the attention function receives them). A sparse step writes the fresh text rows and the active image
rows into the buffers in place, then attends against the whole buffer: the context stays complete
without a per-layer `torch.cat` (RAS Eq. 2).
"""
from typing import Dict, Hashable, Tuple

import torch


def _write_rows_(buffer: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, seq_dim: int) -> None:
    """buffer[b, ..., rows[b], ...] = values[b] along seq_dim (1 or 2), one row set per batch item."""
    if rows.shape[0] == 1 or bool((rows == rows[:1]).all()):
        buffer.index_copy_(seq_dim, rows[0], values)  # one index for the whole batch: cheapest path
        return
    batch = torch.arange(rows.shape[0], device=rows.device)[:, None]
    if seq_dim == 2:  # (B, H, L, D): advanced indexing puts (B, n) first, then H, D
        buffer[batch, :, rows] = values.transpose(1, 2)
    else:  # (B, L, C)
        buffer[batch, rows] = values


class JointKVCache:
    def __init__(self) -> None:
        self._layers: Dict[Hashable, Tuple[torch.Tensor, torch.Tensor]] = {}

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
            self._layers[layer] = (k.clone(), v.clone())

    def write_sparse(self, layer: Hashable, k: torch.Tensor, v: torch.Tensor, text_len: int,
                     image_rows: torch.Tensor, seq_dim: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """k, v hold [text (text_len rows) | active image tokens] along seq_dim; image_rows (B, n) are
        the active tokens' rows in the full joint sequence. Returns the refreshed full K and V."""
        if layer not in self._layers:
            raise KeyError(f"no dense K/V cached for layer {layer!r}; a dense step must come first")
        cache_k, cache_v = self._layers[layer]
        n = image_rows.shape[1]
        if k.shape[seq_dim] != text_len + n:
            raise ValueError(f"layer {layer!r}: sequence of {k.shape[seq_dim]} rows, expected text {text_len} + active {n}")
        if text_len:
            cache_k.narrow(seq_dim, 0, text_len).copy_(k.narrow(seq_dim, 0, text_len))
            cache_v.narrow(seq_dim, 0, text_len).copy_(v.narrow(seq_dim, 0, text_len))
        _write_rows_(cache_k, image_rows, k.narrow(seq_dim, text_len, n), seq_dim)
        _write_rows_(cache_v, image_rows, v.narrow(seq_dim, text_len, n), seq_dim)
        return cache_k, cache_v
