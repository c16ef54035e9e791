"""Turns an fp8 (e4m3) K/V cache layer back into the model's dtype for a sparse attention call: the
whole layer, every step, so its memory traffic counts. The PyTorch reference
(sdit_core.kv_cache.dequantize_reference) casts and then scales, two passes; the Triton kernel reads a
byte per value and writes once. Triton converts e4m3 on GPUs of compute capability 8.9 and newer."""
import torch

from ..sdit_core.kv_cache import dequantize_reference
from . import triton_enabled


def dequantize_fp8(bits: torch.Tensor, scale: torch.Tensor, seq_dim: int) -> torch.Tensor:
    if triton_enabled(bits) and _converts_fp8(bits) and bits.is_contiguous() and scale.is_contiguous():
        from .fp8_dequant_triton import fp8_dequant_triton
        out = torch.empty(bits.shape, dtype=scale.dtype, device=bits.device)
        fp8_dequant_triton(bits, scale, out, seq_dim)
        return out
    return dequantize_reference(bits, scale, seq_dim)


def _converts_fp8(tensor: torch.Tensor) -> bool:
    return not tensor.is_cuda or torch.cuda.get_device_capability(tensor.device) >= (8, 9)
