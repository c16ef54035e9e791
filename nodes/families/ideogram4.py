"""Ideogram 4 (comfy/ldm/ideogram4/model.py, Ideogram4Transformer2DModel; newer ComfyUI).

Its latent is already one token per latent pixel (a 2x2 patch of the autoencoder's 32 channels packed into 128), so
the token grid is the latent's. The forward packs [text | image] into one sequence (the unconditional pass may be
the image alone), embeds it per token, and runs single-stream blocks (attention with Qwen3-VL's interleaved 3-axis
RoPE, a block-diagonal mask that keeps the prompt's padding apart, modulated per image) and a per-token final layer.
The adapter hooks modules, never the forward's code:
- the first block gathers the image tokens (the text comes first); every block gets their RoPE rows (the engine's
  attention fits the model's mask, built for the whole sequence, to the running queries and the cached keys);
- the final layer's output gets every image token's row back: the running ones computed, the others from the policy.
"""
from .base import (FamilyAdapter, gather_image_after, gathered_freqs, patch_method, runs_class_methods,
                   scatter_image_after_prefix)


class Ideogram4Family(FamilyAdapter):
    names = ("Ideogram 4",)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.ideogram4.model", "Ideogram4Transformer2DModel",
                                  ("forward", "_forward", "_backbone", "_run_conditional", "_run_image_only"))

    def patch_size(self, diffusion_model) -> int:
        return 1                # a token per latent pixel (the model's `patch_size` is the autoencoder's packing)

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        width = diffusion_model.input_proj.weight.shape[0]
        return [(text_tokens + image_tokens, width)] * len(diffusion_model.layers)

    def install(self, patcher, slot) -> None:
        for i in range(len(patcher.model.diffusion_model.layers)):
            patch_method(patcher, slot, f"diffusion_model.layers.{i}.forward", before=_gather_block_inputs,
                         graph=True)
        patch_method(patcher, slot, "diffusion_model.final_layer.forward",
                     after=lambda call, out: scatter_image_after_prefix(call, out))


def _gather_block_inputs(call, arguments) -> None:
    if call.image_rows is None:                     # the first block: [text | image], the text maybe empty
        arguments["x"] = gather_image_after(call, arguments["x"], arguments["x"].shape[1] - call.grid_tokens)
    if call.dense:
        return
    text = arguments["x"].shape[1] - call.image_rows
    arguments["freqs_cis"] = gathered_freqs(call, arguments["freqs_cis"], prefix=text)   # (1, tokens, 1, ., 2, 2)
