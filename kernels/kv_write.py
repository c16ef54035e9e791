"""Writes one forward's fresh K and V rows into a layer's joint K/V cache, in place.

`rows[b, i]` is the cache row that source row i of batch item b goes to (text rows first, then the
active image tokens). When every image has the same rows, two `index_copy_` launches do it (the
cheapest on the CPU, which bounds batch-1 sparse forwards). When the images' rows differ, PyTorch
needs advanced indexing (index arithmetic, several launches); the Triton kernel writes K and V of
every row in one launch instead. Measured on an H100 in docs/BENCHMARKS.md.
"""
from ..sdit_core.kv_cache import write_rows_reference
from . import triton_enabled


def kv_write(cache_k, cache_v, k, v, rows, seq_dim: int, shared: bool) -> None:
    if not shared and triton_enabled(k):
        from .kv_write_triton import kv_write_triton
        kv_write_triton(cache_k, cache_v, k, v, rows, seq_dim)
    else:
        write_rows_reference(cache_k, cache_v, k, v, rows, seq_dim, shared)
