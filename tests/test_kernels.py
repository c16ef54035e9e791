"""Triton kernels against their PyTorch references, on the CPU through Triton's interpreter."""
import inspect
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT

try:
    import triton  # noqa: F401
    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False


@pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed (the PyTorch reference is used then)")
def test_kv_write_triton_matches_reference_in_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "kernel_checks.py")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kv_write ok" in result.stdout
    assert "fp8_dequant ok" in result.stdout
    if "quickshift skipped" in result.stdout:
        pytest.skip("this Triton's interpreter cannot loop over a kernel argument (Triton 3.3 and 3.6 with numpy 2); "
                    "the Quickshift kernels compile (test_triton_kernels_compile_for_gpus)")
    assert "quickshift ok" in result.stdout


# GPUs the kernels must compile for, as (backend, architecture, threads per warp): NVIDIA Turing (T4, RTX 20),
# Ampere (A100; RTX 30 is 8.6), Ada (RTX 40, L40S), Hopper (H100/H200), Blackwell (B200; RTX 50 is 12.0);
# AMD under ROCm, where PyTorch's device is "cuda" too: CDNA 2 / 3 / 4 (MI200, MI300, MI350), RDNA 3 / 4
# (RX 7900, RX 9070). fp8 e4m3 converts on NVIDIA from compute capability 8.9 on (kernels/fp8_dequant.py
# falls back below it); ROCm reports 9.0 and above for every AMD GPU here, so they all take the kernel
TARGETS = {"sm75": ("cuda", 75, 32), "sm80": ("cuda", 80, 32), "sm86": ("cuda", 86, 32), "sm89": ("cuda", 89, 32),
           "sm90": ("cuda", 90, 32), "sm100": ("cuda", 100, 32), "sm120": ("cuda", 120, 32),
           "gfx90a": ("hip", "gfx90a", 64), "gfx942": ("hip", "gfx942", 64), "gfx950": ("hip", "gfx950", 64),
           "gfx1100": ("hip", "gfx1100", 32), "gfx1201": ("hip", "gfx1201", 32)}
TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int64: "i64",
                torch.int32: "i32", torch.uint8: "u8"}


def recorded_launches(monkeypatch, module, kernel_names, call):
    """Runs a kernel's Python wrapper with its kernels replaced by recorders: each launch's kernel and
    arguments, as the wrapper builds them (nothing runs)."""
    launches = []
    for name in kernel_names:
        kernel = getattr(module, name)
        kernel = kernel.kernel if isinstance(kernel, LaunchRecorder) else kernel     # left by an earlier call
        monkeypatch.setattr(module, name, LaunchRecorder(kernel, launches))
    call()
    return launches


class LaunchRecorder:
    """Stands for a Triton kernel: `kernel[grid](*args, **constexprs)` records the launch."""
    def __init__(self, kernel, launches: list):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.kernel, args, kwargs))


def triton_signature(kernel, args, constexprs):
    def kind(value):
        if isinstance(value, torch.Tensor):
            return "*" + TRITON_TYPES[value.dtype]
        if isinstance(value, bool):
            return "i1"
        if isinstance(value, int):
            return "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
        return "fp32"
    signature = {name: kind(value) for name, value in zip(kernel.arg_names, args)}
    signature.update({name: "constexpr" for name in constexprs})
    return signature


def ast_source(kernel, args, constexprs):
    """What Triton compiles: the kernel with its arguments' types and its constexprs' values. Triton 3.1
    (torch 2.5's) takes them by position and calls the constexprs constants; newer Triton, by name."""
    from triton.compiler import ASTSource
    signature = triton_signature(kernel, args, constexprs)
    if "constexprs" in inspect.signature(ASTSource).parameters:
        return ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    position = {name: i for i, name in enumerate(kernel.arg_names)}
    return ASTSource(fn=kernel, signature={position[n]: kind for n, kind in signature.items() if kind != "constexpr"},
                     constants={position[n]: value for n, value in constexprs.items()})


def hip_linker_missing() -> str:
    """Why AMD binaries cannot be linked here, or '': Triton up to 3.3 (torch 2.7's) links them with ld.lld
    from a ROCm install, which a ROCm user has and this machine not; newer Triton links them itself."""
    try:
        from triton.backends.amd import compiler
        find_linker = getattr(compiler.HIPBackend, "path_to_rocm_lld", None)
        if find_linker is not None:
            find_linker()
    except Exception as error:          # noqa: BLE001 (Triton raises a bare Exception for it)
        return str(error)
    return ""


