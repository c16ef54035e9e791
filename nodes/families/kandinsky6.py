"""Kandinsky 6 (comfy/ldm/kandinsky6/model.py, Kandinsky6NativeAVDiT; newest ComfyUI): video with audio on Kandinsky 5's
blocks.

ComfyUI samples the video and audio latents as one latent of two parts (Kandinsky 6 Empty Latent's NestedTensor, packed
flat while sampling); the engine takes its tokens from the video part (sparse_patch.py). The model embeds the video
into tokens over (frames, rows, cols) (an image-to-video reference frame after the generated ones: in the latent,
kept by a noise mask, or appended by the model itself in another form of it) and the audio into its own sequence, runs
text blocks per stream, then fused blocks: each runs a Kandinsky 5 block per stream (self-attention with RoPE,
cross-attention to the text, a feed-forward, modulated per video) and two cross-attentions between them, the video's
queries to the audio's keys and the audio's queries to the video's. It reshapes the video's tokens to the grid for a
per-token output layer. The adapter hooks modules, never the forward's code:
- the first fused block that runs gathers the video's tokens; every block gets their RoPE rows (self-attention's, and
  the cross-attentions' where the model rotates them too);
- the audio always runs, every token of it: its self-attention and the text cross-attentions pass the K/V cache by,
  and so does the video's attention to the audio (its keys are the audio's, complete as they are);
- the audio's attention to the video is a layer of the K/V cache of its own, as LTX-2's (ltx2.py), so a sparse step
  after a dense one leaves the audio exact too; a form of the model that calls it without `transformer_options` is
  handed the engine's attention override;
- the last block hands back every video token's row (the skipped ones zero) for the model's reshape, and the model's
  video output is cut into tokens, the running ones kept and the others the policy's (`scatter`).
Its MagCache (a skip of every block decided by the model, `k6_magcache` in the options) would hand the output layer
rows of another step: refused with a clear error at the first forward, as is another node replacing the last block.
"""
from .base import (VideoFamilyAdapter, every_token_row, image_keys_method, passthrough_method, patch_method,
                   runs_class_methods, scatter_video_output)
from .kandinsky5 import gather_visual_block_inputs

# attention modules of a fused block that pass the K/V cache by: the video's text cross-attention, the audio's
# self-attention and text cross-attention, the video's attention to the audio
_PASSED_BY = ("videoT.cross_attention", "audioT.self_attention", "audioT.cross_attention", "va_cross_attention")

LAST_BLOCK_REPLACED = ("another node replaces Kandinsky 6's last fused block (e.g. Skip Layer Guidance skipping it), "
                       "which region-adaptive sampling needs to run: choose other layers, or sample with KSampler")
MAGCACHE = ("Kandinsky 6's MagCache is on (`k6_magcache`): it skips the blocks on steps of its own choosing, which "
            "region-adaptive sampling cannot follow: turn one of the two off")


class Kandinsky6Family(VideoFamilyAdapter):
    names = ("Kandinsky 6",)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.kandinsky6.model", "Kandinsky6NativeAVDiT",
                                  ("forward", "_forward", "_legacy_forward"))

    def sequence_references(self, diffusion_model, values: dict) -> list:
        # the form of the model that appends the image-to-video reference frame itself (`k6_reference`)
        reference = values.get("k6_reference")
        return [reference] if reference is not None else []

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        # per fused block: the video's self-attention, and the audio's attention to the video (the audio's width)
        return [(image_tokens, diffusion_model.model_dim),
                (image_tokens, diffusion_model.visual_blocks[0].model_dim_a)] * len(diffusion_model.visual_blocks)

    def install(self, patcher, slot) -> None:
        blocks = len(patcher.model.diffusion_model.visual_blocks)
        for i in range(blocks):
            block = f"diffusion_model.visual_blocks.{i}"
            patch_method(patcher, slot, f"{block}.forward", before=_gather_block_inputs,
                         after=_every_video_row if i == blocks - 1 else None, graph=True)
            for name in _PASSED_BY:
                passthrough_method(patcher, slot, f"{block}.{name}.forward")
            image_keys_method(patcher, slot, f"{block}.av_cross_attention.forward", hand_override=True)
        patch_method(patcher, slot, "diffusion_model._forward", before=_refuse_magcache, after=_scatter_output)


def _refuse_magcache(call, arguments) -> None:
    options = arguments.get("transformer_options") or {}
    if options.get("k6_magcache") is not None:
        raise NotImplementedError(MAGCACHE)


def _gather_block_inputs(call, arguments) -> None:
    gather_visual_block_inputs(call, arguments, "visual_rope", LAST_BLOCK_REPLACED)


def _every_video_row(call, out):
    visual, audio = out
    return every_token_row(call, visual), audio


def _scatter_output(call, out):
    """(video output over the latent's grid, audio output) -> the video's running tokens kept, the others the
    policy's."""
    video, audio = out
    return scatter_video_output(call, video, call.grid), audio
