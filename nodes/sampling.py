"""What the pack's KSampler-like nodes share: their standard inputs, input checks, and sampling
through ComfyUI's own `common_ksampler` (noise, previews, progress bar as in KSampler)."""
import importlib

import comfy.samplers

from ..sdit_core.device_support import holds_fp8
from ..sdit_core.kv_cache import STORES as KV_CACHE_STORES
from ..sdit_core.tokens import is_image_shape, is_latent_shape
from .comfy_compat import first_part, pixels_per_latent
from .errors import SDiTInputError

CATEGORY = "sampling/region adaptive"


def ksampler_inputs() -> dict:
    return {
        "model": ("MODEL", {"tooltip": "A diffusion-transformer model: Flux, SD3/3.5, Lumina 2 / Z-Image, Qwen-Image, Wan, HunyuanVideo, LTX-Video / LTX-2 and the other families in the pack's README. It is not modified: a patched copy samples."}),
        "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                         "tooltip": "Random seed of the initial noise, as in KSampler."}),
        "steps": ("INT", {"default": 28, "min": 1, "max": 10000, "tooltip": "Sampling steps, as in KSampler."}),
        "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                          "tooltip": "Classifier-free guidance scale (Flux dev: 1.0, guidance comes from FluxGuidance)."}),
        "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"tooltip": "Any ComfyUI sampler."}),
        "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"tooltip": "Any ComfyUI scheduler."}),
        "positive": ("CONDITIONING", {"tooltip": "Conditioning describing what to include."}),
        "negative": ("CONDITIONING", {"tooltip": "Conditioning describing what to avoid (used when cfg > 1)."}),
        "latent_image": ("LATENT", {"tooltip": "The latent to denoise; height and width must be multiples of the model's patch size."}),
        "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                              "tooltip": "Amount of denoising, as in KSampler (below 1 for img2img)."}),
    }


def kv_cache_input() -> dict:
    return {"kv_cache": (list(KV_CACHE_STORES), {
        "default": KV_CACHE_STORES[0],
        "tooltip": "How the key/value cache of every token is kept: in the model's dtype (sparse steps exact), or "
                   "fp8 e4m3 at half the memory of bf16 (on an H200 at Flux-dev size: active tokens 1.2% off "
                   "dense per step, and slower; docs/BENCHMARKS.md). For when memory, not time, is short."})}


class MethodOptions:
    """What an `SDiT Options` / `RAS Options` node outputs: its checked input values, by input name."""

    def __init__(self, method: str, values: dict):
        self.method, self.values = method, dict(values)


def options_values(options, method: str, defaults: dict, node: str) -> dict:
    """The option values a sampler or patch node uses: the connected Options node's, else the defaults."""
    if options is None:
        return dict(defaults)
    if not isinstance(options, MethodOptions) or options.method != method:
        got = f"{options.method} Options" if isinstance(options, MethodOptions) else type(options).__name__
        raise SDiTInputError(node, "options", f"expected the output of a {method} Options node, got {got}")
    return dict(defaults, **options.values)


def check_no_moved_inputs(prompt, node_id, option_names, node: str, method: str) -> None:
    """An API-format prompt written for the nodes before the settings moved to the Options nodes names
    those settings as the sampler's inputs; ComfyUI drops undeclared inputs, so say so instead of
    silently sampling with the defaults."""
    inputs = ((prompt or {}).get(str(node_id)) or {}).get("inputs") or {}
    moved = [name for name in inputs if name in option_names]
    if moved:
        raise SDiTInputError(node, moved[0], f"moved to the {method} Options node ({', '.join(moved)}): add one with "
                                             f"these values and connect it to the 'options' input")


def options_input(method: str) -> dict:
    return {"options": (f"{method.upper()}_OPTIONS", {
        "tooltip": f"Optional: a {method} Options node with every other setting. Without it, the defaults "
                   f"(which the Options node also starts from)."})}


def check_kv_cache(value, node: str) -> str:
    if value not in KV_CACHE_STORES:
        raise SDiTInputError(node, "kv_cache", f"'{value}' is not one of {', '.join(KV_CACHE_STORES)}")
    return value


