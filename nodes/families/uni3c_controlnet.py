"""Wan's Uni3C ControlNet ("Apply Wan Uni3C ControlNet" with a Uni3C model of "Load Model Patch";
comfy_extras/nodes_model_patch.py, `WanUni3CCnetPatch`; newer ComfyUI) on token-sparse forwards.

The ControlNet is a transformer of its own over the latent's tokens (the sampler's input beside the camera's render
video), blind to the model's hidden states: after each of the model's first blocks the patch runs one of its blocks
and adds that block's output to every video token. It keeps running whole on every step (ComfyUI's own code; by FLOP
count 7-8% of a dense Wan 14B forward, docs/BENCHMARKS.md), so what it adds is exact; a sparse forward hands the patch a zero stand-in for the
video's tokens, takes what the patch added to it, and adds the running tokens' rows of that to the tokens that run
(the engine's order puts them first). The patch carries the ControlNet's state from block to block: each sparse
forward runs a copy of it, so the patch on the model is never changed.
"""
import copy

from .base import with_block_patches_for_sparse_forward

PATCH_CLASS = "WanUni3CCnetPatch"


def token_sparse_options(call, options: dict) -> dict:
    """This forward's transformer_options (base.with_block_patches_for_sparse_forward)."""
    return with_block_patches_for_sparse_forward(call, options, PATCH_CLASS, AddsToRunningTokens)


class AddsToRunningTokens:
    """One sparse forward's stand-in for the patch."""

    def __init__(self, call, patch):
        self.call, self.patch = call, copy.copy(patch)

    def __call__(self, kwargs):
        img = kwargs["img"]
        every_token = img.new_zeros(img.shape[0], self.call.grid_tokens, img.shape[-1])
        added = self.patch(dict(kwargs, img=every_token, img_offset=0))["img"]
        running = self.call.grid_index.shape[1]
        img[:, :running] += self.call.gather_grid(added)
        return dict(kwargs, img=img)
