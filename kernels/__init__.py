"""GPU kernels of the pack. Each kernel has a PyTorch reference next to it, used on the CPU, when
Triton is missing or cannot build kernels here, or with SDIT_KERNELS=torch; tests compare the two
(Triton's interpreter on CPU) and compile every kernel, as its wrapper launches it, for NVIDIA GPUs from
Turing to Blackwell and AMD GPUs under ROCm (CDNA, RDNA 3 / 4) without one."""
import functools
import logging
import os


def triton_enabled(tensor) -> bool:
    """Use Triton for this tensor's device? (CUDA + Triton importable and able to build kernels here +
    not disabled)."""
    if os.environ.get("SDIT_KERNELS", "auto") == "torch":
        return False
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if not (tensor.is_cuda or interpret):
        return False
    return _triton_launches(tensor.device.type, tensor.device.index, interpret)


@functools.lru_cache(maxsize=None)
def _triton_launches(device_type: str, index, interpret: bool) -> bool:
    """Whether Triton imports and launches a kernel on this device. The first launch of each kernel builds
    its launcher with the machine's C compiler and its code with the GPU's toolchain; an install that
    lacks one fails there, and the pack's PyTorch references serve instead (tried once per device, no
    host sync)."""
    try:
        import torch
        from .launch_probe_triton import launch_probe
        launch_probe(torch.device(device_type, index))
        return True
    except ImportError:
        return False
    except Exception as error:       # Triton's failures have no common class: compiler, driver, launcher
        logging.warning("[SDiT] Triton cannot launch kernels on %s here (%s: %s): the pack uses its PyTorch "
                        "references instead (slower on a GPU; set SDIT_KERNELS=torch to skip this check)",
                        device_type if index is None else f"{device_type}:{index}", type(error).__name__,
                        str(error).splitlines()[0] if str(error) else "")
        return False
