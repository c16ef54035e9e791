"""HiDream-I1 (comfy/ldm/hidream/model.py, HiDreamImageTransformer2DModel).

`_forward` patchifies the latent into tokens over (rows, cols), embeds them per token (`x_embedder`), builds RoPE
for [image | text] (`pe_embedder`), runs double-stream blocks (joint attention over [image | text], where each block
gets the T5 and last Llama layer's tokens carried along and one Llama layer's tokens of its own) and single-stream
blocks over [image | text], with a mixture-of-experts feed-forward routed per token, and a per-token final layer.
The adapter hooks modules, never that function's code:
- `x_embedder`'s output: the image tokens are gathered; attention is image first;
- `pe_embedder`'s output: the image part of RoPE is gathered, the text part stays;
- the final layer's output is scattered back to every token before `unpatchify`.
HiDream-E1 (an edit image concatenated beside the latent, `image_cond`) puts its tokens inside every row of the
grid: not covered (a clear error).
"""
import torch

from .base import FamilyAdapter, patch_module_forward, runs_class_methods

EDIT = ("HiDream-E1 (an edit image beside the latent) is not supported by region-adaptive sampling; sample it with "
        "KSampler")


class HiDreamFamily(FamilyAdapter):
    names = ("HiDream-I1",)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.hidream.model", "HiDreamImageTransformer2DModel",
                                  ("forward", "_forward"))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size)

    def prompt_tokens(self, base_model, tokens, values):
        """Each block's text: the T5 tokens and the last Llama layer's (carried through the double-stream
        blocks), and one Llama layer's of the block's own."""
        llama = values.get("conditioning_llama3")
        return tokens + 2 * int(llama.shape[2]) if llama is not None else tokens

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        blocks = len(diffusion_model.double_stream_blocks) + len(diffusion_model.single_stream_blocks)
        return [(image_tokens + text_tokens, diffusion_model.inner_dim)] * blocks

    def refused_conditioning(self, diffusion_model, values: dict):
        return EDIT if values.get("concat_latent_image") is not None else None

    def install(self, patcher, slot) -> None:
        patch_module_forward(patcher, slot, "diffusion_model.x_embedder", after=_gather_image_tokens)
        patch_module_forward(patcher, slot, "diffusion_model.pe_embedder", after=_gather_image_rope)
        patch_module_forward(patcher, slot, "diffusion_model.final_layer", after=lambda call, out: call.scatter(out))


def _gather_image_tokens(call, tokens):
    if tokens.shape[1] != call.grid_tokens:         # HiDream-E1: the edit image's tokens inside every row
        raise NotImplementedError(EDIT)
    call.image_first = True
    return call.gather(tokens)                      # dense: unchanged, but counted


def _gather_image_rope(call, rope):
    """(batch, image + text, 1, head_dim / 2, 2, 2) -> the running image tokens' rows, then the text's."""
    if call.dense:
        return rope
    grid = call.grid_tokens
    return torch.cat([call.gather_grid(rope[:, :grid]), rope[:, grid:]], dim=1)
