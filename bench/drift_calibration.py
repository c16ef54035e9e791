"""Calibrates SDiT's error-reset threshold (`drift_threshold`) on the pack's trained demo model.

    .venv/bin/python bench/drift_calibration.py --json docs/bench/drift_<date>.json
    .venv/bin/python bench/drift_calibration.py --smoke                   # CI: seconds, no claims

The drift of a sparse step is the extrapolator's relative error on the tokens that step computed
(sdit_core/extrapolation.py); above the threshold the next step runs dense. For each ratio and threshold
(0 = resets off) it reports the spread of the drift values seen, how many resets fired, the token work
done, and PSNR / SSIM of the decoded pixels against full sampling, on the same images as bench/fidelity.py.
"""
import argparse
import json
import pathlib
import statistics
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "bench"))
from pack_host import import_comfyui, load_pack  # noqa: E402

THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.25, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=3.0)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.25, 0.125])
    parser.add_argument("--smoke", action="store_true", help="one image, few steps, two thresholds (CI)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    size, thresholds = 0, THRESHOLDS                 # size 0: the model's own
    if args.smoke:
        args.seeds, args.classes, args.steps, args.ratios, size, thresholds = 1, 1, 6, [0.5], 128, THRESHOLDS[:2]

    import_comfyui(cpu=True)
    load_pack()
    from fidelity import Runner, class_prompts, psnr, ssim
    from comfyui_sdit.nodes.demo.model import load_demo_model
    from comfyui_sdit.nodes.sdit_nodes import patch_sdit, sdit_trace
    from comfyui_sdit.sdit_core.sdit import SDiTConfig

    demo = load_demo_model()
    size = size or demo.image_size
    runner = Runner(demo, args.steps, args.cfg, size, "euler", "simple")
    jobs = [(prompt, 1000 + seed) for prompt in class_prompts(args.classes) for seed in range(args.seeds)]
    references = {job: runner.sample(demo.patcher, *job)[0] for job in jobs}

    rows = []
    print("| ratio | threshold | drift p50 / p90 / max | resets per image | token work | PSNR (dB) | SSIM |")
    print("|---|---|---|---|---|---|---|")
    for ratio in args.ratios:
        for threshold in thresholds:
            config = SDiTConfig(sample_ratio=ratio, drift_threshold=threshold)
            drifts, resets, work, psnrs, ssims = [], [], [], [], []
            for job in jobs:
                patched, slot = patch_sdit(demo.patcher, config, "bench")
                image = runner.sample(patched, *job)[0]
                trace = sdit_trace(slot.last_run, config)
                drifts += [s.drift for s in trace.steps if s.drift is not None]
                resets.append(sum(s.reason == "drift reset" for s in trace.steps))
                work.append(trace.work_fraction)
                psnrs.append(psnr(image, references[job]))
                ssims.append(ssim(image, references[job]))
            p50, p90, top = np.percentile(drifts, [50, 90, 100]) if drifts else (float("nan"),) * 3
            row = {"ratio": ratio, "threshold": threshold, "drift_p50": round(float(p50), 3),
                   "drift_p90": round(float(p90), 3), "drift_max": round(float(top), 3),
                   "resets_per_image": statistics.mean(resets), "work_fraction": round(statistics.mean(work), 4),
                   "psnr": round(statistics.mean(psnrs), 2), "ssim": round(statistics.mean(ssims), 4)}
            rows.append(row)
            print(f"| {ratio} | {threshold} | {p50:.2f} / {p90:.2f} / {top:.2f} | {row['resets_per_image']:.2f} | "
                  f"{row['work_fraction']:.3f} | {row['psnr']:.2f} | {row['ssim']:.4f} |", flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"images": len(jobs), "steps": args.steps, "cfg": args.cfg,
                                                       "size": size, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
