"""Wan SCAIL and SCAIL-2 (comfy/ldm/wan/model.py, SCAILWanModel and SCAIL2WanModel; newer ComfyUI): a character
animated from reference images by a pose video (WanSCAILToVideo).

SCAIL's `forward_orig` is Wan's with these differences, all before the blocks. The reference images' latents
(`reference_latent`, stacked in time) are embedded with the video's frames, before them: their tokens lead the
sequence, as Wan Fun's reference image's do, and run on every step (moved after the video's for the engine and
back for the model by wan.py). The pose video (half the video's size) is embedded apart and its tokens follow
the video's: they run on every step too, as Phantom's subject frames do. SCAIL-2 adds an identity-mask stream to
both embeddings. Its RoPE puts each part in a place of its own (a frame offset, or in replacement mode a shift
in rows and columns): per token, so the running tokens' rows are gathered as Wan's are. The model cuts the pose
and the references off after the head. Everything else is Wan's (wan.py).
"""
import math

from .base import patch_method, runs_class_methods
from .wan import LEADING, WanFamily


class WanSCAILFamily(WanFamily):
    names = ("Wan SCAIL",)
    handled_patches = ()       # Uni3C and InfiniteTalk, which plain Wan runs token-sparse: untested here

    def matches(self, diffusion_model) -> bool:
        return (runs_class_methods(diffusion_model, "comfy.ldm.wan.model", "SCAILWanModel",
                                   ("forward_orig", "_forward", "forward", "rope_encode"))
                and hasattr(diffusion_model, "patch_embedding_pose"))

    def sequence_references(self, diffusion_model, values):
        # the references (each image's latent one frame) and the pose video's latent
        pose = values.get("pose_video_latent")
        return list(values.get("reference_latents") or []) + ([] if pose is None else [pose])

    def install(self, patcher, slot) -> None:
        super().install(patcher, slot)
        patch = tuple(patcher.model.diffusion_model.patch_size)

        def count_reference_tokens(call, arguments) -> None:
            """The references' tokens lead the sequence: as many as their latent (padded to the patch) has patches."""
            reference = arguments.get("reference_latent")
            if reference is not None:
                call.layout[LEADING] = math.prod(size // step for size, step in zip(reference.shape[2:], patch))
        patch_method(patcher, slot, "diffusion_model.forward_orig", before=count_reference_tokens)
