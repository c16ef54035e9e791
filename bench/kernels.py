"""Each Triton kernel of the pack against its PyTorch reference, alone, at the sizes a sampler step gives it.

    python bench/kernels.py --device cuda --json kernels.json     # GPU time of both, and bandwidth
    python bench/kernels.py --smoke                               # CPU: the references at tiny sizes

- K/V writes (kernels/kv_write.py): one Flux-dev attention layer at 1024² (24 heads x 128 channels, 512
  text + 4,096 image rows, bf16), the rows of a sparse step at each ratio written into the layer's K and V
  caches. The keys come contiguous (after RoPE), the values as the view of the fused qkv projection Flux
  hands over. Rows shared by the batch (cfg's cond and uncond of one image: the reference's two
  `index_copy_`) and per image (advanced indexing): the Triton writer serves only the second today; this
  says whether it should serve the first on a GPU too.
- fp8 dequantization (kernels/fp8_dequant.py): that layer's K cache, e4m3 -> bf16.
- Quickshift's window pass (kernels/quickshift.py): density and parents for a batch of two 64x64 and
  128x128 token grids (1024² and 2048² Flux) with 32 features, the SDiT node's window.

Time: the median of `--iters` runs between CUDA events (GPU time; on the CPU wall time), after a
warm-up (Triton compiles). Bandwidth: the bytes each must read and write once, over that time.
"""
import argparse
import json
import pathlib
import sys

import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from pack_host import import_comfyui, load_pack  # noqa: E402
from speed_forward import timed  # noqa: E402

HEADS, HEAD_DIM, TEXT, IMAGE = 24, 128, 512, 4096          # one Flux-dev layer at 1024²


def kv_write_rows(device, batch: int, ratio: float, heads: int, image: int, text: int, iters: int, triton: bool):
    """Rows of one sparse step's K/V writes, reference and (on a GPU) Triton, shared rows and per image."""
    from comfyui_sdit.sdit_core.kv_cache import write_rows_reference
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    active = max(1, int(ratio * image))
    total, fresh = text + image, text + active
    g = torch.Generator().manual_seed(0)
    cache_k = torch.zeros(batch, heads, total, HEAD_DIM, dtype=dtype, device=device)
    cache_v = torch.zeros_like(cache_k)
    k = torch.randn(batch, heads, fresh, HEAD_DIM, generator=g).to(device, dtype)
    qkv = torch.randn(batch, fresh, 3, heads, HEAD_DIM, generator=g).to(device, dtype)
    v = qkv.permute(2, 0, 3, 1, 4)[2]                       # Flux's values: a view of the fused projection
    moved = 2 * 2 * batch * heads * fresh * HEAD_DIM * k.element_size()     # K and V, read once, written once
    rows = []
    for shared in (True, False):
        picks = [torch.randperm(image, generator=g)[:active].sort().values for _ in range(1 if shared else batch)]
        index = torch.stack([torch.cat([torch.arange(text), text + p]) for p in picks * (batch if shared else 1)])
        index = index.to(device)
        writers = {"reference": lambda: write_rows_reference(cache_k, cache_v, k, v, index, 2, shared)}
        if triton:
            from comfyui_sdit.kernels.kv_write_triton import kv_write_triton
            writers["triton"] = lambda: kv_write_triton(cache_k, cache_v, k, v, index, 2)
        for name, write in writers.items():
            ms = timed(write, iters, 2, device)
            rows.append({"kernel": "kv_write", "impl": name, "batch": batch, "ratio": ratio, "shared_rows": shared,
                         "rows_written": fresh, "ms": round(ms, 4), "gb_per_s": round(moved / ms / 1e6, 1)})
    return rows


def fp8_rows(device, batch: int, heads: int, tokens: int, iters: int, triton: bool):
    from comfyui_sdit.sdit_core.kv_cache import dequantize_reference
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = (batch, heads, tokens, HEAD_DIM)
    bits = torch.randint(0, 120, shape, dtype=torch.uint8, device=device)
    scale = torch.rand(batch, heads, 1, HEAD_DIM, device=device).to(dtype)
    moved = bits.numel() * (1 + torch.finfo(dtype).bits // 8)
    impls = {"reference": lambda: dequantize_reference(bits, scale, 2)}
    if triton:
        from comfyui_sdit.kernels.fp8_dequant_triton import fp8_dequant_triton
        out = torch.empty(shape, dtype=dtype, device=device)
        impls["triton"] = lambda: fp8_dequant_triton(bits, scale, out, 2)
    return [{"kernel": "fp8_dequant", "impl": name, "batch": batch, "tokens": tokens,
             "ms": round(ms, 4), "gb_per_s": round(moved / ms / 1e6, 1)}
            for name, ms in ((name, timed(fn, iters, 2, device)) for name, fn in impls.items())]


def quickshift_rows(device, grid: int, iters: int, triton: bool):
    """The window pass alone (the contiguity pass on the host is the same for both)."""
    from comfyui_sdit.kernels.quickshift import quickshift_parents
    from comfyui_sdit.sdit_core.sdit import SDiTConfig
    from comfyui_sdit.sdit_core.segmentation.quickshift_torch import grid_parents
    params = SDiTConfig().quickshift()
    g = torch.Generator().manual_seed(0)
    features = (torch.randn(2, 1, grid, grid, 32, generator=g).cumsum(2).cumsum(3) * 0.05).to(device)
    impls = {"reference": lambda: grid_parents(features, params)}
    if triton:      # the dispatcher as the node calls it: the features' scaling, then the two kernels
        impls["triton"] = lambda: quickshift_parents(features, params)
    rows = [{"kernel": "quickshift_window", "impl": name, "batch": 2, "grid": grid,
             "ms": round(timed(fn, iters, 2, device), 4)} for name, fn in impls.items()]
    if triton:       # the same parents but where densities sit a float32 rounding step apart
        agree = (impls["triton"]() == impls["reference"]()).float().mean().item()
        rows[-1]["parents_equal_to_reference"] = round(agree, 5)
    return rows


def arguments() -> argparse.ArgumentParser:
    """The command line (tests/test_gpu_runbook.py parses every runbook command with it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, the references (CPU)")
    parser.add_argument("--json", default="")
    return parser


def main() -> None:
    args = arguments().parse_args()
    device = torch.device(args.device)
    import_comfyui(cpu=device.type == "cpu")
    load_pack()
    from comfyui_sdit.kernels import triton_enabled
    triton = triton_enabled(torch.empty(0, device=device))
    heads, image, text, grids = (2, 64, 8, (8,)) if args.smoke else (HEADS, IMAGE, TEXT, (64, 128))
    iters = 2 if args.smoke else args.iters
    rows = []
    for batch in (1, 2):
        for ratio in (0.5, 0.25, 0.125):
            rows += kv_write_rows(device, batch, ratio, heads, image, text, iters, triton)
        rows += fp8_rows(device, batch, heads, text + image, iters, triton)
    for grid in grids:
        rows += quickshift_rows(device, grid, iters, triton)
    for row in rows:
        print(json.dumps(row))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(
            {"rows": rows, "torch": torch.__version__, "triton": triton,
             "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}, indent=1) + "\n")


if __name__ == "__main__":
    main()
