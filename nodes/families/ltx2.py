"""LTX-2 (comfy/ldm/lightricks/av_model.py, LTXAVModel, newer ComfyUI): video and audio sampled together.

ComfyUI samples the video and audio latents as one latent of two parts (a NestedTensor, packed flat while
sampling); the engine takes its tokens from the video part (sparse_patch.py). The model patchifies both, then runs
blocks over a pair of sequences: the video's (self-attention with 3-D RoPE, cross-attention to the text, a
feed-forward, each modulated per video or per token) and the audio's (the same over the audio tokens), joined by two
cross-attentions: the video's queries to the audio's keys, and the audio's queries to the video's keys. Then LTX-Video's
output layers for the video and the audio's own. The adapter hooks modules, as LTX-Video's (ltxv.py) does:
- the first block that runs gathers the video tokens; every block gets their RoPE rows (self-attention's and the
  audio cross-attentions') and, where it is per token, their modulation (ComfyUI keeps it per frame: expanded, then
  gathered);
- the audio always runs, every token of it: its self-attention and the text cross-attentions pass the K/V cache by,
  and so does the video's attention to the audio (its keys are the audio's, complete as they are);
- the audio's attention to the video is a layer of the K/V cache of its own: the audio's queries see the keys and
  values of every video token, the ones that ran fresh and the others from the cache, so a sparse step after a dense
  one leaves the audio exact too;
- LTX-Video's output hooks (`norm_out` over every token's row, `proj_out` scattered);
- each block may replay from a CUDA graph of its own (the (video, audio) pair and the RoPE pairs in its static
  buffers; the passes that switch a stream or the attention between them off, by flags in the options, get graphs
  of their own: forward_graphs keys on the options' plain values).
"""
from .base import (every_token_row, image_keys_method, passthrough_method, patch_method, patch_module_forward,
                   runs_class_methods, scatter_every_row)
from .ltxv import LTXVFamily, gathered_at_first_block, gathered_rope, memo_per_forward
from .ltxv_guide_attention import install_guided_self_attention

# block arguments that hold the video's tokens' RoPE rows: its self-attention's, the audio cross-attentions'
_VIDEO_ROPE = ("v_pe", "v_cross_pe")
# block arguments that hold the video's modulation: per video, per frame (ComfyUI's CompressedTimestep) or per token
_VIDEO_MODULATION = ("v_timestep", "v_cross_scale_shift_timestep", "v_cross_gate_timestep")
# attention modules of a block that pass the K/V cache by: the video's and the audio's text cross-attention, the
# audio's self-attention, the video's attention to the audio
_PASSED_BY = ("attn2", "audio_attn1", "audio_attn2", "audio_to_video_attn")


class LTX2Family(LTXVFamily):
    names = ("LTX-2",)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.lightricks.av_model", "LTXAVModel",
                                  ("forward", "_forward", "_process_input", "_process_transformer_blocks",
                                   "_process_output"))

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        # per block: the video's self-attention, and the audio's attention to the video (its heads' width)
        return [(image_tokens, diffusion_model.inner_dim),
                (image_tokens, diffusion_model.audio_inner_dim)] * len(diffusion_model.transformer_blocks)

    def install(self, patcher, slot) -> None:
        for i in range(len(patcher.model.diffusion_model.transformer_blocks)):
            block = f"diffusion_model.transformer_blocks.{i}"
            patch_method(patcher, slot, f"{block}.forward", before=_gather_block_inputs, graph=True)
            for name in _PASSED_BY:
                passthrough_method(patcher, slot, f"{block}.{name}.forward")
            image_keys_method(patcher, slot, f"{block}.video_to_audio_attn.forward")
            install_guided_self_attention(patcher, slot, block, self.names[0], check=i == 0)
        patch_module_forward(patcher, slot, "diffusion_model.norm_out", before=every_token_row)
        patch_module_forward(patcher, slot, "diffusion_model.proj_out", after=scatter_every_row)


def _gather_block_inputs(call, arguments) -> None:
    video, audio = arguments["x"]
    arguments["x"] = (gathered_at_first_block(call, video, arguments), audio)
    if call.dense:
        return
    for name in _VIDEO_ROPE:
        arguments[name] = gathered_rope(call, arguments[name])
    for name in _VIDEO_MODULATION:
        arguments[name] = _running_tokens_modulation(call, arguments[name])


def _running_tokens_modulation(call, modulation):
    """A video modulation for the running tokens: one for the whole video as it is (a tensor that broadcasts);
    per frame (ComfyUI's CompressedTimestep, which expands to a row per token) or per token, the running tokens'
    rows."""
    if modulation is None:
        return None
    if hasattr(modulation, "expand_for_computation"):       # CompressedTimestep
        if modulation.data.shape[1] == 1:
            return modulation.data
        return memo_per_forward(call, modulation.data, lambda: call.gather_grid(modulation.expand()))
    if modulation.shape[1] == 1:
        return modulation
    return memo_per_forward(call, modulation, lambda: call.gather_grid(modulation))
