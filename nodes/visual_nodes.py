"""`Region Visualizer` and `Complexity Map` nodes."""
import importlib

import numpy as np
import torch

from ..sdit_core.complexity import token_complexity
from ..sdit_core.trace import PIXELS_PER_LATENT, RegionTrace
from .comfy_compat import first_part
from .errors import SDiTInputError
from .sampling import CATEGORY
from .visualize import (MASK_LEGEND, beside, blend, colour_bar, colour_bar_width, heatmap, labels_image, mask_image,
                        render, text_panel, text_panel_width, to_image_batch, upsample_nearest, with_legend)


def _check_trace(trace, node: str) -> RegionTrace:
    if not isinstance(trace, RegionTrace):
        raise SDiTInputError(node, "region_trace", "expected the REGION_TRACE output of an SDiT or RAS Sampler run")
    if not trace.steps:
        raise SDiTInputError(node, "region_trace", "the trace holds no evaluations: its sampler sampled nothing "
                                                   "(denoise 0)")
    return trace


def _pick_step(trace: RegionTrace, step: int, node: str):
    """step -1: the last sparse evaluation (or the last one); otherwise that evaluation index."""
    if step < 0:
        sparse = [s for s in trace.steps if not s.dense]
        return (sparse or trace.steps)[-1]
    if step >= len(trace.steps):
        raise SDiTInputError(node, "step", f"{step} is beyond the trace's {len(trace.steps)} evaluations (0..{len(trace.steps) - 1}, or -1)")
    return trace.steps[step]


def _output_size(trace: RegionTrace, image) -> tuple:
    """Pixels of one image (one frame of a video)."""
    if image is not None:
        return int(image.shape[1]), int(image.shape[2])
    scale = trace.patch_size * trace.pixels_per_latent
    return trace.grid[-2] * scale, trace.grid[-1] * scale


def _base_of(trace: RegionTrace, image, batch_index: int):
    """frame (None for an image) -> the decoded picture to draw over, or None without one. A video's
    decoded frames are matched to its latent frames evenly (first to first, last to last)."""
    if image is None:
        return lambda frame: None
    pictures = image.cpu().numpy().astype(np.float32)
    if len(trace.grid) == 2:
        return lambda frame: pictures[min(batch_index, pictures.shape[0] - 1)]
    frames = trace.grid[0]
    return lambda frame: pictures[round(frame * (pictures.shape[0] - 1) / max(frames - 1, 1))]


def _animated_preview(labels: np.ndarray, size, prefix: str) -> dict:
    """A video's region map, frame by frame, as an animated WEBP in ComfyUI's temp folder."""
    import os

    import folder_paths
    from PIL import Image
    frames = [Image.fromarray((labels_image(labels[f], size) * 255).astype(np.uint8)) for f in range(labels.shape[0])]
    folder = folder_paths.get_temp_directory()
    os.makedirs(folder, exist_ok=True)
    name = f"{prefix}_{os.getpid()}_{id(labels)}.webp"
    frames[0].save(os.path.join(folder, name), save_all=True, append_images=frames[1:], duration=250, loop=0,
                   lossless=True)
    return {"images": [{"filename": name, "subfolder": "", "type": "temp"}], "animated": (True,)}


def _preview(images: torch.Tensor, prefix: str) -> dict:
    return importlib.import_module("nodes").PreviewImage().save_images(images, filename_prefix=prefix)["ui"]


