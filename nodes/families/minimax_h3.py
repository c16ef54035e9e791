"""MiniMax H3 (comfy/ldm/minimax/model.py, MiniMaxH3Model; newer ComfyUI): video and audio sampled together.

ComfyUI samples its video and audio latents as one latent of two parts (a NestedTensor, packed flat while sampling,
as LTX-2's); the engine takes its tokens from the video part (sparse_patch.py). The model packs one sequence without a
batch dimension (one video at a time): [text | keyframes and references | audio | video], each segment modulated by
its own row of the timestep table (`mod_segments`: (start, stop, row), the row per token where a noise mask gives
tokens their own timestep), 3-axis RoPE for every token, joint attention over all of it, and a final layer that reads
the audio's and the video's segments. The adapter hooks modules, never the forward's code:
- the first block gathers the video's tokens (the sequence's last segment); every block gets the running tokens'
  RoPE rows and the video segment cut to them (its per-token modulation rows gathered);
- everything before the video always runs, the audio too: its queries see every video token's keys (the others'
  from the K/V cache), so a sparse step after a dense one leaves the audio exact;
- the final layer's video segment is the running tokens; its video output gets every token's row back;
- newer ComfyUI's Fun ControlNet (block replacements running a control tower over the whole sequence) keeps running
  whole beside the sparse blocks (control_towers.py).
"""
import importlib

import torch

from . import control_towers
from .base import VideoFamilyAdapter, gather_image_after, gathered_freqs, patch_method, runs_class_methods

FUN_CONTROLNET = "MiniMaxH3FunControlBlockPatch"      # Apply MiniMax H3 Fun ControlNet's block replacement
UNEXPECTED_LAYOUT = ("MiniMax H3: the video's tokens are not the last segment of this ComfyUI's packed sequence, "
                     "which region-adaptive sampling needs: sample it with KSampler, or update this node pack")


class MiniMaxH3Family(VideoFamilyAdapter):
    names = ("MiniMax H3",)
    handled_patches = (FUN_CONTROLNET,)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.minimax.model", "MiniMaxH3Model",
                                  ("forward", "_forward"))

    def refused_latent(self, diffusion_model, shape):
        if shape[0] != 1:
            return f"MiniMax H3 samples one video at a time: the latent holds a batch of {shape[0]}; use a batch of 1"
        return None

    def latent_parts_tokens(self, diffusion_model, latent_shapes, text_tokens, values):
        """The audio's tokens and the keyframes' and references' (`minimax_keyframes`, `minimax_refs`), as the
        model's own `PackedLayout` lays out the sequence."""
        video, audio = latent_shapes[0], latent_shapes[1]
        _, ph, pw = diffusion_model.patch_size
        height, width = -(-video[3] // ph) * ph, -(-video[4] // pw) * pw
        layout = importlib.import_module(type(diffusion_model).__module__).PackedLayout(
            text_tokens, video[2], height, width, audio[-1], keyframes=values.get("minimax_keyframes"),
            refs=values.get("minimax_refs"))
        return layout.seq_len - text_tokens - video[2] * (height // ph) * (width // pw)

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        attention = diffusion_model.blocks[0].attn
        return [(text_tokens + image_tokens, attention.heads * attention.head_dim)] * len(diffusion_model.blocks)

    def install(self, patcher, slot) -> None:
        for i in range(len(patcher.model.diffusion_model.blocks)):
            patch_method(patcher, slot, f"diffusion_model.blocks.{i}.forward", before=_gather_block_inputs)
        patch_method(patcher, slot, "diffusion_model._forward", before=_control_tower_beside_sparse_blocks)
        patch_method(patcher, slot, "diffusion_model.final_layer.forward", before=_running_video_segment,
                     after=lambda call, out: (call.scatter(out[0][None])[0],) + tuple(out[1:]))


def _gather_block_inputs(call, arguments) -> None:
    segments = arguments["mod_segments"]
    start, stop, _ = segments[-1]
    if call.image_rows is None:                     # the first block: the video's tokens are the last segment
        x = arguments["x"]
        if stop != x.shape[0] or stop - start != call.grid_tokens:
            raise NotImplementedError(UNEXPECTED_LAYOUT)
        arguments["x"] = gather_image_after(call, x[None], start)[0]
    if call.dense:
        return
    arguments["rope_freqs"] = gathered_freqs(call, arguments["rope_freqs"], prefix=start)   # (1, tokens, 1, ., 2, 2)
    key = ("minimax_h3_segments", id(segments))
    if key not in call.scratch:                     # every block gets the same list: cut it once per forward
        call.scratch[key] = segments[:-1] + [_running_segment(call, segments[-1])]
    arguments["mod_segments"] = call.scratch[key]


def _control_tower_beside_sparse_blocks(call, arguments) -> None:
    if arguments.get("transformer_options") is not None:
        arguments["transformer_options"] = control_towers.forward_options(
            call, arguments["transformer_options"], FUN_CONTROLNET, lambda args: args["mod_segments"][-1][0])


def _running_video_segment(call, arguments) -> None:
    if not call.dense:
        arguments["video_seg"] = _running_segment(call, arguments["video_seg"])


def _running_segment(call, segment):
    """The video's (start, stop, modulation row) for the running tokens: the row per token (a noise mask's own
    timesteps) gathered with them."""
    start, _, row = segment
    if torch.is_tensor(row) and row.ndim == 1:
        row = call.gather_grid(row[None])[0]
    return (start, start + call.image_rows, row)
