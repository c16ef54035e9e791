"""How whole and how recognisable the demo model's objects are: full sampling of "a red <shape>" for every
shape, then the share of object pixels in the largest 8-connected piece (1.0: one solid object; low:
scattered bits) and, for the six outline shapes, how often a classifier fitted on the training images names
the prompted shape (chance: 1/6). Measurements: bench/shape_metrics.py.

    .venv/bin/python bench/demo_quality.py --json docs/bench/demo_quality_<date>.json
    .venv/bin/python bench/demo_quality.py --weights /tmp/train/candidate.safetensors   # compare weights
"""
import argparse
import importlib
import json
import pathlib
import statistics
import sys


REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "bench"))
from pack_host import import_comfyui, load_pack  # noqa: E402


def measure_shape(shape: str, seeds: int, steps: int, cfg: float, classifier, seed: int = 5) -> dict:
    """Full sampling of "a red <shape>" on `seeds` noises: each image's largest-piece share and, for outline
    shapes, the outline the classifier names."""
    from comfyui_sdit.nodes.demo.model import load_demo_model
    from comfyui_sdit.nodes.demo_nodes import SDiTDemoDecode, SDiTDemoModelLoader
    import shape_metrics
    comfy_nodes = importlib.import_module("nodes")
    model, positive, negative = SDiTDemoModelLoader().load(f"a red {shape}")
    latent = {"samples": load_demo_model().empty_latent(seeds)}
    sampled = comfy_nodes.KSampler().sample(model, seed, steps, cfg, "euler", "simple", positive, negative, latent)[0]
    images = SDiTDemoDecode().decode(sampled)[0]
    shares = [shape_metrics.largest_piece_share(image) for image in images]
    named = [classifier.classify(image) for image in images] if shape in shape_metrics.OUTLINE_SHAPES else []
    return {"shape": shape, "largest_piece_share": shares, "mean": statistics.mean(shares), "named": named,
            "recognised": sum(n == shape for n in named) / len(named) if named else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="", help="demo model weights (default: the pack's)")
    parser.add_argument("--seeds", type=int, default=6, help="images per shape")
    parser.add_argument("--shapes", type=int, default=8, help="how many of the vocabulary's shapes")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=3.0)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    import_comfyui(cpu=True)
    load_pack()
    import comfy.utils
    import comfyui_sdit.nodes.demo.model as demo_model
    from comfyui_sdit.nodes.demo.vocabulary import SHAPES
    import shape_metrics
    comfy.utils.PROGRESS_BAR_ENABLED = False
    if args.weights:
        demo_model.WEIGHTS = pathlib.Path(args.weights)
    classifier = shape_metrics.OutlineClassifier.fit()
    rows = []
    for shape in SHAPES[:args.shapes]:
        rows.append(measure_shape(shape, args.seeds, args.steps, args.cfg, classifier))
        named, shares = rows[-1]["named"], rows[-1]["largest_piece_share"]
        recognised = "" if not named else f"{rows[-1]['recognised']:.2f}"
        print(f"| {shape} | {rows[-1]['mean']:.2f} | {recognised} | {' '.join(f'{s:.2f}' for s in shares)} | "
              f"{' '.join(str(n) for n in named)} |", flush=True)
    overall = statistics.mean(r["mean"] for r in rows)
    outlines = [r["recognised"] for r in rows if r["recognised"] is not None]
    recognised = statistics.mean(outlines) if outlines else None
    print(f"mean largest-piece share over shapes: {overall:.3f}; outline shapes recognised: {recognised}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"weights": args.weights or "pack", "seeds": args.seeds,
                                                       "steps": args.steps, "cfg": args.cfg, "mean": overall,
                                                       "recognised": recognised, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
