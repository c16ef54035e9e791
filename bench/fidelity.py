"""Fidelity of region-adaptive sampling on the pack's trained demo model, against full sampling.

    .venv/bin/python bench/fidelity.py                                    # CPU: 2 seeds x 8 classes
    python3 bench/fidelity.py --device cuda --seeds 4 --classes 16        # GPU: N = 64
    .venv/bin/python bench/fidelity.py --smoke                            # CI: seconds, no claims

For N = seeds x classes images: full sampling (the reference), RAS and SDiT at each ratio, uniform step
reduction at the same token-work budget, and ComfyUI's EasyCache at a few thresholds. Reported per
method: PSNR and SSIM of the decoded pixels against full sampling, the token-work fraction actually
done (REGION_TRACE for RAS/SDiT; transformer forwards / evaluations for EasyCache and fewer steps),
and wall time per image. Results go to stdout (a Markdown table) and --json.
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
        latent = comfy.sample.sample(model, noise, steps or self.steps, self.cfg, self.sampler, self.scheduler,
                                     positive, negative, self.latent, seed=seed, disable_pbar=True)
        seconds = time.perf_counter() - started
        image = self.demo.codec.decode(latent.float())[0].permute(1, 2, 0).numpy()
        return image, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--classes", type=int, default=8, help="class prompts, spread over colours x shapes")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=0, help="image size in pixels (default: the model's own)")
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--scheduler", default="simple")
    parser.add_argument("--weights", default="", help="demo model weights (default: the pack's)")
    parser.add_argument("--sdit-order", type=int, default=None, help="SDiT extrapolation order (default: the node's)")
    parser.add_argument("--smoke", action="store_true", help="one image, few steps, one ratio (CI)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.classes, args.steps, args.size = 1, 1, 6, 128

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
    runner = Runner(demo, args.steps, args.cfg, args.size, args.sampler, args.scheduler)
    jobs = [(prompt, 1000 + seed) for prompt in class_prompts(args.classes) for seed in range(args.seeds)]
    ratios = RATIOS[:1] if args.smoke else RATIOS

    for warm_up in (demo.patcher, patch_ras(demo.patcher, RASConfig(), "bench")[0],
                    patch_sdit(demo.patcher, SDiTConfig(), "bench")[0]):
        runner.sample(warm_up, *jobs[0])               # first calls load the model and build kernels: untimed
    references = {job: runner.sample(demo.patcher, *job) for job in jobs}
    rows = {"full sampling": [(1.0, seconds, 99.0, 1.0) for _, seconds in references.values()]}

    def record(name, job, image, seconds, work):
        reference = references[job][0]
        rows.setdefault(name, []).append((work, seconds, psnr(image, reference), ssim(image, reference)))

    budgets = {}
    for ratio in ratios:
        ras_config = RASConfig(sample_ratio=ratio)
        sdit_config = SDiTConfig(sample_ratio=ratio)
        if args.sdit_order is not None:
            sdit_config.order = args.sdit_order
        for job in jobs:
            patched, slot = patch_ras(demo.patcher, ras_config, "bench")
            image, seconds = runner.sample(patched, *job)
            record(f"RAS {ratio}", job, image, seconds, trace_from_run(slot.last_run, "RAS").work_fraction)
            patched, slot = patch_sdit(demo.patcher, sdit_config, "bench")
            image, seconds = runner.sample(patched, *job)
            record(f"SDiT {ratio}", job, image, seconds, sdit_trace(slot.last_run, sdit_config).work_fraction)
        budgets[ratio] = statistics.mean(r[0] for name in (f"RAS {ratio}", f"SDiT {ratio}") for r in rows[name])
        fewer = max(1, round(args.steps * budgets[ratio]))
        for job in jobs:
            image, seconds = runner.sample(demo.patcher, *job, steps=fewer)
            record(f"{fewer} steps (budget of {ratio})", job, image, seconds, fewer / args.steps)
    for threshold in EASYCACHE_THRESHOLDS[:1] if args.smoke else EASYCACHE_THRESHOLDS:
        cached = easycache(demo.patcher, threshold)
        for job in jobs:
            counted, calls = counting_forwards(cached)
            image, seconds = runner.sample(counted, *job)
            record(f"EasyCache {threshold}", job, image, seconds, calls[0] / args.steps)

    table = []
    full_seconds = statistics.mean(r[1] for r in rows["full sampling"])
    print(f"\nN = {len(jobs)} images, {args.steps} steps, cfg {args.cfg}, {args.sampler}/{args.scheduler}, "
          f"{args.size}x{args.size}, device {args.device}\n")
    print("| method | token work | s / image | speedup | PSNR (dB) | SSIM |")
    print("|---|---|---|---|---|---|")
    for name, values in rows.items():
        work, seconds, p, s = (statistics.mean(v[i] for v in values) for i in range(4))
        table.append({"method": name, "work_fraction": round(work, 4), "seconds": round(seconds, 4),
                      "speedup": round(full_seconds / seconds, 3), "psnr": round(p, 2), "ssim": round(s, 4)})
        print(f"| {name} | {work:.3f} | {seconds:.3f} | {full_seconds / seconds:.2f}x | "
              f"{'-' if name == 'full sampling' else f'{p:.2f}'} | {'-' if name == 'full sampling' else f'{s:.4f}'} |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({
            "images": len(jobs), "steps": args.steps, "cfg": args.cfg, "size": args.size, "device": args.device,
            "machine": platform.machine(), "torch": torch.__version__, "trained": demo.trained, "rows": table},
            indent=1) + "\n")


if __name__ == "__main__":
    main()
