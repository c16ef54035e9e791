"""Krea 2 (comfy/ldm/krea2/model.py, SingleStreamDiT; newer ComfyUI).

The forward patchifies the latent into tokens over (rows, cols), puts the tokens of any reference latents after
them, embeds them per token (`first`), runs a text-fusion transformer over the prompt alone, then single-stream
blocks over [text | image | references] (joint attention with 3-axis RoPE, modulated per image; reference tokens
from `index_timestep_zero` are modulated with timestep 0 from a position on) and a per-token last layer. The adapter
hooks modules, never the forward's code:
- the first block gathers the image tokens (the model says where they start: `img_slice`); every block gets their
  RoPE rows and, where references take timestep 0, where those start in the gathered sequence;
- the last layer's output (over [text | running image | references]) gets every image token's row back: the running
  ones computed, the others from the policy.
References always run (the engine keeps tokens after the grid on every step). ComfyUI's Flux KV Cache takes them
out of the sequence before the first block once it keeps their keys: the gather counts them still (the RoPE table
says how many), and the engine finds their kept keys in attention (ForwardCall.dropped_extras).
"""
from ..neighbours import FLUX_KV_CACHE_PATCH
from .base import (FamilyAdapter, gather_image_after, gathered_freqs, patch_method, reference_latents,
                   runs_class_methods, scatter_image_after_prefix)


class Krea2Family(FamilyAdapter):
    names = ("Krea 2",)
    handled_patches = (FLUX_KV_CACHE_PATCH,)    # the references it takes out are counted at the gather

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.krea2.model", "SingleStreamDiT",
                                  ("forward", "_forward", "process_img"))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch)

    def sequence_references(self, diffusion_model, values):
        return reference_latents(values)

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        width = diffusion_model.first.weight.shape[0]
        return [(text_tokens + image_tokens, width)] * len(diffusion_model.blocks)

    def install(self, patcher, slot) -> None:
        for i in range(len(patcher.model.diffusion_model.blocks)):
            patch_method(patcher, slot, f"diffusion_model.blocks.{i}.forward", before=_gather_block_inputs, graph=True)
        patch_method(patcher, slot, "diffusion_model.last.forward",
                     after=lambda call, out: scatter_image_after_prefix(call, out))


def _gather_block_inputs(call, arguments) -> None:
    text = (arguments.get("transformer_options") or {}).get("img_slice", [None])[0]
    if call.image_rows is None:                     # the first block
        if text is None:
            raise NotImplementedError("Krea 2: this ComfyUI does not say where the image tokens start (img_slice); "
                                      "sample it with KSampler")
        # the RoPE table covers the sequence as the model laid it out: longer where the Flux KV Cache took the
        # references out after that
        dropped = arguments["freqs"].shape[2] - arguments["x"].shape[1]
        arguments["x"] = gather_image_after(call, arguments["x"], text, dropped)
    if call.dense:
        return
    freqs = arguments["freqs"]                      # (batch | 1, 1, text + image, ., 2, 2)
    arguments["freqs"] = gathered_freqs(call, freqs[:, 0], prefix=text)[:, None]
    zero = arguments.get("timestep_zero_index")
    if zero is not None:                            # where the references start, after the text
        arguments["timestep_zero_index"] = text + call.position_after_gather(int(zero) - text)
