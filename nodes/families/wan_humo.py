"""Wan HuMo (comfy/ldm/wan/model.py, HumoWanModel): human-centric video from a prompt, a reference image and
audio (WanHuMoImageToVideo).

HuMo's `forward_orig` is Wan's with two additions. The reference image's latent is embedded after the video's
tokens (its frame follows the video's, in the sequence and in RoPE): those tokens run on every step, as Phantom's
subject frames do. In every block, after the text cross-attention, each frame's tokens attend to that frame's
audio tokens (the reference frame's are silent). The model reshapes the tokens into frames of equal size for it;
on a sparse step it runs here on the running tokens instead (frame_attention.py). Everything else is Wan's
(wan.py).
"""
from .base import passthrough_method
from .frame_attention import attend_within_frames
from .wan import WanFamily, is_wan_variant, last_reference_latent


class WanHumoFamily(WanFamily):
    names = ("Wan HuMo",)
    handled_patches = ()       # Uni3C and InfiniteTalk, which plain Wan runs token-sparse: untested here

    def matches(self, diffusion_model) -> bool:
        return is_wan_variant(diffusion_model, "HumoWanModel", "audio_proj")

    def sequence_references(self, diffusion_model, values):
        return last_reference_latent(values)

    def install(self, patcher, slot) -> None:
        super().install(patcher, slot)
        diffusion_model = patcher.model.diffusion_model
        per_frame = diffusion_model.audio_proj.context_tokens

        def audio_attention(call, attention, x, context, **kwargs):
            return audio_attention_on_running_tokens(call, attention, x, context, per_frame)
        for i in range(len(diffusion_model.blocks)):
            passthrough_method(patcher, slot, f"diffusion_model.blocks.{i}.audio_cross_attn_wrapper.audio_cross_attn"
                               ".forward", sparse=audio_attention)


def audio_attention_on_running_tokens(call, attention, x, audio, per_frame: int):
    """The audio cross-attention's output for the running tokens `x` (rows, n, channels): each token's attention
    to the `per_frame` audio tokens of its own frame (`audio`: rows, frames * per_frame, channels)."""
    heads = attention.num_heads
    q = attention.norm_q(attention.q(x)).unflatten(-1, (heads, -1))
    k = attention.norm_k(attention.k(audio)).unflatten(-1, (heads, -1))
    v = attention.v(audio).unflatten(-1, (heads, -1))
    return attention.o(attend_within_frames(call, q, k, v, audio.shape[1] // per_frame))
