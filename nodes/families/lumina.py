"""Lumina 2 and Z-Image (comfy/ldm/lumina/model.py, NextDiT).

`patchify_and_embed` embeds the image tokens per token, pads them to a multiple (Z-Image), builds
RoPE `freqs_cis` for [caption | image], runs the caption refiner (text-only attention), then the
noise refiner (image-only attention), and concatenates [caption | image] for the joint layers.
The adapter hooks layers, never that function's code:
- the first noise-refiner layer gathers the image tokens (grid tokens; padding tokens always run)
  and, like every later layer, the image part of its RoPE frequencies;
- `unpatchify` scatters the image part of the final layer's output back to the full grid.
Attention before the first gather (the caption refiner) passes through untouched.
"""
import torch

from .base import FamilyAdapter, patch_method


def _gathered_freqs(call, freqs: torch.Tensor, prefix: int) -> torch.Tensor:
    """RoPE frequencies of [prefix | full image sequence] -> [prefix | running image tokens],
    computed once per forward (every layer gets views of the same tensor)."""
    key = ("freqs", freqs.data_ptr(), tuple(freqs.shape), prefix)
    if key not in call.scratch:
        image = call.gather(freqs[:, prefix:])
        call.scratch[key] = torch.cat([freqs[:, :prefix], image], dim=1) if prefix else image
    return call.scratch[key]


class LuminaFamily(FamilyAdapter):
    names = ("Lumina 2", "Z-Image")

    def matches(self, diffusion_model) -> bool:
        import comfy.ldm.lumina.model
        return isinstance(diffusion_model, comfy.ldm.lumina.model.NextDiT)

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size)

    def install(self, patcher, slot) -> None:
        diffusion_model = patcher.model.diffusion_model
        if len(diffusion_model.noise_refiner) == 0:
            raise ValueError("Lumina 2 model without noise-refiner layers is not supported")
        for i in range(len(diffusion_model.noise_refiner)):
            patch_method(patcher, slot, f"diffusion_model.noise_refiner.{i}.forward",
                         before=_gather_tokens_and_freqs if i == 0 else _gather_freqs)
        for i in range(len(diffusion_model.layers)):
            patch_method(patcher, slot, f"diffusion_model.layers.{i}.forward", before=_gather_freqs)
        patch_method(patcher, slot, "diffusion_model.unpatchify", before=_scatter_image_part)


def _gather_tokens_and_freqs(call, arguments) -> None:
    """First noise-refiner layer: the image tokens (and their padding mask, if any) enter sparse here."""
    arguments["x"] = call.gather(arguments["x"])           # dense: unchanged, but counted
    if arguments.get("x_mask") is not None and not call.dense:
        arguments["x_mask"] = call.gather(arguments["x_mask"])
    _gather_freqs(call, arguments)


def _gather_freqs(call, arguments) -> None:
    freqs = arguments["freqs_cis"]
    if not call.dense and call.image_rows is not None and freqs.shape[1] != arguments["x"].shape[1]:
        prefix = arguments["x"].shape[1] - call.image_rows
        arguments["freqs_cis"] = _gathered_freqs(call, freqs, prefix)


def _scatter_image_part(call, arguments) -> None:
    """unpatchify's input is [caption | image]: the image part goes back to the full grid."""
    x, cap_size = arguments["x"], arguments["cap_size"]
    prefix = int(cap_size[0])
    if any(int(c) != prefix for c in cap_size):
        raise ValueError("caption lengths differ within the batch")
    arguments["x"] = torch.cat([x[:, :prefix], call.scatter(x[:, prefix:])], dim=1)
