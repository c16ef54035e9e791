"""PiD, the Pixel Diffusion Decoder (comfy/ldm/pixeldit/pid.py, PidNet; newer ComfyUI): PixelDiT's body decoding a
Flux, SD3, Flux 2, Z-Image or Qwen-Image latent into an image 4x its size in 4 distilled steps. A convolutional branch
turns the latent into features, one per patch; the model's own hooks gate one of them into the patch stream before
every second MMDiT block (`_pre_patch_block`) and, in v1.5, one into the stream the pixel blocks read
(`_pre_pixel_blocks`), each with a sigmoid gate per token (`SigmaAwareGate`). The adapter is PixelDiT's (pixeldit.py)
and the features follow the running patches: from the second block on (the first one gathers the patches), and
before the pixel blocks, each hook gets their rows of the features, gathered once per forward.
Runs that cannot go sparse say so (sampler_support.py): ComfyUI's template samples PiD with lcm, which adds fresh
noise every step, and the default warm-up takes all 4 steps; with euler and a warm-up of 1 the last three run sparse.
"""
from .base import patch_method, runs_class_methods
from .pixeldit import PixelDiTFamily


class PiDFamily(PixelDiTFamily):
    names = ("PiD",)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.pixeldit.pid", "PidNet",
                                  ("forward", "_forward", "_pre_patch_block", "_pre_pixel_blocks", "_fetch_patch_pos"))

    def install(self, patcher, slot) -> None:
        patch_method(patcher, slot, "diffusion_model._pre_patch_block", before=_running_block_features)
        super().install(patcher, slot)

    @staticmethod
    def before_pixel_blocks(call, arguments) -> None:
        if arguments.get("pid_pit_lq_feature") is not None:
            arguments["pid_pit_lq_feature"] = _running_rows_of(call, [arguments["pid_pit_lq_feature"]])[0]


def _running_block_features(call, arguments) -> None:
    """Once the patches are gathered, the MMDiT blocks' features (a list, one per gated block) of the running ones."""
    if call.image_rows is not None:
        arguments["pid_lq_features"] = _running_rows_of(call, arguments["pid_lq_features"])


def _running_rows_of(call, features: list) -> list:
    """(rows, patches, channels) features -> the running patches' rows, once per forward (dense: unchanged)."""
    if call.dense:
        return features
    key = ("pid features", tuple(f.data_ptr() for f in features))
    if key not in call.scratch:
        call.scratch[key] = [call.gather_grid(f) for f in features]
    return call.scratch[key]
