"""Fidelity of region-adaptive sampling on the pack's trained demo model, against full sampling.

    .venv/bin/python bench/fidelity.py                                    # CPU: 2 seeds x 8 classes
    python3 bench/fidelity.py --device cuda --seeds 4 --classes 16        # GPU: N = 64
    .venv/bin/python bench/fidelity.py --schedules --with-easycache 0.2   # + equal dense steps, + EasyCache
    .venv/bin/python bench/fidelity.py --samplers euler dpmpp_2m heun uni_pc euler_ancestral dpmpp_sde lcm
    .venv/bin/python bench/fidelity.py --smoke                            # CI: seconds, no claims

For N = seeds x classes images: full sampling (the reference), RAS and SDiT at each ratio, uniform step
reduction at the same token-work budget, and ComfyUI's EasyCache at a few thresholds. Reported per
method: PSNR and SSIM of the decoded pixels against full sampling, the token-work fraction actually
done (REGION_TRACE for RAS/SDiT; transformer forwards / evaluations for EasyCache and fewer steps),
and wall time per image. --schedules adds each method at the other's dense steps (RAS at the steps each
SDiT run actually ran dense, SDiT at RAS's warm-up and resets), so the token selection is compared apart
from the schedule; --with-easycache runs RAS and SDiT on top of EasyCache (it skips whole steps, they skip
tokens). --samplers measures RAS and SDiT against full sampling for each sampler instead.
Results go to stdout (a Markdown table) and --json.
"""
import argparse
import json
import pathlib
import platform
import statistics
import sys
import time

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from pack_host import import_comfyui, load_pack  # noqa: E402

RATIOS = (0.5, 0.25, 0.125)
EASYCACHE_THRESHOLDS = (0.05, 0.2, 0.5, 1.5)         # token work about 0.7 / 0.45 / 0.4 / 0.35 on the demo model


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity
    return float(structural_similarity(a, b, channel_axis=2, data_range=1.0))


def counting_forwards(model):
    """A clone whose transformer forwards are counted (EasyCache and friends skip whole forwards)."""
    counted = model.clone()
    original = counted.get_model_object("diffusion_model.forward_orig")
    calls = [0]

    def forward_orig(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)
    counted.add_object_patch("diffusion_model.forward_orig", forward_orig)
    return counted, calls


def easycache(model, threshold: float):
    """ComfyUI's EasyCache node (start 0.15, end 0.95) on a clone of `model` whose transformer gets a copy of
    its input. Why the copy: on a skipped step EasyCache (ComfyUI 0.3.75) adds its cached difference into
    the transformer's input in place, and when the model runs in the input's dtype (fp32: the demo model on
    a CPU) that tensor is the very `x` from which `calculate_denoised` then subtracts, so every skipped
    step came out wrong (15-17 dB). With bf16/fp16 weights ComfyUI's cast makes that copy already."""
    import comfy.patcher_extension
    from comfy_extras.nodes_easycache import EasyCacheNode

    def input_copy(executor, x, *args, **kwargs):
        return executor(x.clone(), *args, **kwargs)
    copied = model.clone()
    copied.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "fidelity_input_copy", input_copy)
    return EasyCacheNode.execute(copied, threshold, 0.15, 0.95, False)[0]   # wrappers added first run outermost


def class_prompts(count: int):
    """`count` class prompts spread over colours x shapes (every third shape, so neighbours differ in both)."""
    from comfyui_sdit.nodes.demo.vocabulary import COLOURS, SHAPES
    return [f"a {COLOURS[i % len(COLOURS)]} {SHAPES[(i * 3) % len(SHAPES)]}" for i in range(count)]


