"""The K/V cache in ComfyUI's memory plan.

ComfyUI decides how much of a model's weights to keep in VRAM from its estimate of what sampling needs
beside them (`comfy.sampler_helpers.estimate_memory`: a forward's activations). The K/V cache is not in
that estimate, so a model that filled VRAM left the cache no room and the first step ran out of memory.
- Before sampling (the OUTER_SAMPLE wrapper) the run's cache size is computed from the latent (or its
  context windows), the prompts each step evaluates with their reference latents, and the model's
  attention layers (the adapter's `kv_cache_layers`); a cache larger than the device is refused there,
  before any model loads.
- Once ComfyUI has loaded the models (a PREPARE_SAMPLING wrapper), where less memory is free than its
  estimate plus the cache, ComfyUI's own loader is asked again with the cache added: it offloads weights
  for the cache as it does for activations.
Dynamic VRAM (newer ComfyUI's default on NVIDIA) stages weights on demand instead of by plan: left to it
(comfy-aimdo takes over the CUDA allocation calls and frees staged weights where an allocation falls short).
"""
import logging
import math
from typing import List, Optional, Tuple

import comfy.model_management
import comfy.sampler_helpers
import comfy.samplers

from ..sdit_core.kv_cache import cache_bytes, size_text
from ..sdit_core.tokens import token_grid
from .comfy_compat import dynamic_vram, inference_dtype
from .errors import SDiTInputError


def device_memory(device) -> Optional[Tuple[int, int]]:
    """(total, free) bytes of the device the model computes on that ComfyUI may plan with: what it reserves
    for other programs (--reserve-vram) left out, as its own plans do. None on the CPU (ComfyUI plans no
    RAM for activations either)."""
    if comfy.model_management.is_device_cpu(device):
        return None
    reserved = comfy.model_management.extra_reserved_memory()
    return (int(comfy.model_management.get_total_memory(device) - reserved),
            int(comfy.model_management.get_free_memory(device) - reserved))


def evaluated_prompts(guider) -> List[dict]:
    """The conditioning entries the guider evaluates every step (each over the latent's whole batch): their
    text (`cross_attn`) and values (references, ...). ComfyUI's CFGGuider leaves the negative prompt out
    at cfg 1 (unless a node turned that off). Each entry says which prompt it is (`prompt_type`, as ComfyUI tells the
    model's conditioning: some models build another prompt for the negative, SenseNova U1.5 an image-only one)."""
    conds = getattr(guider, "conds", None) or {}
    skips_negative = (getattr(type(guider), "predict_noise", None) is comfy.samplers.CFGGuider.predict_noise
                      and math.isclose(getattr(guider, "cfg", 0.0), 1.0)
                      and not (getattr(guider, "model_options", None) or {}).get("disable_cfg1_optimization"))
    return [dict(entry, prompt_type=entry.get("prompt_type", key)) for key, entries in conds.items()
            if not (key == "negative" and skips_negative) for entry in entries or [] if isinstance(entry, dict)]


def _text_tokens(entry: dict) -> int:
    text = entry.get("cross_attn")
    return int(text.shape[1]) if text is not None and text.ndim >= 2 else 0


