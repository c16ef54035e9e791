"""LTX-Video (comfy/ldm/lightricks/model.py, LTXVModel): text-to-video, image-to-video, keyframe guides.

The forward patchifies the latent into tokens over (frames, rows, cols) (one latent voxel each), embeds them per token
(`patchify_proj`), runs blocks (self-attention over the video tokens with 3-D RoPE, cross-attention to the text, a
feed-forward, each modulated per video or, where a noise mask gives tokens their own timestep, per token), then a
per-token output (`norm_out`, a modulation, `proj_out`) and unpatchifies. The adapter hooks modules, never that code:
- the first block that runs gathers the video tokens; every block gets their RoPE rows and, per token, their
  modulation;
- cross-attention passes the K/V cache by (its keys are the text, complete as they are);
- each block may replay from a CUDA graph of its own (LTX-Video's latent is small: 768 x 512 x 97 frames is 4,992
  tokens, under SDIT_GRAPH_MAX_TOKENS);
- `norm_out` gets every token's row (the running ones computed, the others zero) so the model's per-token modulation
  of the output lines up; `proj_out`'s result keeps the running tokens' rows and the others come from the policy.
Image-to-video (LTXVImgToVideo) and keyframe guides (LTXVAddGuide: the guide's frames follow the video's in the
latent) give tokens a noise mask of 0: they are never picked on a sparse step (the sampler keeps them) and their keys
stay in the K/V cache. A guide whose attention newer ComfyUI scales by position (strength other than 1, a pixel mask:
a guide attention mask) gets the block's self-attention restated around the engine (ltxv_guide_attention.py). A guide
that the model filters (an IC-LoRA reference at reduced resolution) changes the sequence: not covered (a clear
error). LTX-2 (LTXAVModel, with its audio stream) is another model.
"""
import math

import torch

from ..comfy_compat import ltxv_guide_attention_mask
from .base import (FamilyAdapter, every_token_row, gathered_freqs, passthrough_method, patch_method,
                   patch_module_forward, runs_class_methods, scatter_every_row)
from .ltxv_guide_attention import install_guided_self_attention

FILTERED = ("an LTX-Video guide whose tokens the model filters (an IC-LoRA reference at reduced resolution) is not "
            "supported by region-adaptive sampling; sample it with KSampler")
SCALED = ("an LTX-Video self-attention mask other than a guide's is not supported by region-adaptive sampling; "
          "sample with KSampler")


class LTXVFamily(FamilyAdapter):
    names = ("LTX-Video",)

    def matches(self, diffusion_model) -> bool:
        # newer ComfyUI splits the forward into steps, which LTX-2 (LTXAVModel) overrides: another model
        return runs_class_methods(diffusion_model, "comfy.ldm.lightricks.model", "LTXVModel",
                                  ("forward", "_forward", "_process_input", "_process_transformer_blocks",
                                   "_process_output"))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patchifier.patch_size[-1])

    def takes_frames(self, diffusion_model) -> bool:
        return True

    def temporal_patch(self, diffusion_model) -> int:
        return int(diffusion_model.patchifier.patch_size[0])

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        return [(image_tokens, diffusion_model.inner_dim)] * len(diffusion_model.transformer_blocks)

    def refused_conditioning(self, diffusion_model, values: dict):
        for guide in values.get("guide_attention_entries") or ():
            if guide.get("latent_shape") and math.prod(guide["latent_shape"]) != guide.get("pre_filter_count"):
                return FILTERED
        return None

    def install(self, patcher, slot) -> None:
        for i in range(len(patcher.model.diffusion_model.transformer_blocks)):
            patch_method(patcher, slot, f"diffusion_model.transformer_blocks.{i}.forward", before=_gather_block_inputs,
                         graph=True)
            passthrough_method(patcher, slot, f"diffusion_model.transformer_blocks.{i}.attn2.forward")
            install_guided_self_attention(patcher, slot, f"diffusion_model.transformer_blocks.{i}", self.names[0],
                                          check=i == 0)
        # the output's modulation may be per token: it gets every token's row (the skipped ones zero)
        patch_module_forward(patcher, slot, "diffusion_model.norm_out", before=every_token_row)
        patch_module_forward(patcher, slot, "diffusion_model.proj_out", after=scatter_every_row)


def _gather_block_inputs(call, arguments) -> None:
    arguments["x"] = gathered_at_first_block(call, arguments["x"], arguments)
    if call.dense:
        return
    arguments["pe"] = gathered_rope(call, arguments["pe"])
    timestep = arguments["timestep"]
    if timestep.shape[1] != 1:          # per token (a noise mask): (batch, tokens, modulation)
        arguments["timestep"] = memo_per_forward(call, timestep, lambda: call.gather_grid(timestep))


def gathered_at_first_block(call, video, arguments):
    """The video's tokens as a block gets them: gathered at the first block that runs (dense: unchanged, but counted),
    where guides the model filters or scales by position are refused."""
    if call.image_rows is not None:
        return video
    if video.shape[1] != call.grid_tokens:
        raise NotImplementedError(FILTERED)
    mask = arguments.get("self_attention_mask")
    if mask is not None:
        if not isinstance(mask, ltxv_guide_attention_mask() or ()):
            raise NotImplementedError(SCALED)
        call.stays_eager = True         # the guide's split reads the running positions on the host
    return call.gather(video)


def gathered_rope(call, pe):
    """Newer ComfyUI: (rotations (batch, tokens, heads, ., 2, 2), split flag); older: (batch, 1, tokens, ., 2, 2)."""
    if isinstance(pe, tuple):
        return (gathered_freqs(call, pe[0], prefix=0),) + tuple(pe[1:])
    return memo_per_forward(call, pe, lambda: gathered_freqs(call, pe[:, 0], prefix=0)[:, None])


def memo_per_forward(call, tensor: torch.Tensor, make):
    """Computed once per forward: every block gets the same tensor."""
    key = ("ltxv", tensor.data_ptr(), tuple(tensor.shape))
    if key not in call.scratch:
        call.scratch[key] = make()
    return call.scratch[key]
