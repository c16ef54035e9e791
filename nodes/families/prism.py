"""Prism (comfy/ldm/prism/model.py, Prism, newest ComfyUI: Tencent Hunyuan's image-to-video with audio).

ComfyUI samples the Wan 2.1 video latent and a 128-channel audio latent as one latent of two parts (Prism Prepare
AV's NestedTensor, packed flat while sampling); the engine takes its tokens from the video part (sparse_patch.py).
The reference image enters by channel concat, so the video's tokens are the latent's. The forward runs one of two
video towers (Wan-like blocks: self-attention over the video's tokens with 3-D RoPE, cross-attention to the text, a
feed-forward, modulated per video; the high-noise tower above `boundary_ratio`, the low-noise one below) beside an
audio tower; in the first blocks, fused pairs, two conditioners join them before each pair: the video's queries
attend to the audio's tokens, the audio's queries to the video's (both with a rotary "bridge" over time). The adapter
hooks modules, never the forward's code:
- each video tower's `patchify` gathers the running tokens (so every later use of the video's tokens gets only
  those); each video block gets their RoPE rows, each conditioner their bridge rows;
- the audio always runs, every token of it: its self-attention and the text cross-attentions pass the K/V cache by,
  and so does the video's attention to the audio (its keys are the audio's, complete as they are);
- the audio's attention to the video is a layer of the K/V cache of its own, as LTX-2's (ltx2.py): a sparse step
  after a dense one leaves the audio exact too;
- the video tower's head is per token: its output is scattered back to every token;
- the towers are two networks (`network`): the first forward below the boundary starts the low-noise tower's
  caches afresh, dense.
The video's RoPE table is one for the batch (the model rotates every row with it): a batch of several videos, each
with its own selection, is refused before sampling. Prism's own block-sparse attention over the whole video ("Prism
Sparse Attention Settings" other than dense) is refused by neighbours.py; the video blocks are told to attend densely
(an earlier form of the model used its block-sparse attention by default).
"""
import torch

from .base import (FamilyAdapter, gathered_freqs, image_keys_method, passthrough_method, patch_method,
                   patch_module_forward, runs_class_methods, shared_table_rows)

BATCH = ("Prism rotates every video of a batch with one RoPE table, while region-adaptive sampling picks each "
         "video's tokens on its own: sample a batch of one video (Prism Prepare AV makes one)")


class PrismFamily(FamilyAdapter):
    names = ("Prism",)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.prism.model", "Prism", ("forward",))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.video_dit.patch[-1])

    def takes_frames(self, diffusion_model) -> bool:
        return True

    def temporal_patch(self, diffusion_model) -> int:
        return int(diffusion_model.video_dit.patch[0])

    def refused_latent(self, diffusion_model, shape):
        return BATCH if shape[0] > 1 else None

    def network(self, diffusion_model, sigma):
        # the model's own choice, compared as it compares (model_base.Prism: its float32 sigma below the boundary runs
        # video_dit_2; at a sigma of float32(0.9) a comparison in float64 would say otherwise)
        low = bool(torch.tensor(sigma, dtype=torch.float32) < diffusion_model.boundary_ratio)
        return "low-noise" if low else "high-noise"

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        # one tower runs: each video block's self-attention (the video alone) and each fused pair's audio attention
        # to the video (the audio's width)
        video_blocks = len(diffusion_model.fusion_blocks) + len(diffusion_model.remaining_video_blocks)
        return ([(image_tokens, diffusion_model.video_dit.dim)] * video_blocks
                + [(image_tokens, diffusion_model.audio_dit.dim)] * len(diffusion_model.fusion_blocks))

    def install(self, patcher, slot) -> None:
        model = patcher.model.diffusion_model
        video_blocks = ([f"fusion_blocks.{i}.video_block" for i in range(len(model.fusion_blocks))]
                        + [f"remaining_video_blocks.{i}" for i in range(len(model.remaining_video_blocks))]
                        + [f"video_dit_2.blocks.{i}" for i in range(len(model.video_dit_2.blocks))])
        for tower in ("video_dit", "video_dit_2"):
            patch_method(patcher, slot, f"diffusion_model.{tower}.patchify", after=_gather_video)
            patch_module_forward(patcher, slot, f"diffusion_model.{tower}.head",
                                 after=lambda call, out: call.scatter(out))
        for block in video_blocks:
            patch_method(patcher, slot, f"diffusion_model.{block}.forward", before=_video_block_inputs)
            passthrough_method(patcher, slot, f"diffusion_model.{block}.cross_attn.forward")
        for i in range(len(model.fusion_blocks)):
            fused = f"diffusion_model.fusion_blocks.{i}"
            patch_method(patcher, slot, f"{fused}.a2v_conditioner.forward", before=_video_bridge("x_freqs"))
            passthrough_method(patcher, slot, f"{fused}.a2v_conditioner.inner.forward")
            patch_method(patcher, slot, f"{fused}.v2a_conditioner.forward", before=_video_bridge("context_freqs"))
            image_keys_method(patcher, slot, f"{fused}.v2a_conditioner.inner.forward")
            for attention in ("self_attn", "cross_attn"):
                passthrough_method(patcher, slot, f"{fused}.audio_block.{attention}.forward")


def _gather_video(call, out):
    """(the video's tokens, grid) -> the running tokens (dense: unchanged, but counted); the self-attention is over
    them alone."""
    tokens, grid = out
    call.image_first = True
    return call.gather(tokens), grid


def _video_block_inputs(call, arguments) -> None:
    # the model's own block-sparse attention (an earlier form of the model, Comfy-Org c4b595b, ran it by default;
    # chosen by a node it is refused before sampling) would pass the K/V cache by: the block's attention is dense
    arguments["sparse"] = False
    if not call.dense:      # (tokens, 1, .): one table for the batch
        arguments["freqs"] = shared_table_rows(call, arguments["freqs"], BATCH)


def _video_bridge(name: str):
    """A conditioner's `name` argument, the video's bridge RoPE ((1, tokens, 128) cosines and sines) -> the running
    tokens' rows."""
    def gather(call, arguments) -> None:
        if not call.dense:
            arguments[name] = tuple(gathered_freqs(call, table, prefix=0) for table in arguments[name])
    return gather
