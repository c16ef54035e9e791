"""Quickshift backends on a 64x64 token grid (a 1024² Flux image): time per call, and agreement.

    python bench/segmentation.py                      # CPU (all three backends)
    python bench/segmentation.py --device cuda        # GPU timing of the torch backend
    python bench/segmentation.py --backends torch --batch 2   # + a batch of 2 in one pass vs one by one
    python bench/segmentation.py --device cuda --video 21 30 52   # a 480p x 81-frame Wan video's grid
    SDIT_KERNELS=torch python bench/segmentation.py --device cuda # the PyTorch reference of the window pass

The torch backend's window pass (density and parents) goes through kernels/quickshift.py as the SDiT node
runs it: Triton kernels on a GPU, the PyTorch reference on the CPU or with SDIT_KERNELS=torch (the row's
`window_pass` says which ran).

Features are what SDiT segments: the token descriptors [x_pred || eps] (32 channels, standardised)
of a synthetic latent with a smooth background, a few objects and white noise. Agreement is the adjusted Rand index (ARI) of each backend
against skimage's quickshift on the same parameters; the torch backend reproduces skimage's kernel,
window and tie-breaking noise, so it should agree almost exactly.
"""
import argparse
import json
import pathlib
import statistics
import sys
import time

import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from pack_host import import_comfyui, load_pack  # noqa: E402


def synthetic_features(seed: int, grid: int, channels: int = 16) -> torch.Tensor:
    """x_pred: smooth gradient + discs, some striped; eps: white noise; both at 2x2 latent pixels per
    token, turned into SDiT's token descriptors exactly as the sampler does. (grid, grid, 2C)."""
    from comfyui_sdit.sdit_core.token_features import token_features
    g = torch.Generator().manual_seed(seed)
    size = 2 * grid
    rows, cols = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    x_pred = (rows * torch.randn(channels, 1, 1, generator=g) + cols * torch.randn(channels, 1, 1, generator=g))
    for _ in range(4):
        cy, cx, radius = torch.rand(3, generator=g) * torch.tensor([1.0, 1.0, 0.25])
        inside = (rows - cy) ** 2 + (cols - cx) ** 2 <= (radius + 0.05) ** 2
        stripes = torch.sin(40 * (rows + cols)) * (torch.rand(1, generator=g) > 0.5)
        x_pred = torch.where(inside, torch.randn(channels, 1, 1, generator=g) + 0.5 * stripes, x_pred)
    eps = torch.randn(channels, size, size, generator=g)
    return token_features(x_pred[None], eps[None], patch_size=2)[0]


