"""WanDancer (comfy/ldm/wan/model_wandancer.py, WanDancerModel; newer ComfyUI): a dance video to music from a start
image (WanDancerVideo, with WanDancerEncodeAudio's music features).

WanDancer's `forward_orig` is Wan's with these differences. The music features are encoded (a small transformer of
their own) into eight tokens per latent frame, before the blocks. After some blocks Wan S2V's audio injector adds,
to each video token, its part of the music: the injector reshapes the video's tokens into equal parts of a frame
and runs on the running tokens here as for S2V (wan_s2v.py). Music at another frame rate than 30 fps takes a
patch embedding and a head of their own (`head_global`, hooked as the head is). A reference image's latent
through `ref_conv` (not part of WanDancer's own nodes) would lead the sequence as Wan Fun's does, but the model's
injector takes the reference's tokens for the video's first ones: with music it is refused. (The model's RoPE covers
the video's tokens alone, so ComfyUI's WanDancer fails on a reference latent, with or without the pack.) Everything
else is Wan's (wan.py).
"""
from .base import passthrough_method, patch_method, runs_class_methods
from .wan import WanFamily, last_reference_latent, patch_head
from .wan_s2v import inject_on_running_tokens

REFERENCE_WITH_MUSIC = ("WanDancer with a reference image's latent (ref_conv) and music is not supported by "
                        "region-adaptive sampling; sample it with KSampler")


class WanDancerFamily(WanFamily):
    names = ("WanDancer",)
    handled_patches = ()       # Uni3C and InfiniteTalk, which plain Wan runs token-sparse: untested here

    def matches(self, diffusion_model) -> bool:
        return (runs_class_methods(diffusion_model, "comfy.ldm.wan.model_wandancer", "WanDancerModel",
                                   ("forward_orig", "_forward", "forward", "rope_encode"))
                and hasattr(diffusion_model, "music_injector"))

    def refused_conditioning(self, diffusion_model, values: dict):
        referenced = bool(last_reference_latent(values)) and getattr(diffusion_model, "ref_conv", None) is not None
        return REFERENCE_WITH_MUSIC if referenced and values.get("audio_embed") is not None else None

    def install(self, patcher, slot) -> None:
        super().install(patcher, slot)
        patch_head(patcher, slot, "diffusion_model.head_global")
        passthrough_method(patcher, slot, "diffusion_model.music_injector.forward", sparse=inject_on_running_tokens)
        if getattr(patcher.model.diffusion_model, "ref_conv", None) is not None:
            patch_method(patcher, slot, "diffusion_model.forward_orig", before=_refuse_reference_with_music)


def _refuse_reference_with_music(call, arguments) -> None:
    if arguments.get("audio_embed") is not None and (arguments.get("kwargs") or {}).get("reference_latent") is not None:
        raise NotImplementedError(REFERENCE_WITH_MUSIC)
