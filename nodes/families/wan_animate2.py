"""Wan Animate 2 (comfy/ldm/wan/model_animate2.py, WanAnimate2Model; newer ComfyUI): a character in a reference image
animated by a pose video (WanAnimate2ToVideo).

The model is Wan 2.1 I2V with a `forward_orig` of its own. The latent's first frame is the reference image's slot.
Beside the video's blocks a pose branch runs over the pose video's tokens (at a fixed timestep, so the same on every
step; WanAnimate2Cache keeps it between steps): a sequence of its own, which always runs and keeps no K/V cache. In
each block the video's self-attention is per frame: the queries of frame j attend to every video token and to the
pose branch's keys and values of pose frame j - 1 (frame 0, the reference slot, to the video's alone), and the
values of frame 0 are scaled by the reference strength. The model computes it as a loop over frames of equal size;
here it runs on the running tokens (dense or sparse): each frame's running queries attend to the whole video's keys
and values from the K/V cache and to their pose frame's. Everything else is Wan's (wan.py): the first block gathers
the video's tokens, RoPE rows and modulation, cross-attention passes the cache by, the head's output is scattered.
"""
from typing import List, Optional, Tuple

import torch

from ...sdit_core.tokens import gather_rows, scatter_rows_
from .base import passthrough_method, patch_method, replace_in_forwards, runs_class_methods
from .wan import WanFamily, gather_block_inputs, patch_head

_MODULE = "comfy.ldm.wan.model_animate2"


class WanAnimate2Family(WanFamily):
    names = ("Wan Animate 2",)
    handled_patches = ()       # Uni3C and InfiniteTalk, which plain Wan runs token-sparse: untested here

    def matches(self, diffusion_model) -> bool:
        return (runs_class_methods(diffusion_model, _MODULE, "WanAnimate2Model",
                                   ("forward_orig", "_forward", "forward", "rope_encode", "rope_encode_pose"))
                and all(runs_class_methods(block, _MODULE, "WanAnimate2Block", ("forward_gen", "forward_pose"))
                        and runs_class_methods(block.self_attn, _MODULE, "WanAnimate2SelfAttention",
                                               ("forward_gen", "qkv"))
                        for block in diffusion_model.blocks))

    def sequence_references(self, diffusion_model, values):
        return []          # the pose video is a sequence of its own, not beside the video's tokens

    def install(self, patcher, slot) -> None:
        for i in range(len(patcher.model.diffusion_model.blocks)):
            block = f"diffusion_model.blocks.{i}"
            patch_method(patcher, slot, f"{block}.forward_gen", before=gather_block_inputs)
            replace_in_forwards(patcher, slot, f"{block}.self_attn.forward_gen", self_attention_per_frame)
            passthrough_method(patcher, slot, f"{block}.cross_attn.forward")
            passthrough_method(patcher, slot, f"{block}.forward_pose")     # the pose branch's own attention
        patch_head(patcher, slot, "diffusion_model.head")


def self_attention_per_frame(call, attention, x, freqs, k_pose, v_pose, f_gen, hw, buffers, ref_strength=1.0,
                             transformer_options={}):
    """WanAnimate2SelfAttention.forward_gen on the tokens that run (`x`: rows, n, channels)."""
    from comfy.ldm.modules.attention import optimized_attention
    if call.image_sequence_length != call.grid_tokens:
        raise NotImplementedError("Wan Animate 2 with tokens beside the video's is not supported by region-adaptive "
                                  "sampling; sample it with KSampler")
    heads = attention.num_heads
    q, k, v = attention.qkv(x, freqs)                                         # (rows, n, heads, head dim)
    if ref_strength != 1.0:          # the reference slot's values (frame 0), before they enter the K/V cache
        v = v * torch.where(_grid_positions(call, x) < hw, ref_strength, 1.0).to(v)[:, :, None, None]

    def model_attention(q_, k_, v_):
        """ComfyUI's attention (or another node's override of it), past the engine's K/V cache."""
        call.passthrough += 1
        try:
            return optimized_attention(q_, k_, v_, heads=heads, transformer_options=transformer_options)
        finally:
            call.passthrough -= 1

    def attend(q_, k_all, v_all, heads_, **kwargs):       # k_all, v_all: every video token's (rows, tokens, channels)
        if k_pose is None:         # the pose influence windowed out: one attention over the video
            return model_attention(q_, k_all, v_all)
        return _attend_per_frame(call, q_, k_all, v_all, k_pose.flatten(2), v_pose.flatten(2), hw, model_attention)

    out = call.attention(attend, q.flatten(2), k.flatten(2), v.flatten(2), heads,
                         {"transformer_options": transformer_options})
    return attention.o(attention._attn1_patch(out, q, k, transformer_options))


def _grid_positions(call, x: torch.Tensor) -> torch.Tensor:
    """(rows, n): where each token that runs sits in the video's token grid."""
    if call.dense:
        return torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
    return call.image_index_now().to(x.device)


def _attend_per_frame(call, q, k_all, v_all, k_pose, v_pose, hw: int, attend) -> torch.Tensor:
    """Each query of frame j attends to [every video token | pose frame j - 1] (frame 0: the video's alone), one
    attention call per frame over that frame's running queries of every row (padded to the row with most)."""
    out = q.new_empty(q.shape[0], q.shape[1] + 1, q.shape[2])                # the last row takes the padding
    # sparse: a zero query where a row's positions are padded (dense forwards read whole frames by slices)
    padded = q if call.dense else torch.cat([q, q.new_zeros(q.shape[0], 1, q.shape[2])], dim=1)
    for frame, positions in _frame_positions(call, q.shape[1], hw, q.device):
        q_frame = padded[:, positions] if isinstance(positions, slice) else gather_rows(padded, positions)
        keys, values = k_all, v_all
        if frame > 0:
            pose = slice((frame - 1) * hw, frame * hw)
            keys, values = torch.cat([k_all, k_pose[:, pose]], dim=1), torch.cat([v_all, v_pose[:, pose]], dim=1)
        result = attend(q_frame, keys, values)
        if isinstance(positions, slice):
            out[:, positions] = result
        else:
            scatter_rows_(out, positions, result)
    return out[:, :-1]


def _frame_positions(call, n: int, hw: int, device) -> List[Tuple[int, object]]:
    """(frame, positions) for every frame with a running token: where its tokens sit in the running sequence, a slice
    where every row runs the whole frame (dense), else (rows, most running in a row) indices, rows with fewer padded
    with `n`. Computed once per forward from the grid index (on the host where the policy made it there)."""
    key = ("animate2 frames", hw, n, str(device))
    if key not in call.scratch:
        if call.dense:
            call.scratch[key] = [(j, slice(j * hw, (j + 1) * hw)) for j in range(n // hw)]
        else:
            frame_of = call.grid_index // hw                                      # (rows, n), ascending per row
            frames: List[Tuple[int, Optional[torch.Tensor]]] = []
            for j in torch.unique(frame_of).tolist():
                in_frame = frame_of == j
                most = int(in_frame.sum(dim=1).max())
                # the running positions of frame j first in each row (stable), then padding
                order = torch.argsort((~in_frame).to(torch.int8), dim=1, stable=True)[:, :most]
                positions = torch.where(torch.gather(in_frame, 1, order), order, n)
                frames.append((j, positions.to(device)))
            call.scratch[key] = frames
    return call.scratch[key]