def check_kv_cache_on(device, value, node: str) -> None:
    """Before sampling, where the model samples: the fp8 store needs float8 there."""
    if value == "fp8_e4m3" and not holds_fp8(device):
        raise SDiTInputError(node, "kv_cache", f"fp8_e4m3 needs float8 on the sampling device ({device}), which "
                             f"PyTorch does not have there (Apple's MPS has none); use '{KV_CACHE_STORES[0]}'")


def check_latent(latent: dict, patch_size: int, node: str, input_name: str = "latent_image", video: bool = False,
                 pixels: int = 8) -> None:
    """A LATENT input fits the model (a latent of several parts: its first part, the video's); `pixels`: image pixels
    per latent pixel (side), for the error's advice."""
    samples = first_part(latent.get("samples")) if isinstance(latent, dict) else None
    shape = tuple(samples.shape) if samples is not None and hasattr(samples, "shape") else None
    check_latent_shape(shape, patch_size, node, input_name, video, pixels)


def check_latent_shape(shape, patch_size: int, node: str, input_name: str = "latent_image", video: bool = False,
                       pixels: int = 8) -> None:
    check_latent_kind(shape, node, input_name, video)
    if not tiles_by_patch(shape, patch_size):
        raise SDiTInputError(
            node, input_name,
            f"latent size {shape[-2]}x{shape[-1]} is not a multiple of the model's patch size {patch_size}; "
            f"use an image size that is a multiple of {pixels * patch_size} pixels")


def check_latent_kind(shape, node: str, input_name: str = "latent_image", video: bool = False) -> None:
    """An image latent, or (`video`) an image or video latent."""
    accepted = is_latent_shape if video else is_image_shape
    if shape is None or not accepted(shape):
        expected = ("an image or video latent (batch, channels, [frames,] height, width)" if video else
                    "an image latent (batch, channels, height, width); video latents need a video model (Wan, "
                    "HunyuanVideo), layered ones Qwen-Image on a newer ComfyUI")
        raise SDiTInputError(node, input_name, f"expected {expected}, got shape {shape}")


def tiles_by_patch(shape, patch_size: int) -> bool:
    """The latent's height and width are whole numbers of the model's patches (the token grid the engine samples)."""
    return shape[-2] % patch_size == 0 and shape[-1] % patch_size == 0


def check_sampler_inputs(adapter, model, latent_image, positive, negative, patch_size: int, node: str) -> None:
    """Before a sampler node samples: the latent fits the model, and neither prompt carries what the
    model's adapter refuses (e.g. a reference latent before a video's tokens)."""
    check_latent(latent_image, patch_size, node, video=adapter.takes_frames(model.model.diffusion_model),
                 pixels=pixels_per_latent(model.model))
    shape = tuple(first_part(latent_image["samples"]).shape)
    reason = (adapter.refused_latent(model.model.diffusion_model, shape)
              or adapter.samples_alone(model.model.diffusion_model, shape))
    if reason:
        raise SDiTInputError(node, "latent_image", reason)
    for input_name, conditioning in (("positive", positive), ("negative", negative)):
        for entry in conditioning or []:
            values = entry[1] if isinstance(entry, (list, tuple)) and len(entry) > 1 and isinstance(entry[1], dict) else {}
            reason = adapter.refused_conditioning(model.model.diffusion_model, values)
            if reason:
                raise SDiTInputError(node, input_name, reason)


# sample_ratio's range, the same in every node (its widget's min and max, and the error's words)
RATIO_MIN, RATIO_MAX = 0.01, 1.0


def check_ratio(value: float, node: str, input_name: str = "sample_ratio") -> None:
    check_range(value, RATIO_MIN, RATIO_MAX, node, input_name)


def check_range(value: float, low: float, high: float, node: str, input_name: str, low_open: bool = False) -> None:
    below = value <= low if low_open else value < low
    if below or value > high:
        bracket = "(" if low_open else "["
        raise SDiTInputError(node, input_name, f"{value} is outside {bracket}{low}, {high}]")


def run_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise):
    comfy_nodes = importlib.import_module("nodes")   # ComfyUI's nodes.py, not this pack's `nodes` package
    return comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                       latent_image, denoise=denoise)[0]
