"""Triton kernel of kernels.fp8_dequant: one program per (leading index, block of sequence rows, block
of channels); reads a byte per value and writes the model's dtype once (the reference casts, then
scales: two passes over the layer)."""
import math

import triton
import triton.language as tl


@triton.jit
def _fp8_dequant_kernel(bits, scale, out, length, width, BLOCK_L: tl.constexpr, BLOCK_Q: tl.constexpr):
    p = tl.program_id(0)
    offs_l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_q = tl.program_id(2) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    in_q = offs_q < width
    mask = (offs_l[:, None] < length) & in_q[None, :]
    offs = p * length * width + offs_l[:, None] * width + offs_q[None, :]
    raw = tl.load(bits + offs, mask=mask, other=0)
    factor = tl.load(scale + p * width + offs_q, mask=in_q, other=0.0).to(tl.float32)
    values = raw.to(tl.float8e4nv, bitcast=True).to(tl.float32) * factor[None, :]
    tl.store(out + offs, values.to(out.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask)


def fp8_dequant_triton(bits, scale, out, seq_dim: int) -> None:
    """bits (contiguous uint8) seen as (P, L, Q) around seq_dim, `scale` (contiguous, size 1 along
    seq_dim) as (P, Q); out: contiguous, bits' shape, the model's dtype."""
    length, width = bits.shape[seq_dim], math.prod(bits.shape[seq_dim + 1:])
    block_l, block_q = 32, min(triton.next_power_of_2(width), 128)
    grid = (math.prod(bits.shape[:seq_dim]), triton.cdiv(length, block_l), triton.cdiv(width, block_q))
    _fp8_dequant_kernel[grid](bits, scale, out, length, width, BLOCK_L=block_l, BLOCK_Q=block_q)
