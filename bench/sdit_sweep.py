"""Sweeps SDiT's settings on the pack's trained demo model: fidelity against full sampling and token work.

    .venv/bin/python bench/sdit_sweep.py --vary order=0,1 horizon=0,10,20,40 --ratios 0.25 0.125
    .venv/bin/python bench/sdit_sweep.py --vary drift_threshold=0,0.05,0.1,0.2       # error-reset calibration
    .venv/bin/python bench/sdit_sweep.py --base warmup_steps=4 reset_steps=0.4:0.67 cooldown_steps=0 --ras
    .venv/bin/python bench/sdit_sweep.py --smoke                                       # CI: seconds, no claims

Every combination of the --vary values (SDiTConfig fields; a value with ':' is a tuple) runs on top of
--base at each ratio, on the same images as bench/fidelity.py. Per row: token work, PSNR / SSIM of the
decoded pixels against full sampling, dense evaluations and drift resets per image, the drift seen, and
the longest run of evaluations any token stayed skipped. --ras adds RAS rows at each ratio with the same
warm-up and resets as --base (where given), so selection can be compared at equal dense steps.
"""
import argparse
import itertools
import json
import pathlib
import statistics
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "bench"))
from pack_host import import_comfyui, load_pack  # noqa: E402


def parse_value(text: str):
    if ":" in text:
        return tuple(parse_value(part) for part in text.split(":") if part)
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_assignments(items, many: bool):
    """['order=0,1', 'horizon=20'] -> {'order': [0, 1], 'horizon': [20]} (or single values)."""
    result = {}
    for item in items:
        name, _, values = item.partition("=")
        parsed = [parse_value(v) for v in values.split(",")] if many else parse_value(values)
        result[name] = parsed
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=3.0)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.25, 0.125])
    parser.add_argument("--vary", nargs="*", default=[], help="field=v1,v2,... (every combination runs)")
    parser.add_argument("--base", nargs="*", default=[], help="field=value applied to every SDiT run")
    parser.add_argument("--ras", action="store_true", help="also RAS at each ratio (same warm-up/resets as --base)")
    parser.add_argument("--smoke", action="store_true", help="one image, few steps (CI)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    size = 0                                          # the model's own
    if args.smoke:
        args.seeds, args.classes, args.steps, args.ratios, size = 1, 1, 6, [0.5], 128
        args.vary, args.ras = args.vary or ["drift_threshold=0,0.1"], True

    import_comfyui(cpu=True)
    load_pack()
    from fidelity import Runner, class_prompts, psnr, ssim
    from comfyui_sdit.nodes.demo.model import load_demo_model
    from comfyui_sdit.nodes.ras_nodes import patch_ras
    from comfyui_sdit.nodes.sdit_nodes import patch_sdit, sdit_trace
    from comfyui_sdit.sdit_core.ras import RASConfig
    from comfyui_sdit.sdit_core.sdit import SDiTConfig
    from comfyui_sdit.sdit_core.trace import longest_skip, trace_from_run

    demo = load_demo_model()
    size = size or demo.image_size
    runner = Runner(demo, args.steps, args.cfg, size, "euler", "simple")
    jobs = [(prompt, 1000 + seed) for prompt in class_prompts(args.classes) for seed in range(args.seeds)]
    references = {job: runner.sample(demo.patcher, *job)[0] for job in jobs}
    base = parse_assignments(args.base, many=False)
    vary = parse_assignments(args.vary, many=True)
    grid = [dict(zip(vary, values)) for values in itertools.product(*vary.values())] or [{}]

    def measure(patch, trace_of):
        stats = {"work": [], "psnr": [], "ssim": [], "dense": [], "resets": [], "longest_skip": [], "drift": []}
        for job in jobs:
            patched, slot = patch()
            image = runner.sample(patched, *job)[0]
            trace = trace_of(slot.last_run)
            stats["work"].append(trace.work_fraction)
            stats["psnr"].append(psnr(image, references[job]))
            stats["ssim"].append(ssim(image, references[job]))
            stats["dense"].append(trace.dense_steps)
            stats["resets"].append(sum(s.reason == "drift reset" for s in trace.steps))
            stats["longest_skip"].append(longest_skip(trace))
            stats["drift"] += [s.drift for s in trace.steps if s.drift is not None]
        p50, p90 = np.percentile(stats["drift"], [50, 90]) if stats["drift"] else (float("nan"),) * 2
        return {"work_fraction": round(statistics.mean(stats["work"]), 4),
                "psnr": round(statistics.mean(stats["psnr"]), 2), "ssim": round(statistics.mean(stats["ssim"]), 4),
                "dense_per_image": statistics.mean(stats["dense"]), "resets_per_image": statistics.mean(stats["resets"]),
                "longest_skip": max(stats["longest_skip"]), "drift_p50": round(float(p50), 3),
                "drift_p90": round(float(p90), 3)}

    rows = []
    print(f"N = {len(jobs)} images, {args.steps} steps, base {base or '-'}\n")
    print("| method | ratio | settings | token work | PSNR (dB) | SSIM | dense / resets per image | longest skip | "
          "drift p50 / p90 |")
    print("|---|---|---|---|---|---|---|---|---|")

    def report(row):
        rows.append(row)
        print(f"| {row['method']} | {row['ratio']} | {row['settings'] or '-'} | {row['work_fraction']:.3f} | "
              f"{row['psnr']:.2f} | {row['ssim']:.4f} | {row['dense_per_image']:.1f} / {row['resets_per_image']:.2f} | "
              f"{row['longest_skip']} | {row['drift_p50']:.2f} / {row['drift_p90']:.2f} |", flush=True)

    for ratio in args.ratios:
        if args.ras:
            ras = RASConfig(sample_ratio=ratio)
            ras.warmup_steps = base.get("warmup_steps", ras.warmup_steps)
            resets = base.get("reset_steps", ras.reset_steps)
            ras.reset_steps = tuple(resets) if isinstance(resets, tuple) else (resets,)
            if base.get("cooldown_steps"):          # RAS has no cool-down: the same steps as resets
                ras.reset_steps += tuple(range(args.steps - base["cooldown_steps"], args.steps))
            settings = f"warm-up {ras.warmup_steps}, resets {ras.reset_steps}"
            report(dict(measure(lambda: patch_ras(demo.patcher, ras, "bench"), lambda run: trace_from_run(run, "RAS")),
                        method="RAS", ratio=ratio, settings=settings))
        for overrides in grid:
            config = SDiTConfig(sample_ratio=ratio, **base, **overrides)
            report(dict(measure(lambda: patch_sdit(demo.patcher, config, "bench"),
                                lambda run, c=config: sdit_trace(run, c)),
                        method="SDiT", ratio=ratio, settings=", ".join(f"{k} {v}" for k, v in overrides.items())))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"images": len(jobs), "steps": args.steps, "cfg": args.cfg,
                                                       "size": size, "base": {k: str(v) for k, v in base.items()},
                                                       "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
