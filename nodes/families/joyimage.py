"""JoyImage (comfy/ldm/joyimage/model.py, JoyImageTransformer3DModel; newer ComfyUI: JD's JoyAI-Image and its edit
model).

The forward embeds the latent (one frame of Wan 2.1's 5-D latent) and each reference latent with a 3-D patch
embedding, puts the references' tokens after the image's, runs double-stream blocks (joint attention over [image |
text] with 3-axis RoPE, each component with its own frame position, modulated per image), keeps the first rows (the
image's) and maps them per token to the latent (`proj_out`). The adapter hooks modules, never the forward's code:
- the first block that runs gathers the image tokens (references follow and always run); attention is image first;
  every block gets their RoPE rows;
- the last block hands back every image token's row (the skipped ones zero) before the model keeps the image's rows;
  `proj_out`'s output keeps the running tokens' rows and the others come from the policy. Another node replacing
  that last block (Skip Layer Guidance skipping it) gets a clear error.
"""
from .base import (FamilyAdapter, every_token_row, gathered_freqs, patch_method, patch_module_forward,
                   reference_latents, runs_class_methods, scatter_every_row)

LAST_BLOCK_REPLACED = ("another node replaces JoyImage's last block (e.g. Skip Layer Guidance skipping it), which "
                       "region-adaptive sampling needs to run: choose other layers, or sample with KSampler")


class JoyImageFamily(FamilyAdapter):
    names = ("JoyImage",)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.joyimage.model", "JoyImageTransformer3DModel",
                                  ("forward", "_forward", "unpatchify"))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size[-1])

    def temporal_patch(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size[0])

    def sequence_references(self, diffusion_model, values):
        return reference_latents(values)

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        width = diffusion_model.proj_out.weight.shape[1]
        return [(image_tokens + text_tokens, width)] * len(diffusion_model.double_blocks)

    def install(self, patcher, slot) -> None:
        blocks = len(patcher.model.diffusion_model.double_blocks)
        for i in range(blocks):
            patch_method(patcher, slot, f"diffusion_model.double_blocks.{i}.forward", before=_gather_block_inputs,
                         after=_every_image_row if i == blocks - 1 else None, graph=True)
        patch_module_forward(patcher, slot, "diffusion_model.proj_out", after=scatter_every_row)


def _gather_block_inputs(call, arguments) -> None:
    if call.image_rows is None:                     # the first block that runs
        options = arguments.get("transformer_options") or {}
        last = options.get("total_blocks", 0) - 1
        if not call.dense and ("double_block", last) in options.get("patches_replace", {}).get("dit", {}):
            raise NotImplementedError(LAST_BLOCK_REPLACED)
        call.image_first = True
        arguments["hidden_states"] = call.gather(arguments["hidden_states"])   # dense: unchanged, but counted
    if not call.dense:
        arguments["image_rotary_emb"] = gathered_freqs(call, arguments["image_rotary_emb"], prefix=0)


def _every_image_row(call, out):
    """(image, text) -> the image's sequence back at full length: the running tokens' rows in place, the skipped
    ones zero (the model keeps the image's rows by position; the zero rows' outputs are not used)."""
    image, text = out
    return every_token_row(call, image), text