def time_call(fn, device: str, repeats: int) -> float:
    fn()                                          # warm-up (kernels, caches)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def arguments() -> argparse.ArgumentParser:
    """The command line (tests/test_gpu_runbook.py parses every runbook command with it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--grid", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--backends", nargs="+", default=None, help="default: every backend")
    parser.add_argument("--batch", type=int, default=1,
                        help="torch backend: also time segment_batch on this many images against a loop")
    parser.add_argument("--video", type=int, nargs=3, metavar=("FRAMES", "ROWS", "COLS"), default=None,
                        help="time the torch backend on one video's token grid instead (3-D Quickshift)")
    parser.add_argument("--json", default="")
    return parser


def main() -> None:
    args = arguments().parse_args()
    import_comfyui(cpu=args.device == "cpu")
    load_pack()
    if args.video:
        return time_video(args)
    from comfyui_sdit.kernels.quickshift import quickshift_parents as window
    from comfyui_sdit.sdit_core import segmentation as seg
    from comfyui_sdit.sdit_core.segmentation.agreement import adjusted_rand_index as ari
    from comfyui_sdit.sdit_core.sdit import SDiTConfig
    params = SDiTConfig().quickshift()             # the SDiT node's defaults
    rows = []
    for backend in args.backends or seg.BACKENDS:
        device = args.device if backend == "torch" else "cpu"
        scores, counts, millis = [], [], []
        for seed in range(args.seeds):
            features = synthetic_features(seed, args.grid)
            reference = seg.segment(features, params, "skimage")
            on_device = features.to(device)
            labels = seg.segment(on_device, params, backend, parents=window)
            scores.append(ari(labels.cpu(), reference))
            counts.append(int(labels.max()) + 1)
            if seed < 2:
                millis.append(time_call(lambda: seg.segment(on_device, params, backend, parents=window), device,
                                        args.repeats if backend == "torch" else 3))
        rows.append({"backend": backend, "device": device, "window_pass": window_pass(backend, device),
                     "ms": round(statistics.median(millis), 3), "regions": round(statistics.mean(counts), 1), "ari_vs_skimage_min": round(min(scores), 4),
                     "ari_vs_skimage_mean": round(statistics.mean(scores), 4)})
        print(f"{backend:8s} {device:5s} {rows[-1]['window_pass']:15s} {rows[-1]['ms']:9.3f} ms  "
              f"regions {rows[-1]['regions']:6.1f}  ARI vs skimage: mean {rows[-1]['ari_vs_skimage_mean']:.4f} min {rows[-1]['ari_vs_skimage_min']:.4f}")
        if backend == "torch" and args.batch > 1:      # what one SDiT step of a batch costs, both ways
            batch = torch.stack([synthetic_features(seed, args.grid) for seed in range(args.batch)]).to(device)
            assert torch.equal(seg.segment_batch(batch, params, backend, parents=window),
                               torch.stack([seg.segment(item, params, backend, parents=window) for item in batch]))
            rows[-1]["batch"] = args.batch
            rows[-1]["batch_one_pass_ms"] = round(time_call(
                lambda: seg.segment_batch(batch, params, backend, parents=window), device, args.repeats), 3)
            rows[-1]["batch_one_by_one_ms"] = round(time_call(
                lambda: [seg.segment(item, params, backend, parents=window) for item in batch], device,
                args.repeats), 3)
            print(f"         batch of {args.batch}: one pass {rows[-1]['batch_one_pass_ms']:.3f} ms, "
                  f"one by one {rows[-1]['batch_one_by_one_ms']:.3f} ms")
    result = {"grid": args.grid, "seeds": args.seeds, "params": vars(params), "rows": rows,
              "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


def video_features(frames: int, rows: int, cols: int) -> torch.Tensor:
    """(T, rows, cols, 32): one synthetic frame's descriptors drifting a little from frame to frame."""
    frame = synthetic_features(0, max(rows, cols))[:rows, :cols]
    g = torch.Generator().manual_seed(1)
    drift = 0.02 * torch.randn(frames, rows, cols, frame.shape[-1], generator=g).cumsum(0)
    return frame[None] + drift


def window_pass(backend: str, device: str) -> str:
    """Which window pass the torch backend ran: kernels/quickshift.py's choice."""
    from comfyui_sdit.kernels import triton_enabled
    if backend != "torch":
        return "-"
    return "triton" if triton_enabled(torch.empty(0, device=device)) else "torch reference"


def time_video(args) -> None:
    from comfyui_sdit.kernels.quickshift import quickshift_parents as window
    from comfyui_sdit.sdit_core import segmentation as seg
    from comfyui_sdit.sdit_core.sdit import SDiTConfig
    config = SDiTConfig()
    features = video_features(*args.video).to(args.device)
    labels = seg.segment(features, config.quickshift(), "torch", config.frame_scale, window)
    ms = time_call(lambda: seg.segment(features, config.quickshift(), "torch", config.frame_scale, window), args.device,
                   min(args.repeats, 5))
    row = {"backend": "torch", "device": args.device, "window_pass": window_pass("torch", args.device),
           "grid": list(args.video), "ms": round(ms, 1),
           "regions": int(labels.max()) + 1, "frame_scale": config.frame_scale}
    if row["window_pass"] == "triton":          # the kernels against the PyTorch reference: labels and time
        from comfyui_sdit.sdit_core.segmentation.agreement import adjusted_rand_index
        reference = seg.segment(features, config.quickshift(), "torch", config.frame_scale)
        row["ari_vs_reference"] = round(adjusted_rand_index(labels.cpu(), reference.cpu()), 4)
        row["reference_ms"] = round(time_call(lambda: seg.segment(features, config.quickshift(), "torch",
                                                                  config.frame_scale), args.device, 2), 1)
    print(json.dumps(row))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"rows": [row], "params": vars(config.quickshift()),
                                                       "torch": torch.__version__,
                                                       "gpu": torch.cuda.get_device_name() if args.device == "cuda"
                                                       else None}, indent=1) + "\n")


if __name__ == "__main__":
    main()
