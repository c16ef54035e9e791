"""Helios (comfy/ldm/helios/model.py, HeliosModel; newest ComfyUI): long videos made chunk by chunk, each chunk
sampled stage by stage on a resolution pyramid (the Helios Pyramid Sampler runs ComfyUI's sampling once per stage,
each run a stream of its own here), seeing the video made so far through "history" latents in its conditioning.

`forward_orig` embeds the chunk (3-D patches, RoPE by frame index), puts the history's tokens before the chunk's
([long | mid | short | chunk]: the older the coarser), modulates the history as at timestep 0 (a modulation per
token), runs the blocks (self-attention over history and chunk; cross-attention of the chunk alone to the text, which
the blocks split off by its length, `original_context_length`) and a head over the chunk's tokens. The adapter hooks
modules, never that function's code:
- the first block that runs gathers the chunk's tokens after the history's, which always run (the engine's keys are
  [history | image], as [text | image]); every block gets the running tokens' RoPE rows and modulation and their
  count as the chunk's length;
- cross-attention passes the K/V cache by (its keys are the text);
- the head's norm gets the running tokens' modulation and count; the projection's output is scattered back.
"""
import math

from .base import (VideoFamilyAdapter, gather_image_after, gathered_freqs, passthrough_method, patch_method,
                   patch_module_forward, runs_class_methods)

HISTORY = ("helios", "history tokens before the chunk's")     # a per-forward layout key: how many
# the history latents' patches, in latent frames, rows and columns (the model pads the mid and long ones to them)
HISTORY_PATCHES = {"short": (1, 2, 2), "mid": (2, 4, 4), "long": (4, 8, 8)}


class HeliosFamily(VideoFamilyAdapter):
    names = ("Helios",)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.helios.model", "HeliosModel",
                                  ("forward", "_forward", "forward_orig"))

    def sequence_reference_tokens(self, diffusion_model, values, tokens, image_shape):
        """The history's tokens (a scale runs where the conditioning has its latent and its frame indices)."""
        count = 0
        for scale, patch in HISTORY_PATCHES.items():
            latent = values.get(f"latents_history_{scale}")
            if latent is not None and values.get(f"indices_latents_history_{scale}") is not None:
                grid = latent.shape[-3:]
                # the short scale is the model's own patch (no padding); mid and long are padded up to theirs
                rounding = math.floor if scale == "short" else math.ceil
                count += math.prod(rounding(size / step) for size, step in zip(grid, patch))
        return count

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        return [(image_tokens, diffusion_model.dim)] * len(diffusion_model.blocks)   # history and chunk, no text

    def install(self, patcher, slot) -> None:
        for i in range(len(patcher.model.diffusion_model.blocks)):
            patch_method(patcher, slot, f"diffusion_model.blocks.{i}.forward", before=_gather_block_inputs, graph=True)
            passthrough_method(patcher, slot, f"diffusion_model.blocks.{i}.attn2.forward")
        patch_method(patcher, slot, "diffusion_model.norm_out.forward", before=_gather_head_inputs)
        patch_module_forward(patcher, slot, "diffusion_model.proj_out", after=lambda call, out: call.scatter(out))


def _gather_block_inputs(call, arguments) -> None:
    if call.image_rows is None:                     # the first block that runs: [history | chunk]
        history = arguments["x"].shape[1] - arguments["original_context_length"]
        call.layout[HISTORY] = history
        arguments["x"] = gather_image_after(call, arguments["x"], history)    # dense: unchanged, but counted
    if call.dense:
        return
    history = call.layout[HISTORY]
    arguments["original_context_length"] = call.image_rows
    arguments["freqs"] = gathered_freqs(call, arguments["freqs"], prefix=history)
    if arguments["e"].ndim == 4:                    # (rows, tokens, 6, channels): per token, gathered as the RoPE rows
        arguments["e"] = gathered_freqs(call, arguments["e"], prefix=history)


def _gather_head_inputs(call, arguments) -> None:
    """The norm takes the chunk's last rows of the hidden states and of the modulation by the chunk's length."""
    if not call.dense:
        temb = arguments["temb"]
        arguments["temb"] = call.gather_grid(temb[:, temb.shape[1] - call.grid_tokens:])
        arguments["original_context_length"] = call.image_rows

