"""The smallest Triton kernel: launching it shows that Triton can build kernels on this machine."""
import torch
import triton
import triton.language as tl


@triton.jit
def _store_one(out):
    tl.store(out, 1)


def launch_probe(device: torch.device) -> None:
    _store_one[(1,)](torch.zeros(1, dtype=torch.int32, device=device))
