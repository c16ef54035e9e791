"""GPU kernels of the pack. Each kernel has a PyTorch reference next to it, used on the CPU, when
Triton is missing, or with SDIT_KERNELS=torch; tests compare the two (Triton's interpreter on CPU) and
compile every kernel, as its wrapper launches it, for Turing, Ampere, Hopper and Blackwell GPUs without one."""
import os


def triton_enabled(tensor) -> bool:
    """Use Triton for this tensor's device? (CUDA + Triton importable + not disabled)."""
    if os.environ.get("SDIT_KERNELS", "auto") == "torch":
        return False
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if not (tensor.is_cuda or interpret):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
