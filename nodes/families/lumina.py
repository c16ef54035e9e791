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
import inspect

import torch

from .base import FamilyAdapter


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
            self._patch_layer(patcher, slot, f"diffusion_model.noise_refiner.{i}", gathers_tokens=i == 0)
        for i in range(len(diffusion_model.layers)):
            self._patch_layer(patcher, slot, f"diffusion_model.layers.{i}", gathers_tokens=False)
        self._patch_unpatchify(patcher, slot)

    @staticmethod
    def _patch_layer(patcher, slot, path: str, gathers_tokens: bool) -> None:
        original = patcher.get_model_object(path + ".forward")
        signature = inspect.signature(type(patcher.get_model_object(path)).forward)

        def sparse_layer(*args, **kwargs):
            call = slot.current_call()
            if call is None or call.dense and not gathers_tokens:
                return original(*args, **kwargs)
            bound = signature.bind(None, *args, **kwargs)       # None stands in for self
            arguments = bound.arguments
            if gathers_tokens:
                arguments["x"] = call.gather(arguments["x"])   # dense: unchanged, but counted
                mask = arguments.get("x_mask")
                if mask is not None and not call.dense:
                    arguments["x_mask"] = call.gather(mask)
            freqs = arguments["freqs_cis"]
            if not call.dense and freqs.shape[1] != arguments["x"].shape[1]:
                prefix = arguments["x"].shape[1] - call.image_rows
                arguments["freqs_cis"] = _gathered_freqs(call, freqs, prefix)
            return original(*bound.args[1:], **bound.kwargs)

        patcher.add_object_patch(path + ".forward", sparse_layer)

    @staticmethod
    def _patch_unpatchify(patcher, slot) -> None:
        diffusion_model = patcher.model.diffusion_model
        original = patcher.get_model_object("diffusion_model.unpatchify")
        signature = inspect.signature(type(diffusion_model).unpatchify.__get__(diffusion_model))

        def sparse_unpatchify(*args, **kwargs):
            call = slot.current_call()
            if call is None:
                return original(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            x, cap_size = bound.arguments["x"], bound.arguments["cap_size"]
            prefix = int(cap_size[0])
            if any(int(c) != prefix for c in cap_size):
                raise ValueError("caption lengths differ within the batch")
            bound.arguments["x"] = torch.cat([x[:, :prefix], call.scatter(x[:, prefix:])], dim=1)
            return original(*bound.args, **bound.kwargs)

        patcher.add_object_patch("diffusion_model.unpatchify", sparse_unpatchify)
