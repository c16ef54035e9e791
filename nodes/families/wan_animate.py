"""Wan 2.2 Animate (comfy/ldm/wan/model_animate.py, AnimateWanModel): a character animated by a pose video and a
face video (WanAnimateToVideo).

Animate's `forward_orig` is Wan's with two additions. Before the blocks, the pose video's latent is embedded and
added to the video's tokens and the face video is encoded into a few motion tokens per latent frame: both are
whole-video work, before the tokens are gathered. After every fifth block a face block adds, to each video token,
attention of that token to the motion tokens of its own frame. The model's face block reshapes the tokens into
frames of equal size; on a sparse step it runs here on the running tokens instead (frame_attention.py).
Everything else is Wan's (wan.py).
"""
from .base import passthrough_method
from .frame_attention import attend_within_frames
from .wan import WanFamily, is_wan_variant


class WanAnimateFamily(WanFamily):
    names = ("Wan 2.2 Animate",)
    handled_patches = ()       # Uni3C and InfiniteTalk, which plain Wan runs token-sparse: untested here

    def matches(self, diffusion_model) -> bool:
        return is_wan_variant(diffusion_model, "AnimateWanModel", "face_adapter", module="comfy.ldm.wan.model_animate")

    def install(self, patcher, slot) -> None:
        super().install(patcher, slot)
        for i in range(len(patcher.model.diffusion_model.face_adapter.fuser_blocks)):
            passthrough_method(patcher, slot, f"diffusion_model.face_adapter.fuser_blocks.{i}.forward",
                               sparse=face_block_on_running_tokens)


def face_block_on_running_tokens(call, block, x, motion_vec, motion_mask=None):
    """The face block's output for the running tokens `x` (rows, n, channels): each token's attention to the
    motion tokens `motion_vec` (rows, frames, tokens per frame, channels) of its own latent frame."""
    q = block.linear1_q(block.pre_norm_feat(x)).unflatten(-1, (block.heads_num, -1))
    k, v = block.linear1_kv(block.pre_norm_motion(motion_vec)).unflatten(-1, (2, block.heads_num, -1)).unbind(-3)
    q, k = block.q_norm(q).to(v), block.k_norm(k).to(v)
    out = block.linear2(attend_within_frames(call, q, k.flatten(1, 2), v.flatten(1, 2), motion_vec.shape[1]))
    if motion_mask is not None:       # (rows, frames, height, width): a weight per token
        out = out * call.gather_grid(motion_mask.flatten(1).unsqueeze(-1).to(out))
    return out
