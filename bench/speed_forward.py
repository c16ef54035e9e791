"""One transformer forward, dense vs token-sparse, on ComfyUI's real Flux class with random weights.

    python bench/speed_forward.py --size flux-dev --res 1024 --batch 1 2        # GPU, bf16
    python bench/speed_forward.py --size flux-dev --res 1024 --batch 1 2 --cuda-graphs   # + graph replay
    python bench/speed_forward.py --size tiny --res 256 --iters 2               # CPU smoke (CI)
    python bench/speed_forward.py --text 256 --count-sweep 256 1024 64 --graphs-only  # ms per active count
    python bench/speed_forward.py --size flux-dev --res 1024 --batch 1 --torch-compile inductor   # compiled

For each batch size: the unpatched dense forward, the engine's dense forward (refreshes the K/V
cache), and sparse forwards at each ratio. With --torch-compile, every forward (the unpatched one too) runs
the diffusion model through torch.compile as ComfyUI's TorchCompileModel does: the model's code compiled,
the pack's hooks eager. The FLOP ideal of a sparse forward is
(T + N) / (T + n) for T text, N image and n active tokens: every linear layer scales with the rows
that run (T + n) and attention with (T + n) x (T + N) (see docs/BENCHMARKS.md).
"""
import argparse
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
import torch  # noqa: E402

from pack_host import import_comfyui, load_pack  # noqa: E402
from speed import MODELS, build  # noqa: E402

# --size names -> bench/speed.py's model table (one place for the real-size configs and their builder)
SIZES = {"flux-dev": "flux-dev", "tiny": "tiny-flux"}


class ConstantPlan:
    """Every evaluation computes the same active set (None: dense)."""

    def __init__(self, active):
        self.active = active

    def __call__(self, run):
        from comfyui_sdit.sdit_core.policy import TokenPolicy
        active = self.active

        class Policy(TokenPolicy):
            def plan(self, info):
                return active

            def planned_uses(self, info, count):     # every evaluation, as long as the benchmark runs
                return sys.maxsize
        return Policy()


