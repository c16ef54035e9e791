"""Kernel-vs-reference checks; run in a subprocess with TRITON_INTERPRET=1 on the CPU (test_kernels.py),
or directly on a GPU: `python tests/kernel_checks.py`."""
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from pack_host import REPO_ROOT  # noqa: E402,F401
import importlib.util  # noqa: E402
import math  # noqa: E402

from quickshift_definition import window_pass  # noqa: E402


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_kv_write(device: str) -> None:
    triton_mod = load("kv_write_triton", REPO_ROOT / "kernels" / "kv_write_triton.py")
    ref = load("kv_cache", REPO_ROOT / "sdit_core" / "kv_cache.py")
    g = torch.Generator().manual_seed(0)
    for layout, (batch, heads, total, dim, text, n) in [("BHLD", (2, 3, 40, 16, 5, 11)), ("BHLD", (1, 2, 70, 24, 0, 70)),
                                                        ("BLC", (2, 1, 33, 48, 4, 9)), ("BLHD", (2, 3, 33, 16, 4, 9)),
                                                        ("BLC", (2, 1, 20, 300, 3, 6))]:   # channels in 3 blocks
        for shared in (False, True):
            rows = [torch.cat([torch.arange(text), text + torch.randperm(total - text, generator=g)[:n]])
                    for _ in range(batch)]
            rows = torch.stack([rows[0]] * batch if shared else rows).to(device)
            if layout == "BHLD":
                cache_shape, src = (batch, heads, total, dim), torch.randn(3, batch, text + n, heads, dim, generator=g)
                k, v = src[1].permute(0, 2, 1, 3).to(device), src[2].permute(0, 2, 1, 3).to(device)  # strided views
                seq_dim = 2
            elif layout == "BLC":
                cache_shape, k, v = (batch, total, dim), torch.randn(batch, text + n, dim, generator=g).to(device), \
                    torch.randn(batch, text + n, dim, generator=g).to(device)
                seq_dim = 1
            else:   # SD3: K flattened to (B, L, H*D), V left as (B, L, H, D); each cache as its tensor came
                k = torch.randn(batch, text + n, heads * dim, generator=g).to(device)
                v = torch.randn(batch, text + n, heads, dim, generator=g).to(device)
                cache_shape, seq_dim = (batch, total, heads * dim), 1
            v_shape = (batch, total, heads, dim) if layout == "BLHD" else cache_shape
            poison_k = torch.randn(cache_shape, generator=g).to(device)
            poison_v = torch.randn(v_shape, generator=g).to(device)
            expect_k, expect_v = poison_k.clone(), poison_v.clone()
            ref.write_rows_reference(expect_k, expect_v, k, v, rows, seq_dim, shared)
            got_k, got_v = poison_k.clone(), poison_v.clone()
            triton_mod.kv_write_triton(got_k, got_v, k, v, rows, seq_dim)
            assert torch.equal(got_k, expect_k) and torch.equal(got_v, expect_v), (layout, shared)
            # the reference itself: written rows hold the source, the others are untouched
            written = torch.zeros(cache_shape[0], total, dtype=torch.bool, device=device).scatter_(1, rows, True)
            untouched = ~written
            ks = expect_k if seq_dim == 1 else expect_k.transpose(1, 2)
            ps = poison_k if seq_dim == 1 else poison_k.transpose(1, 2)
            assert torch.equal(ks[untouched], ps[untouched])
    print("kv_write ok")


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def check_fp8_dequant(device: str) -> None:
    """The fp8 cache layer's one-pass dequantization against the reference, bit for bit: both round the
    float32 product once to the model's dtype. Flux's (B, H, L, D) and SD3/Wan's (B, L, C) layouts,
    a single head and a single image (size-1 axes beside the sequence), channels over several blocks."""
    triton_mod = load("fp8_dequant_triton", REPO_ROOT / "kernels" / "fp8_dequant_triton.py")
    ref = load("kv_cache", REPO_ROOT / "sdit_core" / "kv_cache.py")
    g = torch.Generator().manual_seed(1)
    for shape, seq_dim in (((2, 3, 40, 16), 2), ((2, 37, 300), 1), ((1, 1, 33, 24), 2), ((1, 20, 8), 1)):
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            dense = torch.randn(shape, generator=g).to(device, dtype)
            scale = (dense.abs().amax(dim=seq_dim, keepdim=True) / 448.0).clamp_min(1e-12)
            bits = (dense / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).view(torch.uint8).contiguous()
            expected = ref.dequantize_reference(bits, scale, seq_dim)
            got = torch.empty(shape, dtype=dtype, device=device)
            triton_mod.fp8_dequant_triton(bits, scale, got, seq_dim)
            if INTERPRETED and dtype == torch.bfloat16:
                # the interpreter truncates float32 -> bfloat16 (a GPU rounds to nearest even): one unit
                # in the last place at most
                ulp = torch.finfo(dtype).eps * expected.float().abs().clamp_min(torch.finfo(dtype).tiny)
                assert ((got.float() - expected.float()).abs() <= ulp).all(), (shape, dtype)
            else:
                assert torch.equal(got, expected), (shape, dtype)
            assert (expected.float() - dense.float()).abs().max() <= 0.07 * dense.float().abs().max()   # e4m3: 3 bits
    print("fp8_dequant ok")


