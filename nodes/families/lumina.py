"""Lumina 2 and Z-Image (comfy/ldm/lumina/model.py, NextDiT).

`patchify_and_embed` embeds the image tokens per token, pads them to a multiple (Z-Image), builds
RoPE `freqs_cis` for [caption | image], runs the caption refiner (text-only attention), then the
noise refiner (image-only attention), and concatenates [caption | image] for the joint layers.
The adapter hooks layers, never that function's code:
- the first noise-refiner layer gathers the image tokens (grid tokens; padding tokens always run)
  and, like every later layer, the image part of its RoPE frequencies;
- `unpatchify` scatters the image part of the final layer's output back to the full grid.
Each layer's sparse calls may replay from a CUDA graph of that layer (forward_graphs.py).
Attention before the first gather (the caption refiner) passes through untouched.

What differs between ComfyUI versions is read off the call, never assumed: RoPE frequencies may be
built for one image and broadcast (newer) or per image (older), and the caption length handed to
`unpatchify` may be derived from the dense image length (newer), so the adapter takes the caption
part as "everything before the image rows that ran".
"""
import torch

from ..comfy_compat import takes_reference_latents
from .base import FamilyAdapter, gathered_freqs, patch_method, runs_class_methods


class LuminaFamily(FamilyAdapter):
    names = ("Lumina 2", "Z-Image")

    def matches(self, diffusion_model) -> bool:
        # A subclass with a forward of its own (Z-Image pixel space: a decoder over a fixed dense token
        # count) is another model: not covered, it gets the "not supported" error.
        return runs_class_methods(diffusion_model, "comfy.ldm.lumina.model", "NextDiT", ("forward", "_forward"))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size)

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        multiple = getattr(diffusion_model, "pad_tokens_multiple", None)    # Z-Image pads both to a multiple

        def padded(tokens):
            return tokens + (-tokens) % multiple if multiple else tokens
        image, joint = padded(image_tokens), padded(text_tokens) + padded(image_tokens)
        return ([(image, diffusion_model.dim)] * len(diffusion_model.noise_refiner)
                + [(joint, diffusion_model.dim)] * len(diffusion_model.layers))

    def install(self, patcher, slot) -> None:
        diffusion_model = patcher.model.diffusion_model
        if len(diffusion_model.noise_refiner) == 0:
            raise ValueError("Lumina 2 model without noise-refiner layers is not supported")
        # no method spans the sparse part alone (it starts inside patchify_and_embed): a graph per layer
        for i in range(len(diffusion_model.noise_refiner)):
            patch_method(patcher, slot, f"diffusion_model.noise_refiner.{i}.forward",
                         before=_gather_tokens_and_freqs if i == 0 else _gather_freqs, graph=True)
        for i in range(len(diffusion_model.layers)):
            patch_method(patcher, slot, f"diffusion_model.layers.{i}.forward", before=_gather_freqs, graph=True)
        patch_method(patcher, slot, "diffusion_model.unpatchify", before=_scatter_image_part)

    def refused_conditioning(self, diffusion_model, values: dict):
        if values.get("reference_latents") is not None and takes_reference_latents(diffusion_model):
            return OMNI
        return None


OMNI = ("Lumina 2 / Z-Image with reference images (Omni) is not supported by region-adaptive sampling; "
        "sample it with KSampler")


def _gather_tokens_and_freqs(call, arguments) -> None:
    """First noise-refiner layer: the image tokens (and their padding mask, if any) enter sparse here."""
    if arguments.get("timestep_zero_index") is not None:
        # Z-Image Omni (reference images): their tokens precede the image's in this sequence
        raise NotImplementedError(OMNI)
    arguments["x"] = call.gather(arguments["x"])           # dense: unchanged, but counted
    if arguments.get("x_mask") is not None and not call.dense:
        arguments["x_mask"] = call.gather(arguments["x_mask"])
    _gather_freqs(call, arguments)


def _gather_freqs(call, arguments) -> None:
    freqs = arguments["freqs_cis"]
    if not call.dense and call.image_rows is not None and freqs.shape[1] != arguments["x"].shape[1]:
        prefix = arguments["x"].shape[1] - call.image_rows
        arguments["freqs_cis"] = gathered_freqs(call, freqs, prefix)


def _scatter_image_part(call, arguments) -> None:
    """unpatchify's input is [caption | image]: the image part goes back to the full grid, and
    unpatchify is told where it starts (the caption is whatever precedes the image rows that ran)."""
    x = arguments["x"]
    prefix = x.shape[1] - call.image_rows
    arguments["x"] = torch.cat([x[:, :prefix], call.scatter(x[:, prefix:])], dim=1)
    arguments["cap_size"] = [prefix] * x.shape[0]