class RegionVisualizer:
    DESCRIPTION = ("Draws a REGION_TRACE: the regions of one step coloured with their boundaries (and how many), how often "
                   "each token was computed (heatmap with legend), and the tokens every evaluation computed (white) or "
                   "skipped (dark), each frame captioned with its step, sigma and why it ran dense or how many tokens it "
                   "computed; optionally over the image.")
    CATEGORY = CATEGORY
    FUNCTION = "draw"
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("Batch: regions, update-count heatmap, then one active-token mask per evaluation.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
                    "region_trace": ("REGION_TRACE", {"tooltip": "From SDiT Sampler or RAS Sampler."}),
                    "step": ("INT", {"default": -1, "min": -1, "max": 10000,
                                     "tooltip": "Evaluation whose regions to draw; -1 = the last sparse one."}),
                    "batch_index": ("INT", {"default": 0, "min": 0, "max": 4095, "tooltip": "Which image of the batch."}),
                    "opacity": ("FLOAT", {"default": 0.6, "min": 0.0, "max": 1.0, "step": 0.05,
                                          "tooltip": "Opacity of the maps over the image (when one is given)."})},
                "optional": {"image": ("IMAGE", {"tooltip": "Decoded image to draw the maps over."})}}

    def draw(self, region_trace, step, batch_index, opacity, image=None):
        node = "Region Visualizer"
        trace = _check_trace(region_trace, node)
        if batch_index >= trace.batch:
            raise SDiTInputError(node, "batch_index", f"{batch_index} is beyond the trace's batch of {trace.batch}")
        size = _output_size(trace, image)
        base_of = _base_of(trace, image, batch_index)
        chosen = _pick_step(trace, step, node)
        steps = max(s.step for s in trace.steps) + 1
        maps, panels = [], []      # each map gets a side panel; all panels get the widest one's width
        if chosen.labels is not None:
            labels = chosen.labels[batch_index].numpy()
            maps.append(render(labels, lambda m, s, base: blend(labels_image(m, s), base, opacity), size, base_of))
            regions = len(np.unique(labels))
            panels.append(("text", [(None, f"{regions} region{'s' if regions != 1 else ''}"),
                                    (None, f"at step {chosen.step + 1}/{steps}")]))
        else:   # RAS has no regions: show its metric map instead
            metric = chosen.metric if chosen.metric is not None else chosen.active.float()
            values = metric[batch_index].float().numpy()
            vmin, vmax = float(values.min()), float(values.max())
            maps.append(render(values, lambda m, s, base: blend(heatmap(m, s, vmin, vmax), base, opacity), size, base_of))
            panels.append(("bar", (vmin, vmax, f"metric, step {chosen.step + 1}")))
        counts = trace.update_count[batch_index].numpy()
        maps.append(render(counts, lambda m, s, base: blend(heatmap(m, s, 0, len(trace.steps)), base, opacity),
                           size, base_of))
        panels.append(("bar", (0, len(trace.steps), "updates")))
        for s in trace.steps:
            maps.append(render(s.active[batch_index].numpy(),
                               lambda m, s_, base: blend(mask_image(m, s_), base, opacity), size, base_of))
            panels.append(("text", _mask_caption(s, steps, trace.num_tokens)))
        height = maps[0].shape[0]
        width = max(colour_bar_width(height, *spec) if kind == "bar" else text_panel_width(height, spec)
                    for kind, spec in panels)
        images = to_image_batch([beside(m, colour_bar(height, width, *spec) if kind == "bar"
                                        else text_panel(height, width, spec)) for m, (kind, spec) in zip(maps, panels)])
        ui = _preview(images, "sdit_regions")
        if len(trace.grid) == 3 and chosen.labels is not None:     # a video: its regions, animated
            ui = _animated_preview(chosen.labels[batch_index].numpy(), size, "sdit_regions")
        return {"ui": ui, "result": (images,)}


DENSE_REASONS = {"drift reset": "drift", "no segmentation yet": "no regions yet", "no metric yet": "no metric yet",
                 "warm-up": "warm-up", "cool-down": "cool-down", "reset": "reset"}


def _mask_caption(s, steps: int, total: int) -> list:
    """Legend of one mask frame: its step and sigma, why it ran dense or how many tokens it computed."""
    work = f"dense: {DENSE_REASONS.get(s.reason, 'all tokens')}" if s.dense else f"{s.tokens}/{total} tokens"
    return [(None, f"step {s.step + 1}/{steps}"), (None, f"sigma {s.sigma:.3g}"), (None, work), *MASK_LEGEND]