def timed(fn, iters: int, warmup: int, device) -> float:
    """Median milliseconds of fn() over iters runs."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def active_token_error(sparse: torch.Tensor, dense: torch.Tensor, active: torch.Tensor, patch: int = 2) -> float:
    """||sparse - dense|| / ||dense|| over the active tokens' patches of two (B, C, H, W) outputs."""
    def tokens(out):
        b, c, h, w = out.shape
        out = out.view(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
        return out.reshape(b, (h // patch) * (w // patch), -1)
    index = active.to(dense.device)[..., None].expand(-1, -1, tokens(dense).shape[-1])
    s, d = torch.gather(tokens(sparse), 1, index), torch.gather(tokens(dense), 1, index)
    return float((s - d).norm() / d.norm())


def profile(fn, device, title: str) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return f"--- profile: {title} ---\n" + prof.key_averages().table(sort_by=key, row_limit=25)


def run(args) -> dict:
    device = torch.device(args.device)
    import_comfyui(cpu=device.type == "cpu")
    load_pack()
    from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
    from comfyui_sdit.sdit_core.engine import SparseRun
    from comfyui_sdit.kernels.fp8_dequant import dequantize_fp8
    from comfyui_sdit.kernels.kv_write import kv_write
    from comfyui_sdit.sdit_core.forward_graphs import CudaGraphBackend
    config = MODELS[SIZES[args.size]][1]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build(SIZES[args.size], device, dtype)
    dm = model.model.diffusion_model
    # the patches below are object patches on dm itself, so the compiled wrapper calls them
    net = torch.compile(dm, backend=args.torch_compile) if args.torch_compile else dm
    h = w = args.res // 8
    grid = (h // 2) * (w // 2)
    results = {"size": args.size, "res": args.res, "text_tokens": args.text, "image_tokens": grid,
               "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "dtype": str(dtype), "torch": torch.__version__, "kv_cache": args.kv_cache,
               "torch_compile": args.torch_compile, "rows": []}

    def add_row(row: dict) -> None:
        results["rows"].append(row)
        if args.json:       # partial results survive a time limit (compiling takes minutes per shape)
            pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    for batch in args.batch:
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(batch, 16, h, w, device=device, dtype=dtype, generator=g)
        context = torch.randn(batch, args.text, config["context_in_dim"], device=device, dtype=dtype, generator=g)
        y = torch.randn(batch, config["vec_in_dim"], device=device, dtype=dtype, generator=g)
        t = torch.full((batch,), 0.6, device=device)
        guidance = torch.full((batch,), 3.5, device=device)

        def plain():
            with torch.no_grad():
                net(x, t, context, y, guidance, transformer_options={})
        dense_ms = timed(plain, args.iters, args.warmup, device)
        add_row({"batch": batch, "mode": "dense (unpatched)", "ratio": 1.0, "ms": dense_ms, "ideal": 1.0,
                 "speedup": 1.0})
        ratios = args.ratios
        if args.count_sweep:             # active counts first..last by step, as ratios of the grid
            first, last, step = args.count_sweep
            ratios = [n / grid for n in range(first, min(last, grid) + 1, step)]
        for ratio in ratios:
            n = max(1, int(round(ratio * grid)))
            active = torch.stack([torch.randperm(grid, device=device, generator=g)[:n] for _ in range(batch)])
            if args.shared_index:
                active = active[:1].expand(batch, -1).contiguous()
            active = active.sort(dim=1).values
            ideal = (args.text + grid) / (args.text + n)
            for graphed in ([True] if args.graphs_only else [False, True] if args.cuda_graphs else [False]):
                backend = CudaGraphBackend() if graphed else None
                patched, slot = apply_token_sparse(model, ConstantPlan(active), node="bench")
                run_state = SparseRun(ConstantPlan(active)(None), x.shape, config["patch_size"], write_rows=kv_write,
                                      graph_backend=backend, kv_store=args.kv_cache, dequantize=dequantize_fp8)
                slot.run = run_state
                options = patched.model_options["transformer_options"]
                patched.patch_model(load_weights=False)
                try:
                    def forward(dense: bool):
                        call = run_state.open_forward(x.shape, 0.6, None, "bench")
                        call.dense = dense or call.dense
                        try:
                            with torch.no_grad():
                                return net(x, t, context, y, guidance, transformer_options=dict(options))
                        finally:
                            run_state.close_forward(call, True)
                    forward(True)                      # primes the caches
                    cache_gib = next(iter(run_state.streams.values())).kv.nbytes() / 2 ** 30
                    if ratio == ratios[0] and (not graphed or args.graphs_only):
                        engine_dense = timed(lambda: forward(True), args.iters, args.warmup, device)
                        add_row({"batch": batch, "mode": "dense (engine, refreshes K/V)", "ratio": 1.0,
                                 "ms": engine_dense, "ideal": 1.0, "speedup": dense_ms / engine_dense})
                    # warm-up: the first sparse forward runs eagerly, the second is captured (with graphs)
                    sparse_ms = timed(lambda: forward(False), args.iters, max(args.warmup, 2), device)
                    if args.profile and ratio == ratios[-1]:
                        print(profile(lambda: forward(False), device, f"batch {batch}, ratio {ratio}, graphs {graphed}"))
                    replays = next(iter(run_state.streams.values())).graphs.replays if graphed else 0
                    # agreement: a sparse forward right after a dense one on the same input equals it on
                    # the active tokens up to rounding (bf16 matmuls of other shapes; fp8 stale K/V)
                    dense_out = forward(True).float()
                    sparse_out = forward(False).float()
                    agreement = active_token_error(sparse_out, dense_out, active)
                finally:
                    patched.unpatch_model(unpatch_weights=False)
                    slot.run = None
                    run_state.release()
                add_row({"batch": batch, "mode": "sparse (CUDA graph)" if graphed else "sparse", "ratio": ratio,
                         "rows": args.text + n, "ms": sparse_ms, "ideal": ideal, "speedup": dense_ms / sparse_ms,
                         "of_ideal": dense_ms / sparse_ms / ideal, "graph_replays": replays,
                         "active_rel_error": agreement, "kv_cache_gib": cache_gib})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return results


def table(results: dict) -> str:
    lines = [f"K/V cache: {results['kv_cache'] or 'model dtype'}; torch.compile: {results['torch_compile'] or 'off'}",
             "| batch | mode | ratio | rows (T + n) | ms | speedup | FLOP ideal | achieved / ideal | K/V cache GiB | "
             "active-token rel. error vs dense |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        error = f"{r['active_rel_error']:.2e}" if "active_rel_error" in r else "-"
        cache = f"{r['kv_cache_gib']:.2f}" if "kv_cache_gib" in r else "-"
        lines.append(f"| {r['batch']} | {r['mode']} | {r['ratio']:.4g} | {r.get('rows', '-')} | {r['ms']:.1f} | {r['speedup']:.2f}x | "
                     f"{r['ideal']:.2f}x | {r.get('of_ideal', r['speedup']) * 100:.0f}% | {cache} | {error} |")
    return "\n".join(lines)


def arguments() -> argparse.ArgumentParser:
    """The command line (tests/test_gpu_runbook.py parses every runbook command with it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="flux-dev")
    parser.add_argument("--res", type=int, default=1024)
    parser.add_argument("--text", type=int, default=512)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.25, 0.125])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="also time sparse forwards replayed from CUDA graphs (GPU; on the CPU they run eagerly)")
    parser.add_argument("--graphs-only", action="store_true", help="time sparse forwards only as CUDA-graph replays")
    parser.add_argument("--count-sweep", type=int, nargs=3, metavar=("FIRST", "LAST", "STEP"),
                        help="active token counts to time instead of --ratios (GEMM tile and wave effects by count)")
    parser.add_argument("--kv-cache", default=None, choices=["model dtype", "fp8_e4m3"])
    parser.add_argument("--shared-index", action="store_true", help="same active set for every image")
    parser.add_argument("--torch-compile", metavar="BACKEND",
                        help="run every forward through torch.compile with this backend "
                             "(inductor, as TorchCompileModel)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write results here")
    parser.add_argument("--profile", action="store_true", help="print a profile of the lowest-ratio sparse forward")
    return parser


def main() -> None:
    args = arguments().parse_args()
    results = run(args)
    print(table(results))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
