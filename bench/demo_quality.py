"""How whole the demo model's objects are: full sampling of "a red <shape>" for every shape, then the
share of object pixels in the largest 8-connected piece (1.0: one solid object; low: scattered bits).

    .venv/bin/python bench/demo_quality.py --json docs/bench/demo_quality_<date>.json
    .venv/bin/python bench/demo_quality.py --weights /tmp/train/candidate.safetensors   # compare weights

Object pixels are the saturated ones (the data's backgrounds are desaturated), closed by two pixels so
that the dark strokes of textured shapes do not split them.
"""
import argparse
import importlib
import json
import pathlib
import statistics
import sys

import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from pack_host import import_comfyui, load_pack  # noqa: E402


def largest_piece_share(image: torch.Tensor) -> float:
    """image (H, W, 3) in [0, 1] -> share of object pixels in the largest 8-connected piece (0: none)."""
    import numpy as np
    from scipy import ndimage
    saturated = (image.max(dim=-1).values - image.min(dim=-1).values) > 0.35
    mask = ndimage.binary_closing(saturated.numpy(), iterations=2)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count == 0:
        return 0.0
    sizes = np.bincount(labels.ravel())[1:]
    return float(sizes.max() / sizes.sum())


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
    from comfyui_sdit.nodes.demo_nodes import SDiTDemoDecode, SDiTDemoModelLoader
    comfy_nodes = importlib.import_module("nodes")
    comfy.utils.PROGRESS_BAR_ENABLED = False
    if args.weights:
        demo_model.WEIGHTS = pathlib.Path(args.weights)
    rows = []
    for shape in SHAPES[:args.shapes]:
        model, positive, negative = SDiTDemoModelLoader().load(f"a red {shape}")
        latent = {"samples": torch.zeros(args.seeds, 16, 32, 32)}
        sampled = comfy_nodes.KSampler().sample(model, 5, args.steps, args.cfg, "euler", "simple",
                                                positive, negative, latent)[0]
        shares = [largest_piece_share(image) for image in SDiTDemoDecode().decode(sampled)[0]]
        rows.append({"shape": shape, "largest_piece_share": shares, "mean": statistics.mean(shares)})
        print(f"| {shape} | {rows[-1]['mean']:.2f} | {' '.join(f'{s:.2f}' for s in shares)} |", flush=True)
    overall = statistics.mean(r["mean"] for r in rows)
    print(f"mean over shapes: {overall:.3f}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"weights": args.weights or "pack", "seeds": args.seeds,
                                                       "mean": overall, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