class Runner:
    def __init__(self, demo, steps: int, cfg: float, size: int, sampler: str, scheduler: str):
        self.demo, self.steps, self.cfg = demo, steps, cfg
        self.sampler, self.scheduler = sampler, scheduler
        self.latent = torch.zeros(1, 16, size // 8, size // 8)

    def sample(self, model, prompt: str, seed: int, steps: int = None):
        import comfy.sample
        positive, negative = self.demo.conditioning(prompt), self.demo.conditioning("")
        noise = comfy.sample.prepare_noise(self.latent, seed)
        started = time.perf_counter()
        with torch.inference_mode():      # as ComfyUI runs nodes (some samplers leave autograd on otherwise)
            latent = comfy.sample.sample(model, noise, steps or self.steps, self.cfg, self.sampler, self.scheduler,
                                         positive, negative, self.latent, seed=seed, disable_pbar=True)
        seconds = time.perf_counter() - started
        image = self.demo.codec.decode(latent.float())[0].permute(1, 2, 0).numpy()
        return image, seconds


def sdit_dense_steps(trace) -> tuple:
    """The steps an SDiT run actually ran dense (warm-up, cool-down, drift resets)."""
    return tuple(sorted({s.step for s in trace.steps if s.dense}))


def arguments() -> argparse.ArgumentParser:
    """The command line (tests/test_gpu_runbook.py parses every runbook command with it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--classes", type=int, default=8, help="class prompts, spread over colours x shapes")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=0, help="image size in pixels (default: the model's own)")
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--scheduler", default="simple")
    parser.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    parser.add_argument("--weights", default="", help="demo model weights (default: the pack's)")
    parser.add_argument("--sdit-order", type=int, default=None, help="SDiT extrapolation order (default: the node's)")
    parser.add_argument("--schedules", action="store_true",
                        help="also each method at the other's dense steps (selection compared apart from schedule)")
    parser.add_argument("--with-easycache", type=float, default=None, metavar="THRESHOLD",
                        help="also RAS and SDiT on top of EasyCache at this threshold (orthogonal savings)")
    parser.add_argument("--samplers", nargs="*", default=[],
                        help="instead of the main table: RAS and SDiT against full sampling per sampler")
    parser.add_argument("--smoke", action="store_true", help="one image, few steps, one ratio (CI)")
    parser.add_argument("--json", default="")
    return parser


def main() -> None:
    args = arguments().parse_args()
    if args.smoke:
        args.seeds, args.classes, args.steps, args.size, args.ratios = 1, 1, 6, 128, args.ratios[:1]
        args.schedules, args.with_easycache = True, 0.2

    import_comfyui(cpu=args.device == "cpu")
    load_pack()
    from comfyui_sdit.nodes.demo.model import load_demo_model
    from comfyui_sdit.nodes.ras_nodes import patch_ras
    from comfyui_sdit.nodes.sdit_nodes import patch_sdit, sdit_trace
    from comfyui_sdit.sdit_core.ras import RASConfig
    from comfyui_sdit.sdit_core.sdit import SDiTConfig
    from comfyui_sdit.sdit_core.trace import trace_from_run

    demo = load_demo_model(pathlib.Path(args.weights) if args.weights else None)
    args.size = args.size or demo.image_size
    if not demo.trained:
        print("warning: no trained demo weights; fidelity numbers are meaningless", file=sys.stderr)
    jobs = [(prompt, 1000 + seed) for prompt in class_prompts(args.classes) for seed in range(args.seeds)]
    runners = {name: Runner(demo, args.steps, args.cfg, args.size, name, args.scheduler)
               for name in (args.samplers or [args.sampler])}
    for warm_up in (demo.patcher, patch_ras(demo.patcher, RASConfig(), "bench")[0],
                    patch_sdit(demo.patcher, SDiTConfig(), "bench")[0]):
        runners[next(iter(runners))].sample(warm_up, *jobs[0])   # first calls load the model, build kernels: untimed
    references = {(name, job): runner.sample(demo.patcher, *job) for name, runner in runners.items() for job in jobs}
    rows = {}

    def record(name, runner_name, job, image, seconds, work):
        reference = references[(runner_name, job)][0]
        rows.setdefault(name, []).append((work, seconds, psnr(image, reference), ssim(image, reference)))

    def ras(config, job, runner_name, wrap=None):
        patched, slot = patch_ras(demo.patcher, config, "bench")
        image, seconds = runners[runner_name].sample(wrap(patched) if wrap else patched, *job)
        return image, seconds, trace_from_run(slot.last_run, "RAS")

    def sdit(config, job, runner_name, wrap=None):
        patched, slot = patch_sdit(demo.patcher, config, "bench")
        image, seconds = runners[runner_name].sample(wrap(patched) if wrap else patched, *job)
        return image, seconds, sdit_trace(slot.last_run, config)

    def sdit_config(ratio, **overrides):
        config = SDiTConfig(sample_ratio=ratio, **overrides)
        if args.sdit_order is not None:
            config.order = args.sdit_order
        return config

    for runner_name in runners:
        if args.samplers:
            rows[f"full sampling ({runner_name})"] = [(1.0, references[(runner_name, job)][1], 99.0, 1.0)
                                                      for job in jobs]
        else:
            rows["full sampling"] = [(1.0, seconds, 99.0, 1.0) for (_, _), (_, seconds) in references.items()]
        suffix = f" ({runner_name})" if args.samplers else ""
        for ratio in args.ratios:
            ras_config, budget = RASConfig(sample_ratio=ratio), []
            for job in jobs:
                image, seconds, trace = ras(ras_config, job, runner_name)
                record(f"RAS {ratio}{suffix}", runner_name, job, image, seconds, trace.work_fraction)
                budget.append(trace.work_fraction)
                image, seconds, sdit_trace_ = sdit(sdit_config(ratio), job, runner_name)
                record(f"SDiT {ratio}{suffix}", runner_name, job, image, seconds, sdit_trace_.work_fraction)
                budget.append(sdit_trace_.work_fraction)
                if args.schedules:
                    # each at the other's dense steps: RAS at the steps this SDiT run ran dense, SDiT at
                    # RAS's warm-up and resets with its own error resets off
                    dense = sdit_dense_steps(sdit_trace_)
                    warmup = next(i for i in range(args.steps + 1) if i not in dense)
                    swapped = RASConfig(sample_ratio=ratio, warmup_steps=warmup,
                                        reset_steps=tuple(s for s in dense if s >= warmup))
                    image, seconds, trace = ras(swapped, job, runner_name)
                    record(f"RAS {ratio} at SDiT's dense steps", runner_name, job, image, seconds, trace.work_fraction)
                    swapped = sdit_config(ratio, warmup_steps=ras_config.warmup_steps, cooldown_steps=0,
                                          reset_steps=ras_config.reset_steps, drift_threshold=0.0)
                    image, seconds, trace = sdit(swapped, job, runner_name)
                    record(f"SDiT {ratio} at RAS's dense steps", runner_name, job, image, seconds, trace.work_fraction)
                if args.with_easycache is not None:
                    wrap = lambda m: easycache(m, args.with_easycache)  # noqa: E731
                    image, seconds, trace = ras(ras_config, job, runner_name, wrap)
                    record(f"RAS {ratio} + EasyCache {args.with_easycache}", runner_name, job, image, seconds,
                           trace.work_fraction)
                    image, seconds, trace = sdit(sdit_config(ratio), job, runner_name, wrap)
                    record(f"SDiT {ratio} + EasyCache {args.with_easycache}", runner_name, job, image, seconds,
                           trace.work_fraction)
            if args.samplers:
                continue
            fewer = max(1, round(args.steps * statistics.mean(budget)))
            for job in jobs:
                image, seconds = runners[runner_name].sample(demo.patcher, *job, steps=fewer)
                record(f"{fewer} steps (budget of {ratio})", runner_name, job, image, seconds, fewer / args.steps)
        if args.samplers:
            continue
        for threshold in EASYCACHE_THRESHOLDS[:1] if args.smoke else EASYCACHE_THRESHOLDS:
            cached = easycache(demo.patcher, threshold)
            for job in jobs:
                counted, calls = counting_forwards(cached)
                image, seconds = runners[runner_name].sample(counted, *job)
                record(f"EasyCache {threshold}", runner_name, job, image, seconds, calls[0] / args.steps)

    table = []
    full_seconds = statistics.mean(r[1] for name, values in rows.items() if name.startswith("full") for r in values)
    sampler_note = ", ".join(runners) if args.samplers else args.sampler
    print(f"\nN = {len(jobs)} images, {args.steps} steps, cfg {args.cfg}, {sampler_note}/{args.scheduler}, "
          f"{args.size}x{args.size}, device {args.device}\n")
    print("| method | token work | s / image | speedup | PSNR (dB) | SSIM |")
    print("|---|---|---|---|---|---|")
    for name, values in rows.items():
        work, seconds, p, s = (statistics.mean(v[i] for v in values) for i in range(4))
        full = name.startswith("full sampling")
        table.append({"method": name, "work_fraction": round(work, 4), "seconds": round(seconds, 4),
                      "speedup": round(full_seconds / seconds, 3), "psnr": round(p, 2), "ssim": round(s, 4)})
        print(f"| {name} | {work:.3f} | {seconds:.3f} | {full_seconds / seconds:.2f}x | "
              f"{'-' if full else f'{p:.2f}'} | {'-' if full else f'{s:.4f}'} |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({
            "images": len(jobs), "steps": args.steps, "cfg": args.cfg, "size": args.size, "device": args.device,
            "samplers": list(runners), "scheduler": args.scheduler,
            "machine": platform.machine(), "torch": torch.__version__, "trained": demo.trained, "rows": table},
            indent=1) + "\n")


if __name__ == "__main__":
    main()
