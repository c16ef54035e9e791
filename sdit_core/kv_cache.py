"""Per-layer key/value cache over the whole joint sequence [text | image tokens].

Each layer keeps one K and one V buffer shaped like a dense step's K/V (after RoPE and QK-norm, as
the attention function receives them). A sparse step writes the fresh text rows and the active image
rows into the buffers in place, then attends against the whole buffer: the context stays complete
without a per-layer `torch.cat` (RAS Eq. 2).

With `store="fp8_e4m3"` the buffers hold float8 (e4m3) values scaled per batch row and channel
(amax of the dense step / 448), half the memory of bf16. A sparse step then attends against a
dequantized copy of the layer in which the rows it just computed are exact: only the stale rows
carry fp8 rounding (docs/BENCHMARKS.md measures its effect on agreement with dense).
"""
from typing import Callable, Dict, Hashable, Optional, Sequence, Tuple

import torch

STORES = ("model dtype", "fp8_e4m3")
FP8_MAX = 448.0             # largest finite float8_e4m3fn value


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


def cache_bytes(layers: Sequence[Tuple[int, int]], rows: int, value_bytes: int, store: Optional[str] = None) -> int:
    """What a cache holds once a dense step stored every layer: `layers` gives each cached attention
    layer's (tokens, channels) per batch row, K and V alike; `value_bytes` is the model dtype's size.
    fp8 keeps a byte a value and a scale per row and channel in the model's dtype (_Fp8Layer)."""
    if store == "fp8_e4m3":
        return sum(2 * rows * channels * (tokens + value_bytes) for tokens, channels in layers)
    return sum(2 * rows * channels * tokens * value_bytes for tokens, channels in layers)


def dequantize_reference(bits: torch.Tensor, scale: torch.Tensor, seq_dim: int) -> torch.Tensor:
    """An fp8 layer (uint8 bits, contiguous) times its scale (the bits' shape with 1 along seq_dim), in
    the scale's dtype (the model's): kernels/fp8_dequant.py does it in one pass on a GPU."""
    return bits.view(torch.float8_e4m3fn).to(scale.dtype).mul_(scale)


Dequantizer = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


class KVCacheOutOfMemory(torch.OutOfMemoryError):
    """The K/V cache does not fit in memory (still an out-of-memory error, so ComfyUI frees its models
    as it does after any): says how big the cache is and what makes it smaller."""


