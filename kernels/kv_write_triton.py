"""Triton kernel of kernels.kv_write: one program per (batch*head, block of source rows, block of
channels). Channels come in blocks of at most 128: layouts that hand over a whole row as channels
(SD3's (B, L, H*D), Wan's 5120) would otherwise put thousands of them in one program."""
import triton
import triton.language as tl


@triton.jit
def _kv_write_kernel(src_k, src_v, dst_k, dst_v, rows, heads, length, dim,
                     sk_b, sk_h, sk_l, sk_d, sv_b, sv_h, sv_l, sv_d,
                     dk_b, dk_h, dk_l, dk_d, dv_b, dv_h, dv_l, dv_d, rows_b,
                     BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    bh = tl.program_id(0)
    b = bh // heads
    h = bh % heads
    offs_l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_l = offs_l < length
    mask = in_l[:, None] & (offs_d[None, :] < dim)
    dest = tl.load(rows + b * rows_b + offs_l, mask=in_l, other=0)
    key = tl.load(src_k + b * sk_b + h * sk_h + offs_l[:, None] * sk_l + offs_d[None, :] * sk_d, mask=mask)
    tl.store(dst_k + b * dk_b + h * dk_h + dest[:, None] * dk_l + offs_d[None, :] * dk_d, key, mask=mask)
    value = tl.load(src_v + b * sv_b + h * sv_h + offs_l[:, None] * sv_l + offs_d[None, :] * sv_d, mask=mask)
    tl.store(dst_v + b * dv_b + h * dv_h + dest[:, None] * dv_l + offs_d[None, :] * dv_d, value, mask=mask)


MAX_BLOCK_D = 128


def kv_write_triton(cache_k, cache_v, k, v, rows, seq_dim: int) -> None:
    if seq_dim == 1:   # (B, L, ...) -> (B, 1, L, C): SD3 hands V over as (B, L, H, D), K as (B, L, H*D)
        k, v = (t.reshape(t.shape[0], 1, t.shape[1], -1) for t in (k, v))
        cache_k, cache_v = (t.view(t.shape[0], 1, t.shape[1], -1) for t in (cache_k, cache_v))   # in place
    batch, heads, length, dim = k.shape
    block_l = 32
    block_d = min(triton.next_power_of_2(dim), MAX_BLOCK_D)
    grid = (batch * heads, triton.cdiv(length, block_l), triton.cdiv(dim, block_d))
    _kv_write_kernel[grid](k, v, cache_k, cache_v, rows, heads, length, dim,
                           *k.stride(), *v.stride(), *cache_k.stride(), *cache_v.stride(), rows.stride(0),
                           BLOCK_L=block_l, BLOCK_D=block_d)
