"""Wan VACE (comfy/ldm/wan/model.py, VaceWanModel): Wan 2.1 / 2.2 guided by control videos (WanVaceToVideo).

VACE's `forward_orig` runs, beside Wan's blocks, a second stack of blocks over each control video's tokens
(`vace_context`, embedded on the video's own token grid): after some of Wan's blocks, each control video's
next VACE block adds its hint, a per-token projection, to the video tokens. The first VACE block starts from
the control tokens plus the embedded video before any block ran. So the hints line up token for token with
the video: where the video runs its active tokens, every VACE block runs the same tokens of every control
video, with a K/V cache of its own for its self-attention (over the control video's tokens, as Wan's is over
the video's). Everything else is Wan's (wan.py).
"""
from .base import gathered_freqs, passthrough_method, patch_method
from .wan import BLOCK_MODULATION_DIMS, WanFamily, gathered_modulation, is_wan_variant


class WanVaceFamily(WanFamily):
    names = ("Wan VACE",)
    handled_patches = ()       # Uni3C and InfiniteTalk, which plain Wan runs token-sparse: untested here

    def matches(self, diffusion_model) -> bool:
        return is_wan_variant(diffusion_model, "VaceWanModel", "vace_blocks")

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        control_videos = len(values.get("vace_frames") or [None])     # ComfyUI adds an empty one where none
        hints = [(image_tokens, diffusion_model.dim)] * (len(diffusion_model.vace_blocks) * control_videos)
        return super().kv_cache_layers(diffusion_model, image_tokens, text_tokens, values) + hints

    def install(self, patcher, slot) -> None:
        super().install(patcher, slot)
        for i, block in enumerate(patcher.model.diffusion_model.vace_blocks):
            patch_method(patcher, slot, f"diffusion_model.vace_blocks.{i}.forward",
                         before=lambda call, arguments, i=i, first=block.block_id == 0:
                         _gather_hint_inputs(call, arguments, i, first))
            passthrough_method(patcher, slot, f"diffusion_model.vace_blocks.{i}.cross_attn.forward")


GATHERED_AT = ("vace", "the VACE block that gathered the control videos' tokens")     # a per-forward layout key


def _gather_hint_inputs(call, arguments, index: int, first: bool) -> None:
    """A VACE block's inputs. The control videos' tokens come whole from before the blocks and are gathered
    at the first VACE block that runs after the video's tokens were (Skip Layer Guidance may skip Wan's first
    block, so a VACE block can run on whole tokens, adding whole hints to the still whole video); the first
    VACE block also gets the embedded video, whole."""
    if call.dense or call.image_rows is None:
        return
    if call.layout.setdefault(GATHERED_AT, index) == index:     # every control video passes this block
        arguments["c"] = call.gather_grid(arguments["c"])
        if first:
            arguments["x"] = call.gather_grid(arguments["x"])
    kwargs = arguments["kwargs"]
    kwargs["freqs"] = gathered_freqs(call, kwargs["freqs"], prefix=0)
    kwargs["e"] = gathered_modulation(call, kwargs["e"], BLOCK_MODULATION_DIMS)
