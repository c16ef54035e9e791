"""HiDream-I1 and E1 (comfy/ldm/hidream/model.py, HiDreamImageTransformer2DModel).

`_forward` patchifies the latent into tokens over (rows, cols), embeds them per token (`x_embedder`), builds RoPE
for [image | text] (`pe_embedder`), runs double-stream blocks (joint attention over [image | text], where each block
gets the T5 and last Llama layer's tokens carried along and one Llama layer's tokens of its own) and single-stream
blocks over [image | text], with a mixture-of-experts feed-forward routed per token, and a per-token final layer.
The adapter hooks modules, never that function's code:
- `x_embedder`'s output: the image tokens are gathered; attention is image first;
- `pe_embedder`'s output: the image part of RoPE is gathered, the text part stays;
- the final layer's output is scattered back to every token before `unpatchify`.
HiDream-E1 concatenates the image to edit (`image_cond`) beside the latent, so each row of tokens is the latent's
row and then the edit image's: the tokens (and their RoPE rows) are put in the engine's order, the latent's grid and
then the edit image's tokens (which run on every step), before they are gathered, and the final layer's output is
put back in the model's order.
"""
import torch

from .base import FamilyAdapter, patch_module_forward, runs_class_methods


class HiDreamFamily(FamilyAdapter):
    names = ("HiDream-I1", "HiDream-E1")

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

    def sequence_references(self, diffusion_model, values):
        edit = values.get("concat_latent_image")        # HiDream-E1's image to edit: as many tokens as the latent
        return [] if edit is None else [edit]

    def install(self, patcher, slot) -> None:
        patch_module_forward(patcher, slot, "diffusion_model.x_embedder", after=_gather_image_tokens)
        patch_module_forward(patcher, slot, "diffusion_model.pe_embedder", after=_gather_image_rope)
        patch_module_forward(patcher, slot, "diffusion_model.final_layer", after=_scatter_output)


IMAGE_TOKENS = ("hidream", "image tokens")       # a per-forward layout key: the model's image tokens (E1: both images')


def _gather_image_tokens(call, tokens):
    call.image_first = True
    call.layout[IMAGE_TOKENS] = tokens.shape[1]
    return call.gather(_in_engine_order(call, tokens))     # dense: unchanged (but for E1's order), and counted


def _gather_image_rope(call, rope):
    """(batch, image + text, 1, head_dim / 2, 2, 2) -> the running image tokens' rows, then the text's."""
    image = call.layout[IMAGE_TOKENS]
    return torch.cat([call.gather(_in_engine_order(call, rope[:, :image])), rope[:, image:]], dim=1)


def _scatter_output(call, out):
    full = call.scatter(out)
    order = _engine_order(call, full.shape[1], full.device)
    return full if order is None else torch.empty_like(full).index_copy_(1, order, full)


def _in_engine_order(call, tokens):
    order = _engine_order(call, tokens.shape[1], tokens.device)
    return tokens if order is None else tokens.index_select(1, order)


def _engine_order(call, image_tokens: int, device):
    """Where the engine's tokens are in the model's image sequence: None where that is the latent's grid alone
    (HiDream-I1); HiDream-E1's rows of [latent | edit image] side by side -> the latent's grid, then the edit image's
    tokens (row by row)."""
    if image_tokens == call.grid_tokens:
        return None
    key = ("hidream order", image_tokens, device)
    if key not in call.scratch:
        rows, cols = call.grid
        position = torch.arange(image_tokens, device=device).view(rows, image_tokens // rows)
        call.scratch[key] = torch.cat([position[:, :cols].flatten(), position[:, cols:].flatten()])
    return call.scratch[key]
