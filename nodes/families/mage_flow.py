"""Mage-Flow (comfy/ldm/mage_flow/model.py, MageFlowTransformer2DModel; newer ComfyUI).

Qwen-Image's double-stream blocks at one token per latent pixel: the forward takes the latent's pixels as tokens,
puts any reference latents' tokens after them, embeds them per token (`img_in`), builds RoPE from [text ids | image
ids] (`pe_embedder`; the text unrotated), runs the blocks (joint attention over [text | image]) and projects back per
token (`proj_out`). The adapter hooks those per-token modules, never the forward's code:
- `img_in`'s input: the image tokens are gathered (references follow and always run);
- `pe_embedder`'s input: the image part of the ids is gathered;
- each block may replay from a CUDA graph of its own;
- `proj_out`'s output is scattered back to every token.
"""
import torch

from .base import FamilyAdapter, patch_method, patch_module_forward, reference_latents, runs_class_methods


class MageFlowFamily(FamilyAdapter):
    names = ("Mage-Flow",)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.mage_flow.model", "MageFlowTransformer2DModel",
                                  ("forward", "_forward", "process_img"))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size)

    def sequence_references(self, diffusion_model, values):
        return reference_latents(values)

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        return [(text_tokens + image_tokens, diffusion_model.inner_dim)] * len(diffusion_model.transformer_blocks)

    def install(self, patcher, slot) -> None:
        patch_module_forward(patcher, slot, "diffusion_model.img_in", before=lambda call, x: call.gather(x))
        patch_module_forward(patcher, slot, "diffusion_model.pe_embedder", before=_gather_image_ids)
        # the sparse part starts inside `_forward`: each block's sparse calls may replay from a CUDA graph of its own
        for i in range(len(patcher.model.diffusion_model.transformer_blocks)):
            patch_method(patcher, slot, f"diffusion_model.transformer_blocks.{i}.forward", graph=True)
        patch_module_forward(patcher, slot, "diffusion_model.proj_out", after=lambda call, out: call.scatter(out))


def _gather_image_ids(call, ids):
    """[text ids | image ids] (the image's after `img_in` gathered its tokens) -> [text ids | running image ids]."""
    if call.dense:
        return ids
    text = ids.shape[1] - call.image_sequence_length
    return torch.cat([ids[:, :text], call.gather_grid(ids[:, text:])], dim=1)
