"""HiDream-O1 (comfy/ldm/hidream_o1/model.py, HiDreamO1Transformer; newer ComfyUI): a pixel-space DiT on a Qwen3-VL
language model.

The forward cuts the RGB image into 32 x 32 patches (the token grid), embeds them after the prompt's tokens (reference
images' patches follow the target's), and runs the language model's layers over [prompt | target | references] with
3-axis RoPE: the prompt's autoregressive part attends causally on its own, and the rest (the prompt's last token, the
image's patches) attends to every key in a second pass, the generation pass. The model keeps the autoregressive part's
keys and values between steps (its own prefix cache); then a layer's queries are the generation part alone and its
keys are the cached ones followed by theirs. The adapter hooks modules, never the forward's code:
- the first layer gathers the running patches (the image sequence is the last rows: the target's, then the
  references', which always run); every layer gets their RoPE rows; the engine is told a layer's queries may be the
  keys' last rows (its attention keeps the keys' layout);
- the final norm hands back every image row (the skipped ones zero) for the model's cut to the target's rows by its mask;
- the final layer's output gets every token's row back: the running ones computed, the others from the policy.
The final layer predicts the clean image per patch (the model turns it into a velocity): the policies reuse and
extrapolate that prediction for the skipped patches.
"""
from .base import (FamilyAdapter, every_image_row_after, gather_image_after, gathered_freqs, patch_method,
                   patch_module_forward, runs_class_methods, scatter_every_row)

_VISION = "hidream_o1 vision rows"          # call.layout: the image sequence's length (the patch embedder's rows)
_PREFIX = "hidream_o1 prefix"               # call.layout: the rows before it in the layers' input


class HiDreamO1Family(FamilyAdapter):
    names = ("HiDream-O1",)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.hidream_o1.model", "HiDreamO1Transformer",
                                  ("forward", "_forward"))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size)

    def refused_model(self, diffusion_model):
        if diffusion_model.language_model.norm is None:
            return ("HiDream-O1 without its language model's final norm is not supported by region-adaptive sampling: "
                    "sample it with KSampler")
        return None

    def sequence_reference_tokens(self, diffusion_model, values, tokens, image_shape):
        """HiDream-O1 Reference Images' images, each sized to the target by the model's own preparation: its 32-px
        patches after the target's, and its vision tower's tokens spliced into the prompt between a start and an
        end token."""
        images = values.get("reference_latents") or []
        if not images:
            return 0
        from comfy.ldm.hidream_o1.conditioning import prepare_ref_images
        prepared = prepare_ref_images(images, *image_shape[-2:], device="cpu", dtype=images[0].dtype)
        return (sum(rows * cols for rows, cols in prepared["per_ref_patch_grids"])
                + sum(vision + 2 for vision in prepared["per_ref_vit_tokens"]))

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        config = diffusion_model.text_config
        return ([(text_tokens + image_tokens, config.num_key_value_heads * config.head_dim)]
                * len(diffusion_model.language_model.layers))

    def install(self, patcher, slot) -> None:
        patch_module_forward(patcher, slot, "diffusion_model.x_embedder", after=_count_vision_rows)
        for i in range(len(patcher.model.diffusion_model.language_model.layers)):
            patch_method(patcher, slot, f"diffusion_model.language_model.layers.{i}.forward", before=_gather_layer_inputs)
        patch_module_forward(patcher, slot, "diffusion_model.language_model.norm", before=_every_image_row)
        patch_module_forward(patcher, slot, "diffusion_model.final_layer2", after=scatter_every_row)


def _count_vision_rows(call, out):
    call.layout[_VISION] = out.shape[1]            # the target's patches, then the references'
    return out


def _gather_layer_inputs(call, arguments) -> None:
    if call.image_rows is None:                     # the first layer: [prompt | target | references]
        x = arguments["x"]
        call.layout[_PREFIX] = x.shape[1] - call.layout[_VISION]
        call.queries_end_keys = True                # the generation pass: queries the keys' last rows
        arguments["x"] = gather_image_after(call, x, call.layout[_PREFIX])
    if not call.dense:                              # (cos, sin, -sin), each (1, [1,] tokens, channels)
        arguments["freqs_cis"] = tuple(_running_rows(call, table) for table in arguments["freqs_cis"])


def _running_rows(call, table):
    """A RoPE table over [prefix | image sequence] -> over [prefix | running image tokens], per row of the batch (each
    may run other tokens): (batch, 1, tokens, channels), broadcast over the heads."""
    rows = table if table.ndim == 3 else table[:, 0]
    return gathered_freqs(call, rows, call.layout[_PREFIX])[:, None]


def _every_image_row(call, x):
    return every_image_row_after(call, x, call.layout[_PREFIX])