def planned_cache_bytes(adapter, patcher, noise_shape, prompts: List[dict], store: Optional[str],
                        patch_size: int, temporal_patch: int = 1, window_frames: Optional[List[int]] = None,
                        latent_shapes: Optional[list] = None, side_layers=None) -> int:
    """The K/V cache of a run over a latent of `noise_shape` with these prompts, once every stream stored
    its dense step: per prompt, its text and the image's tokens with the references it puts after them.
    Prompts of other lengths run apart, each at its own length (DiTs' prompts are plain conditions in
    ComfyUI, which batches only equal shapes). `window_frames`: the frames of each context window of the
    first step, each window a cache of its own (the engine keeps no more where the windows move). `latent_shapes`:
    the parts' shapes of a latent of several parts (outer_sample's argument; `noise_shape` is then the first's).
    `side_layers(entry, image_tokens, text_tokens)`: the layers of networks that run with the model's tokens beside it
    for a prompt (its ControlNets, sparse_controlnet.py)."""
    model = patcher.model
    diffusion_model = model.diffusion_model
    value_bytes = inference_dtype(model).itemsize
    shapes = [tuple(noise_shape)] if window_frames is None else \
        [(*noise_shape[:2], frames, *noise_shape[3:]) for frames in window_frames]

    def tokens(shape) -> int:
        return math.prod(token_grid(shape, patch_size, temporal_patch))
    options = patcher.model_options.get("transformer_options", {})
    try:
        layers = []
        for entry in prompts:
            references = adapter.sequence_reference_tokens(diffusion_model, entry, tokens, tuple(noise_shape))
            text = adapter.prompt_tokens(model, _text_tokens(entry), entry)
            if latent_shapes is not None and len(latent_shapes) > 1:
                text += adapter.latent_parts_tokens(diffusion_model, latent_shapes, _text_tokens(entry), entry)
            layers += [adapter.kv_cache_layers(diffusion_model, tokens(shape) + references, text, entry)
                       + adapter.patch_cache_layers(diffusion_model, options, tokens(shape))
                       + (side_layers(entry, tokens(shape), _text_tokens(entry)) if side_layers else [])
                       for shape in shapes]
    except (AttributeError, ImportError) as error:  # a newer ComfyUI renamed what the adapter reads: sample unplanned
        logging.warning("SDiT: the K/V cache is left out of ComfyUI's memory plan (%s)", error)
        return 0
    return sum(cache_bytes(prompt_layers, int(noise_shape[0]), value_bytes, store) for prompt_layers in layers)


def check_cache_fits(cache: int, device, store: Optional[str], node: str, windowed: bool = False) -> None:
    """A cache larger than the whole device can never fit: say so before anything loads. `windowed`: the
    run is sampled in context windows (each window a cache of its own)."""
    memory = device_memory(device)
    if memory is None or cache <= memory[0]:
        return
    smaller = "" if store == "fp8_e4m3" else "kv_cache fp8_e4m3 (a byte a value), "
    frames = "fewer or shorter context windows" if windowed else "fewer frames"
    raise SDiTInputError(node, "kv_cache",
                         f"this run's K/V cache (every attention layer's keys and values of every token) needs "
                         f"{size_text(cache)}, more than all {size_text(memory[0])} ComfyUI may use of {device}. "
                         f"Use {smaller}a smaller latent, {frames} or a smaller batch, or sample with KSampler")


def make_room_for_cache(cache: int, model, noise_shape, conds, loaded_models: list) -> bool:
    """After ComfyUI loaded the models for sampling (`loaded_models`: those beside the model): where the
    memory left is less than its estimate plus the cache, its loader is asked again with the cache added
    (it offloads weights for it). True if it was. What it must leave free is its estimate of the batched
    forward (cond and uncond at once), not of a single prompt's as in its own plan: ComfyUI batches the
    prompts when the memory free allows, which before the first forward includes the cache's share."""
    if cache <= 0 or dynamic_vram(model):
        return False
    memory = device_memory(model.load_device)
    if memory is None:
        return False
    required = comfy.sampler_helpers.estimate_memory(model, noise_shape, conds)[0]
    required += comfy.sampler_helpers.get_additional_models(conds, model.model_dtype())[1]   # ControlNets', as ComfyUI
    if memory[1] >= required + cache:
        return False
    logging.info("SDiT: the K/V cache (%s) does not fit beside the loaded weights: ComfyUI offloads part of the "
                 "weights for it (slower steps; kv_cache fp8_e4m3 halves the cache)", size_text(cache))
    comfy.model_management.load_models_gpu([model] + list(loaded_models), memory_required=required + cache,
                                           minimum_memory_required=required + cache)
    return True
