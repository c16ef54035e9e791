"""Kernel-vs-reference checks; run in a subprocess with TRITON_INTERPRET=1 on the CPU (test_kernels.py),
or directly on a GPU: `python tests/kernel_checks.py`."""
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
import torch  # noqa: E402

from pack_host import REPO_ROOT  # noqa: E402,F401
import importlib.util  # noqa: E402


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


if __name__ == "__main__":
    device = "cuda" if torch.cuda.is_available() else "cpu"
    check_kv_write(device)
    if device == "cpu" or torch.cuda.get_device_capability() >= (8, 9):
        check_fp8_dequant(device)
