"""Lens (comfy/ldm/lens/model.py, LensTransformer2DModel; newer ComfyUI: Microsoft's dual-stream MMDiT).

Its latent is one token per latent pixel (Flux 2's packed 128 channels). The forward embeds the tokens (`img_in`),
builds RoPE from [image ids | text ids] (`pos_embed`), runs dual-stream blocks (joint attention over [image | text]
with a mask over the prompt's padding, built for the whole sequence) and a per-token output (`proj_out`). The adapter
hooks modules, never the forward's code:
- `img_in`'s input: the image tokens are gathered; attention is image first;
- `pos_embed`'s input: the image part of the ids is gathered;
- every block gets the mask's columns for the running tokens (the model checks its length; the image columns are all
  alike, which the engine extends over the cached keys);
- `proj_out`'s output is scattered back to every token.
"""
import torch

from .base import FamilyAdapter, gather_image_first, patch_method, patch_module_forward, runs_class_methods


class LensFamily(FamilyAdapter):
    names = ("Lens",)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.lens.model", "LensTransformer2DModel",
                                  ("forward", "_forward", "_build_joint_attention_mask"))

    def patch_size(self, diffusion_model) -> int:
        return 1                # a token per latent pixel (the model's `patch_size` is the autoencoder's packing)

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        return [(image_tokens + text_tokens, diffusion_model.inner_dim)] * len(diffusion_model.transformer_blocks)

    def install(self, patcher, slot) -> None:
        patch_module_forward(patcher, slot, "diffusion_model.img_in", before=gather_image_first)
        patch_module_forward(patcher, slot, "diffusion_model.pos_embed", before=_gather_image_ids)
        for i in range(len(patcher.model.diffusion_model.transformer_blocks)):
            patch_method(patcher, slot, f"diffusion_model.transformer_blocks.{i}.forward", before=_mask_columns,
                         graph=True)
        patch_module_forward(patcher, slot, "diffusion_model.proj_out", after=lambda call, out: call.scatter(out))


def _gather_image_ids(call, ids):
    """(1, image + text, 3) -> (rows, running image + text, 3)."""
    if call.dense:
        return ids
    rows = call.image_index_now().shape[0]
    grid = call.grid_tokens
    ids = ids.expand(rows, -1, -1)
    return torch.cat([call.gather_grid(ids[:, :grid]), ids[:, grid:]], dim=1)


def _mask_columns(call, arguments) -> None:
    """(batch, 1, 1, image + text) additive mask -> its columns for [running image | text]."""
    mask = arguments.get("attention_mask")
    if mask is None or call.dense:
        return
    key = ("lens mask", mask.data_ptr(), tuple(mask.shape))
    if key not in call.scratch:
        grid = call.grid_tokens
        image = mask[..., :1].expand(*mask.shape[:-1], call.image_rows)
        call.scratch[key] = torch.cat([image, mask[..., grid:]], dim=-1)
    arguments["attention_mask"] = call.scratch[key]
