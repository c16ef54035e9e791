"""What the sampling device can compute, asked of the device once (not read off its name). Apple's MPS has
no float64 and no float8: the policies' float64 bookkeeping falls back to float32 there, and the fp8 K/V
cache is refused before sampling (nodes/sparse_patch.py). ComfyUI's own differences: nodes/comfy_compat.py."""
import functools

import torch


@functools.lru_cache(maxsize=None)
def _makes(device_type: str, dtype: torch.dtype) -> bool:
    try:
        torch.zeros(1, device=device_type).to(dtype).to(torch.float32)
        return True
    except (TypeError, RuntimeError):      # MPS: "Cannot convert a MPS Tensor to float64 dtype ..."
        return False


def wide_float(device) -> torch.dtype:
    """float64 where the device computes it, else float32: for sums and divided differences that float32
    would round on devices that can do better."""
    return torch.float64 if _makes(torch.device(device).type, torch.float64) else torch.float32


def holds_fp8(device) -> bool:
    """Can the device convert to and from float8 e4m3 (the fp8 K/V cache)?"""
    return _makes(torch.device(device).type, torch.float8_e4m3fn)