def kernel_launches(monkeypatch):
    """Every Triton kernel of the pack as its wrapper launches it, in the layouts and dtypes the pack uses."""
    from comfyui_sdit.kernels import fp8_dequant_triton, kv_write_triton, quickshift_triton
    g = torch.Generator().manual_seed(0)
    launches = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        cache, fresh = torch.zeros(2, 3, 40, 64, dtype=dtype), torch.randn(2, 3, 9, 64, generator=g).to(dtype)
        rows = torch.stack([torch.randperm(40, generator=g)[:9] for _ in range(2)])
        launches += recorded_launches(
            monkeypatch, kv_write_triton, ["_kv_write_kernel"],
            lambda: kv_write_triton.kv_write_triton(cache, cache.clone(), fresh, fresh.clone(), rows, 2))
        bits = torch.zeros(2, 3, 40, 64, dtype=torch.uint8)
        scale = torch.ones(2, 3, 1, 64, dtype=dtype)
        launches += recorded_launches(
            monkeypatch, fp8_dequant_triton, ["_fp8_dequant_kernel"],
            lambda: fp8_dequant_triton.fp8_dequant_triton(bits, scale, torch.empty(bits.shape, dtype=dtype), 2))
    for frames, width in ((1, 32), (3, 96)):
        x, noise = torch.randn(2, frames * 8 * 9, width), torch.zeros(frames * 8 * 9)
        launches += recorded_launches(monkeypatch, quickshift_triton, ["_density_kernel", "_parent_kernel"],
                                      lambda: quickshift_triton.quickshift_parents_triton(
                                          x, noise, (frames, 8, 9), 6, min(frames - 1, 6), 1.0, 2.0, 6.0))
    return launches


@pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed (the PyTorch reference is used then)")
@pytest.mark.parametrize("target", TARGETS)
def test_triton_kernels_compile_for_gpus(target, monkeypatch):
    """Triton compiles each kernel, as its wrapper launches it, down to the target GPU's binary (a cubin,
    an hsaco) without one being here (Triton's own LLVM, ptxas and linker): the interpreter runs the
    kernels' semantics on the CPU, but not the compiler's checks (types carried through loops, what a GPU
    target can lower)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import compile as triton_compile
    launches = kernel_launches(monkeypatch)
    names = {kernel.fn.__name__ for kernel, _, _ in launches}
    assert names == {"_kv_write_kernel", "_fp8_dequant_kernel", "_density_kernel", "_parent_kernel"}
    backend, arch, warp = TARGETS[target]
    missing = hip_linker_missing() if backend == "hip" else ""
    if missing:
        pytest.skip(f"this Triton links AMD binaries with ROCm's own linker, which this machine lacks ({missing})")
    for kernel, args, constexprs in launches:
        if kernel.fn.__name__ == "_fp8_dequant_kernel" and backend == "cuda" and arch < 89:
            continue
        try:
            compiled = triton_compile(ast_source(kernel, args, constexprs), target=GPUTarget(backend, arch, warp))
        except RuntimeError as error:
            if "is not defined for option 'gpu-name'" not in str(error):
                raise
            pytest.skip(f"the ptxas of this Triton ({triton.__version__}) predates sm_{arch}, as does the CUDA of "
                        f"the PyTorch it came with (Blackwell GPUs: PyTorch 2.7 and newer)")
        assert compiled.asm["cubin" if backend == "cuda" else "hsaco"], kernel.fn.__name__


@pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed (the PyTorch reference is used then)")
def test_the_references_serve_where_triton_cannot_launch(monkeypatch, caplog):
    """An install whose Triton cannot build kernels (no C compiler for the launchers, a broken GPU
    toolchain) gets the PyTorch references and one warning that says so, not a failure inside the
    sampler; the probe runs once per device."""
    import logging
    from comfyui_sdit import kernels
    from comfyui_sdit.kernels import launch_probe_triton
    from comfyui_sdit.kernels.quickshift import quickshift_parents
    from comfyui_sdit.sdit_core.segmentation import QuickshiftParams
    from comfyui_sdit.sdit_core.segmentation.quickshift_torch import grid_parents
    tried = []

    def cannot_build(device):
        tried.append(device)
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")
    monkeypatch.setattr(launch_probe_triton, "launch_probe", cannot_build)
    monkeypatch.setenv("TRITON_INTERPRET", "1")                  # CPU tensors would be Triton's
    kernels._triton_launches.cache_clear()
    features, params = torch.randn(2, 1, 6, 7, 3), QuickshiftParams(kernel_size=1.0, max_dist=3.0)
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(2):
                assert torch.equal(quickshift_parents(features, params), grid_parents(features, params))
    finally:
        kernels._triton_launches.cache_clear()
    assert len(tried) == 1
    said = [record.getMessage() for record in caplog.records if "Triton cannot launch" in record.getMessage()]
    assert len(said) == 1 and "Failed to find C compiler" in said[0] and "PyTorch references" in said[0]
