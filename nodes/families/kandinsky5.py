"""Kandinsky 5 (comfy/ldm/kandinsky5/model.py, Kandinsky5; newer ComfyUI): video (T2V, I2V) and image models.

`forward_orig` runs text blocks over the prompt alone, embeds the video with a 3-D patch embedding into tokens
over (frames, rows, cols) and flattens them, runs visual blocks (self-attention over the video tokens with 3-D RoPE,
cross-attention to the text, a feed-forward, modulated per video), reshapes the tokens back to the grid and maps
them to the latent in one per-token layer (`out_layer`), which also unpatchifies. The adapter hooks modules, never
that function's code:
- the first visual block that runs gathers the video tokens; every visual block gets their RoPE frequencies;
- cross-attention passes the K/V cache by (its keys are the text, complete as they are);
- the last visual block hands back every token's row (the running ones computed, the others zero) so the model's
  reshape to the grid holds; the output layer's result is cut back into tokens, the running ones kept and the
  others filled from the policy (`scatter`), and put back together. Another node replacing that last block (Skip
  Layer Guidance skipping it) gets a clear error.
The text blocks' attention runs before the gather: the model's own, untouched. Newer ComfyUI's Kandinsky 5 attends
sparsely on videos of more than 40 latent frames (NABLA, over tokens in an order of its own): such a video is refused by
the sampler nodes and left to the model under a Model Patch node (`samples_alone`).
"""
import torch

from ..comfy_compat import kandinsky5_attends_sparsely
from .base import (VideoFamilyAdapter, every_token_row, gathered_freqs, passthrough_method, patch_method,
                   patch_module_forward, runs_class_methods, scatter_video_output)


# Kandinsky5.forward_orig's NABLA_THR (newer ComfyUI, read in the index at comfyanonymous 0c84b76): on videos of more
# latent frames its visual blocks attend sparsely over their own token order
NABLA_FRAMES = 40
NABLA = ("Kandinsky 5 attends sparsely (its NABLA attention, over tokens in an order of its own) on videos of more than "
         f"{NABLA_FRAMES} latent frames ({4 * NABLA_FRAMES + 1} frames, about 10 seconds), which region-adaptive sampling "
         f"cannot follow: use at most {NABLA_FRAMES} latent frames, or sample with KSampler")


class Kandinsky5Family(VideoFamilyAdapter):
    names = ("Kandinsky 5",)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.kandinsky5.model", "Kandinsky5",
                                  ("forward_orig", "_forward", "forward"))

    def samples_alone(self, diffusion_model, shape):
        long = len(shape) == 5 and shape[2] // self.temporal_patch(diffusion_model) > NABLA_FRAMES
        return NABLA if long and kandinsky5_attends_sparsely(diffusion_model) else None

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        return [(image_tokens, diffusion_model.model_dim)] * len(diffusion_model.visual_transformer_blocks)

    def install(self, patcher, slot) -> None:
        blocks = len(patcher.model.diffusion_model.visual_transformer_blocks)
        for i in range(blocks):
            patch_method(patcher, slot, f"diffusion_model.visual_transformer_blocks.{i}.forward",
                         before=gather_visual_block_inputs, after=every_token_row if i == blocks - 1 else None,
                         graph=True)
            passthrough_method(patcher, slot, f"diffusion_model.visual_transformer_blocks.{i}.cross_attention.forward")
        patch_module_forward(patcher, slot, "diffusion_model.visual_embeddings", after=_note_grid)
        patch_module_forward(patcher, slot, "diffusion_model.out_layer", after=_scatter_output)


GRID = ("kandinsky5", "token grid")      # a per-forward layout key: (frames, rows, cols) of the embedded video


def _note_grid(call, embedded: torch.Tensor) -> torch.Tensor:
    call.layout[GRID] = tuple(embedded.shape[1:4])      # (batch, frames, rows, cols, channels)
    return embedded


LAST_BLOCK_REPLACED = ("another node replaces Kandinsky 5's last visual block (e.g. Skip Layer Guidance skipping it), "
                       "which region-adaptive sampling needs to run: choose other layers, or sample with KSampler")


def gather_visual_block_inputs(call, arguments, rope: str = "freqs", last_block_replaced: str = LAST_BLOCK_REPLACED):
    """A visual block's arguments (Kandinsky 5's, and Kandinsky 6's fused blocks'): the first that runs gathers the video
    tokens (`visual_embed`), refusing where another node replaces the last block (which hands the model every token's
    row); every block gets their rows of the RoPE frequencies (`rope`)."""
    if arguments.get("sparse_params") is not None:  # the model's own sparse attention (a threshold other than ours)
        raise NotImplementedError(NABLA)
    if call.image_rows is None:                     # the first visual block that runs
        options = arguments.get("transformer_options") or {}
        last = options.get("total_blocks", 0) - 1
        if not call.dense and ("double_block", last) in options.get("patches_replace", {}).get("dit", {}):
            raise NotImplementedError(last_block_replaced)
        arguments["visual_embed"] = call.gather(arguments["visual_embed"])    # dense: unchanged, but counted
    if not call.dense:
        arguments[rope] = gathered_freqs(call, arguments[rope], prefix=0)


def _scatter_output(call, out: torch.Tensor) -> torch.Tensor:
    return scatter_video_output(call, out, call.layout[GRID])