def _stored_copy(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().clone()


def size_text(n: int) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"


class _Fp8Layer:
    """One layer's K or V in float8 with its per-(row, channel) scale, kept as uint8 bits so any row
    writer (index_copy_, the Triton kernel) can write it. Arithmetic stays in the model's dtype: no
    float32 temporaries, as the dequantized copy is made for every sparse attention call."""

    def __init__(self, dense: torch.Tensor, seq_dim: int):
        self.seq_dim = seq_dim
        self.scale = (dense.abs().amax(dim=seq_dim, keepdim=True) / FP8_MAX).clamp_min(1e-12)
        self.bits = self.quantize(dense).contiguous()     # one layout whatever the model's K/V views were

    def quantize(self, values: torch.Tensor) -> torch.Tensor:
        # clamp: a value past the dense step's amax would turn into NaN in e4m3
        return (values / self.scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).view(torch.uint8)

    def dequantize(self, dequantize: Dequantizer) -> torch.Tensor:
        return dequantize(self.bits, self.scale, self.seq_dim)

    def nbytes(self) -> int:
        return self.bits.numel() + self.scale.numel() * self.scale.element_size()


class JointKVCache:
    def __init__(self, write_rows: RowWriter = write_rows_reference, store: Optional[str] = None,
                 dequantize: Dequantizer = dequantize_reference) -> None:
        if store not in (None,) + STORES:
            raise ValueError(f"K/V cache store '{store}' is not one of {', '.join(STORES)}")
        self._layers: Dict[Hashable, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._fp8: Dict[Hashable, Tuple[_Fp8Layer, _Fp8Layer]] = {}
        self._write_rows = write_rows
        self._dequantize = dequantize
        self.fp8 = store == "fp8_e4m3"
        self.generation = 0     # bumped when a buffer is (re)allocated: captured graphs hold the old addresses

    def __contains__(self, layer: Hashable) -> bool:
        return layer in self._layers or layer in self._fp8

    def __len__(self) -> int:
        return len(self._layers) + len(self._fp8)

    def numbered_layers(self) -> int:
        """The model's layers (numbered in call order); named ones belong to a network beside it."""
        return sum(1 for layer in (*self._layers, *self._fp8) if isinstance(layer, int))

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self._layers.values()) \
            + sum(k.nbytes() + v.nbytes() for k, v in self._fp8.values())

    def store_dense(self, layer: Hashable, k: torch.Tensor, v: torch.Tensor, seq_dim: int = 1) -> None:
        """A dense step refreshes the whole layer cache (reusing its buffers when shapes match)."""
        k, v = k.detach(), v.detach()       # a cache never holds an autograd graph (some samplers leave it on)
        try:
            if self.fp8:
                self._fp8[layer] = (_Fp8Layer(k, seq_dim), _Fp8Layer(v, seq_dim))
                self.generation += 1
                return
            entry = self._layers.get(layer)
            if entry is not None and entry[0].shape == k.shape and entry[0].dtype == k.dtype and entry[0].device == k.device:
                entry[0].copy_(k)
                entry[1].copy_(v)
            else:
                self._layers[layer] = (_stored_copy(k), _stored_copy(v))
                self.generation += 1
        except torch.OutOfMemoryError as error:
            per_layer = (k.numel() + v.numel()) * (1 if self.fp8 else k.element_size())     # fp8: a byte a value
            raise KVCacheOutOfMemory(
                f"region-adaptive sampling keeps every attention layer's keys and values of every token (the K/V "
                f"cache): {size_text(self.nbytes())} held for {len(self)} layers, and the next layer's "
                f"{size_text(per_layer)} did not fit in memory. Use the kv_cache input's fp8_e4m3 (half the size), a "
                f"smaller image or fewer frames, or sample with KSampler") from error

    def write_sparse(self, layer: Hashable, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor,
                     seq_dim: int, shared: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """k, v hold the rows that ran (text, then active image tokens) along seq_dim; rows (B, L)
        are their rows in the full joint sequence. Returns the refreshed full K and V."""
        k, v = k.detach(), v.detach()       # a cache never holds an autograd graph
        if self.fp8:
            return self._write_sparse_fp8(layer, k, v, rows, seq_dim, shared)
        if layer not in self._layers:
            raise KeyError(f"no dense K/V cached for layer {layer!r}; a dense step must come first")
        cache_k, cache_v = self._layers[layer]
        if k.shape[seq_dim] != rows.shape[1]:
            raise ValueError(f"layer {layer!r}: sequence of {k.shape[seq_dim]} rows, {rows.shape[1]} expected")
        self._write_rows(cache_k, cache_v, k, v, rows, seq_dim, shared)
        return cache_k, cache_v

    def _write_sparse_fp8(self, layer, k, v, rows, seq_dim, shared):
        if layer not in self._fp8:
            raise KeyError(f"no dense K/V cached for layer {layer!r}; a dense step must come first")
        cache_k, cache_v = self._fp8[layer]
        if k.shape[seq_dim] != rows.shape[1]:
            raise ValueError(f"layer {layer!r}: sequence of {k.shape[seq_dim]} rows, {rows.shape[1]} expected")
        self._write_rows(cache_k.bits, cache_v.bits, cache_k.quantize(k), cache_v.quantize(v), rows, seq_dim, shared)
        full_k, full_v = cache_k.dequantize(self._dequantize), cache_v.dequantize(self._dequantize)
        self._write_rows(full_k, full_v, k, v, rows, seq_dim, shared)     # the rows that ran stay exact
        return full_k, full_v
