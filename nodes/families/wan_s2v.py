"""Wan 2.2 S2V (comfy/ldm/wan/model.py, WanModel_S2V): speech-to-video from a reference image, audio and an
optional pose video (WanSoundImageToVideo, and its Extend node for the next chunk).

S2V's `forward_orig` is Wan's with these additions. Before the blocks: the pose video is embedded and added to
the video's tokens; the reference image's tokens and the previous chunk's motion frames (packed at three
scales, FramePack style) follow the video's, and run on every step, as Phantom's subject frames do; the
timestep is per frame (the modulation follows the tokens, as Wan 2.2 TI2V's). After some blocks an audio
injector adds, to each of the video's tokens, attention to its own frame's audio tokens, reshaping the video's
tokens into equal frames. On a sparse step it runs here on the running tokens: they are put back in place in
a video of zeros, the model's own injector runs on it (each token's result depends on that token and its
frame's audio alone) and the running tokens' results are taken out again. Everything else is Wan's (wan.py).

ComfyUI versions whose S2V does not hand its blocks `transformer_options` (0.3.75) keep its attention away from
the K/V cache: the first sparse step stops with the error of `neighbours.check_attention_went_through`.
"""
from ...sdit_core.tokens import gather_rows, scatter_rows_
from .base import passthrough_method
from .wan import WanFamily, is_wan_variant, last_reference_latent


class WanS2VFamily(WanFamily):
    names = ("Wan S2V",)
    handled_patches = ()       # Uni3C and InfiniteTalk, which plain Wan runs token-sparse: untested here

    def matches(self, diffusion_model) -> bool:
        return is_wan_variant(diffusion_model, "WanModel_S2V", "audio_injector")

    def sequence_references(self, diffusion_model, values):
        return last_reference_latent(values)

    def sequence_reference_tokens(self, diffusion_model, values, tokens, image_shape):
        count = super().sequence_reference_tokens(diffusion_model, values, tokens, image_shape)
        motion = values.get("reference_motion")
        if motion is not None:   # the frame packer: 1 frame at the video's patch, 2 at twice it, 16 at 4 times it
            height, width = motion.shape[-2:]
            count += (height // 2) * (width // 2) + (height // 4) * (width // 4) + 4 * (height // 8) * (width // 8)
        return count

    def install(self, patcher, slot) -> None:
        super().install(patcher, slot)
        passthrough_method(patcher, slot, "diffusion_model.audio_injector.forward", sparse=inject_on_running_tokens)


def inject_on_running_tokens(call, injector, x, block_id, audio_emb, audio_emb_global, seq_len, *args, **kwargs):
    """The audio injector (which works on the first `seq_len` tokens, the video's, as equal frames) on the
    running tokens: the video's running tokens lead the gathered sequence `x`."""
    if block_id not in injector.injected_block_id:      # most blocks have no injector: nothing to do
        return x
    index = call.grid_index.to(x.device)
    video = scatter_rows_(x.new_zeros(x.shape[0], seq_len, x.shape[2]), index, x[:, :index.shape[1]])
    injected = type(injector).forward(injector, video, block_id, audio_emb, audio_emb_global, seq_len, *args, **kwargs)
    x[:, :index.shape[1]] = gather_rows(injected, index)
    return x