class ComplexityMap:
    DESCRIPTION = ("Heatmap of SDiT's complexity score (Eq. 5: edges, fine detail, residual noise) of a latent, or of the "
                   "score map a sampler step recorded in a REGION_TRACE, with a MASK of the tokens that matter.")
    CATEGORY = CATEGORY
    FUNCTION = "compute"
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE", "MASK")
    OUTPUT_TOOLTIPS = ("Heatmap with a colour legend.", "With a trace: the step's active tokens; else complexity above mask_quantile.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
                    "latent": ("LATENT", {"tooltip": "A latent (the predicted clean latent when no trace is given)."}),
                    "patch_size": ("INT", {"default": 2, "min": 1, "max": 16, "tooltip": "Latent pixels per token side (2 for Flux, SD3)."}),
                    "mask_quantile": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                                "tooltip": "Without a trace, the MASK keeps tokens above this quantile of complexity."}),
                    "alpha": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.05, "tooltip": "Weight of edges."}),
                    "gamma": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 10.0, "step": 0.05, "tooltip": "Weight of fine detail."}),
                    "step": ("INT", {"default": -1, "min": -1, "max": 10000,
                                     "tooltip": "With a trace: the evaluation whose map to show; -1 = the last sparse one."}),
                    "batch_index": ("INT", {"default": 0, "min": 0, "max": 4095, "tooltip": "Which image of the batch."})},
                "optional": {"region_trace": ("REGION_TRACE", {"tooltip": "Show a sampler step's recorded map instead."})}}

    def compute(self, latent, patch_size, mask_quantile, alpha, gamma, step, batch_index, region_trace=None):
        node = "Complexity Map"
        samples = first_part(latent.get("samples")) if isinstance(latent, dict) else None
        if samples is None or samples.ndim not in (4, 5):
            raise SDiTInputError(node, "latent", "expected an image or video latent (batch, channels, [frames,] "
                                                 "height, width)")
        if batch_index >= samples.shape[0]:
            raise SDiTInputError(node, "batch_index", f"{batch_index} is beyond the latent's batch of {samples.shape[0]}")
        height, width = samples.shape[-2:]
        if region_trace is None and (height % patch_size or width % patch_size):
            raise SDiTInputError(node, "patch_size", f"{patch_size} does not divide the latent's {height}x{width}; "
                                                     f"use the model's patch size (2 for Flux, SD3, Lumina, Wan)")
        pixels = PIXELS_PER_LATENT      # a latent without a trace (a trace says its model's)
        if region_trace is not None:
            trace = _check_trace(region_trace, node)
            pixels = trace.pixels_per_latent
            chosen = _pick_step(trace, step, node)
            if chosen.metric is None:
                raise SDiTInputError(node, "region_trace", "the trace holds no score map for that step")
            grid = tuple(chosen.metric.shape[-2:])
            expected = (height // trace.patch_size, width // trace.patch_size)
            if grid != expected:
                raise SDiTInputError(node, "region_trace", f"the step's token grid {grid[0]}x{grid[1]} is not the "
                                                           f"latent's {expected[0]}x{expected[1]}: connect the latent "
                                                           f"of the same sampler run")
            values = chosen.metric[min(batch_index, trace.batch - 1)].float().numpy()
            mask = chosen.active[min(batch_index, trace.batch - 1)].numpy()
        else:
            x = samples[batch_index: batch_index + 1].float()
            values = token_complexity(x, x, patch_size, alpha=alpha, gamma=gamma, beta=0.0)[0].numpy()
            mask = values >= np.quantile(values, mask_quantile)
        size = (height * pixels, width * pixels)
        vmin, vmax = float(values.min()), float(values.max())
        strip = render(values, lambda m, s, base: heatmap(m, s, vmin, vmax), size)
        image = to_image_batch([with_legend(strip, vmin, vmax, "complexity")])
        if values.ndim == 3:      # a video: one mask per latent frame
            mask_pixels = torch.from_numpy(np.stack([upsample_nearest(f.astype(np.float32), size) for f in mask]))
        else:
            mask_pixels = torch.from_numpy(upsample_nearest(mask.astype(np.float32), size))[None]
        return {"ui": _preview(image, "sdit_complexity"), "result": (image, mask_pixels)}
