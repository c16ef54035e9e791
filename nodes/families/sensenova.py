"""SenseNova U1.5 (comfy/ldm/sensenova/model.py, SenseNovaU15; newer ComfyUI): a pixel-space image generator on a
language model, its layers with a second set of weights for the image (mixture of transformers).

The prompt (with reference images' tokens spliced in, and the model's own thinking where asked) runs through the
language weights once per sampling run, in the model's conditioning: each layer's keys and values of it come to
the forward as conditions. Each step the RGB image is embedded as one token per 32 x 32 patch, and every layer's
generation weights run the image's tokens, whose attention reads [prompt's keys | image's keys] (3-axis RoPE over
time, row and column). A 3x3-convolution head decodes the whole token grid into the clean image, which the model
turns into a velocity. The adapter hooks modules, never the forward's code:
- the generation vision model's output: the running patches' tokens; the engine is told a layer's queries are the
  keys' last rows (the prompt's keys come first);
- every layer's generation pass gets the running tokens' RoPE rows, and may replay from a CUDA graph of its own (the
  prompt's keys and values copied into its static buffers); its prompt pass and thinking's decoding (they run in the
  forward where hooks keep the prompt from being precomputed) attend past the K/V cache;
- the final norm gets every token's hidden state: the running ones computed, the others as last computed in this
  stream (as Chroma Radiance's convolution head: a running patch beside a skipped one sees its neighbour's latest
  features, exact right after a dense step);
- the head's clean image: the running patches kept, the others from the policy (reused or extrapolated predictions).
"""
import sys

from .base import (FamilyAdapter, every_token_carried, gathered_freqs, passthrough_method, patch_method,
                   patch_module_forward, runs_class_methods, scatter_pixel_patches)

_MODULE = "comfy.ldm.sensenova.model"
_HIDDEN = ("sensenova", "hidden")           # the stream's every-token hidden states, as last computed


class SenseNovaFamily(FamilyAdapter):
    names = ("SenseNova U1.5",)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, _MODULE, "SenseNovaU15", ("forward", "_forward"))

    def patch_size(self, diffusion_model) -> int:
        return int(_model_module(diffusion_model).MERGED_PATCH_SIZE)

    def prompt_tokens(self, base_model, tokens, values):
        """The prefix the model builds from the prompt: its tokens with the reference images' spliced in (an
        image-only prompt for the negative), and up to the thinking budget where thinking is on, as ComfyUI's own
        estimate counts it (the prefix's keys, one layer's worth per layer and token, or the prompt's mask)."""
        shapes = base_model.extra_conds_shapes(**values)
        if "prefix_keys" in shapes:
            sizes = _model_module(base_model.diffusion_model)
            return shapes["prefix_keys"][-1] // (sizes.NUM_LAYERS * sizes.HEAD_DIM)
        return shapes["prefix_mask"][-1] if "prefix_mask" in shapes else tokens

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        layers = diffusion_model.language_model.model.layers
        return [(text_tokens + image_tokens, layers[0].self_attn.k_proj_mot_gen.weight.shape[0])] * len(layers)

    def install(self, patcher, slot) -> None:
        patch_module_forward(patcher, slot, "diffusion_model.fm_modules.vision_model_mot_gen", after=_gather_tokens)
        for i in range(len(patcher.model.diffusion_model.language_model.model.layers)):
            layer = f"diffusion_model.language_model.model.layers.{i}"
            patch_method(patcher, slot, f"{layer}.forward_generation", before=_running_rope_rows, graph=True)
            passthrough_method(patcher, slot, f"{layer}.forward_prefix")
            passthrough_method(patcher, slot, f"{layer}.forward_decode")
        patch_module_forward(patcher, slot, "diffusion_model.language_model.model.norm_mot_gen", before=_every_token)
        patch = self.patch_size(patcher.model.diffusion_model)
        patch_module_forward(patcher, slot, "diffusion_model.fm_modules.fm_head",
                             after=lambda call, image: scatter_pixel_patches(call, image, patch))


def _model_module(diffusion_model):
    """The model's module: the class keeps its sizes there (module constants), not on the instance."""
    return sys.modules[type(diffusion_model).__module__]


def _gather_tokens(call, tokens):
    call.queries_end_keys = True            # a layer's keys: [prompt | image], its queries the image's
    return call.gather(tokens)


def _running_rope_rows(call, arguments) -> None:
    """Each axis's (cos, sin), (batch, 1, image tokens, channels) -> the running tokens' rows of each image."""
    if not call.dense:
        arguments["image_rope"] = tuple(tuple(gathered_freqs(call, table[:, 0], 0)[:, None] for table in axis)
                                        for axis in arguments["image_rope"])


def _every_token(call, hidden):
    return every_token_carried(call, hidden, _HIDDEN)