def check_quickshift(device: str) -> None:
    """The Triton density against its definition (float32 against float64), and the parents exactly,
    given the kernel's density: features on a lattice of quarters make every distance exact in float32,
    with many ties between window offsets (the first in (dt, dy, dx) order must win). Images (one frame)
    and videos, feature counts that are not powers of two, frame scales that link and that cut frames.
    Then through the pack: the kernels' parents against the PyTorch reference on smooth features."""
    triton_mod = load("quickshift_triton", REPO_ROOT / "kernels" / "quickshift_triton.py")
    g = torch.Generator().manual_seed(2)
    for batch, grid, width, kernel_size, frame_scale, max_dist in [
            (2, (1, 13, 17), 5, 1.0, 1.0, 2.5), (1, (1, 9, 8), 32, 1.0, 1.0, 7.0), (2, (3, 6, 7), 3, 1.0, 1.5, 2.5),
            (1, (3, 5, 9), 6, 0.7, 0.5, 2.5), (1, (5, 4, 4), 2, 1.0, 40.0, 2.5)]:
        tokens = grid[0] * grid[1] * grid[2]
        x = torch.randint(-6, 7, (batch, tokens, width), generator=g).float() * 0.25
        noise = torch.randn(tokens, generator=g) * 1e-5
        half = math.ceil(3 * kernel_size)
        half_t = min(grid[0] - 1, math.ceil(3 * kernel_size / frame_scale))
        got = triton_mod.quickshift_parents_triton(x.to(device), noise.to(device), grid, half, half_t, frame_scale,
                                                   kernel_size, max_dist, with_density=True)
        parents, density = (t.cpu() for t in got)
        for b in range(batch):
            expected_density, _ = window_pass(x[b], grid, half, half_t, frame_scale, kernel_size, max_dist, noise)
            assert torch.allclose(density[b].double(), expected_density, rtol=2e-6, atol=0), (grid, b)
            _, expected = window_pass(x[b], grid, half, half_t, frame_scale, kernel_size, max_dist, noise, density[b])
            assert torch.equal(parents[b], expected), (grid, b)
            linked = (parents[b] != torch.arange(tokens)).float().mean()
            assert 0.3 < linked < 1, (grid, b, linked)           # tokens linked, and roots (max_dist cuts)
    check_quickshift_in_pack(device)
    print("quickshift ok")


def check_quickshift_in_pack(device: str) -> None:
    """kernels.quickshift (Triton here) against the reference, smooth random features as SDiT's look: the
    parents differ only where two densities are a float32 rounding step apart."""
    from pack_host import import_comfyui, load_pack
    import_comfyui(cpu=device == "cpu")
    pack = load_pack()
    from comfyui_sdit.kernels import triton_enabled
    from comfyui_sdit.kernels.quickshift import quickshift_parents
    from comfyui_sdit.sdit_core.segmentation import QuickshiftParams, segment_batch
    from comfyui_sdit.sdit_core.segmentation.agreement import adjusted_rand_index
    from comfyui_sdit.sdit_core.segmentation.quickshift_torch import grid_parents
    assert pack is not None
    assert triton_enabled(torch.zeros(1, device=device)), "Triton launches here: the kernels' path is the one checked"
    g = torch.Generator().manual_seed(3)
    params = QuickshiftParams(kernel_size=1.0, max_dist=4.0, ratio=4.0)
    for shape, scale in [((2, 1, 16, 20, 6), 0.1), ((1, 3, 8, 9, 4), 0.2)]:     # ~25 and ~16 regions
        features = (torch.randn(shape, generator=g).cumsum(2).cumsum(3) * scale).to(device)
        got, expected = quickshift_parents(features, params), grid_parents(features, params)
        assert (got == expected).float().mean() >= 0.99, shape
        grid = features[:, 0] if shape[1] == 1 else features
        labels = segment_batch(grid, params, parents=lambda *_: got)
        reference = segment_batch(grid, params)
        for item, expected_item in zip(labels.cpu(), reference.cpu()):
            assert adjusted_rand_index(item, expected_item) >= 0.98, shape
    # a flat image: its densities tie but for the tie-breaking noise, which alone decides the parents (float32
    # rounds a few of its differences away: 98% agree here, 62% with another seed's noise)
    flat = torch.zeros(1, 1, 12, 12, 4, device=device)
    assert (quickshift_parents(flat, params) == grid_parents(flat, params)).float().mean() >= 0.95
    # what a step's segmentation launches: two Triton kernels; the scaling, their two outputs, the pointer
    # jumps (log2 of the grid's tokens + 1) and on a GPU the roots' copy to the host and the labels' back
    # (the reference: ~40 at this size)
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from policy_cost import counting_mode
    features = torch.randn(2, 16, 16, 32, generator=g).to(device)
    mode = counting_mode()
    with mode.counting_triton(), mode:
        segment_batch(features, params, parents=quickshift_parents)
    assert mode.triton_launches == 2 and mode.launches <= 3 + 9 + 2, (mode.launches, mode.ops)


@triton.jit
def _count_to(out, n):      # at module level: Triton 3.1's interpreter looks for `tl` in a kernel's globals
    total = 0
    for _ in range(n):
        total += 1
    tl.store(out, total)


def interpreter_loops_over_runtime_bounds() -> bool:
    """Older Triton interpreters (3.3 and 3.6 with numpy 2) cannot run `range(n)` over a kernel argument n; the
    compiled kernels can (tests/test_kernels.py compiles them), so the check that needs it is skipped."""
    out = torch.zeros(1, dtype=torch.int32)
    try:
        _count_to[(1,)](out, 3)
    except Exception:
        return False
    return int(out) == 3


if __name__ == "__main__":
    device = "cuda" if torch.cuda.is_available() else "cpu"
    check_kv_write(device)
    if device == "cpu" or torch.cuda.get_device_capability() >= (8, 9):
        check_fp8_dequant(device)
    if INTERPRETED and not interpreter_loops_over_runtime_bounds():
        print("quickshift skipped: this Triton's interpreter cannot loop over a kernel argument")
    else:
        check_quickshift(device)
