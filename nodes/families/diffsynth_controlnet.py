"""Qwen-Image's DiffSynth ControlNet ("Apply Qwen Image DiffSynth ControlNet" with a blockwise ControlNet of
"Load Model Patch"; comfy_extras/nodes_model_patch.py, `DiffSynthCnetPatch`) on token-sparse forwards.

After every block the patch adds to each image token `control_block(token, control[token]) * strength`, where
`control` is the control image embedded per token (its latent patchified, then `img_in`) and the block is a
per-token network (BlockWiseControlBlock: RMSNorm, linear, GELU, linear). A token's addition depends on that
token alone, so a sparse forward is exact on the tokens that run once the control embedding's rows are gathered
with them. The patch slices `img[:, :rows of its embedding]`: on a sparse forward the model gets, in its place, a
shallow copy holding the running tokens' rows of the embedding, so ComfyUI's own code runs on them (the patch on
the model is never changed: other threads and later runs see it as it was).
"""
import copy

from .base import with_block_patches_for_sparse_forward

PATCH_CLASS = "DiffSynthCnetPatch"


def token_sparse_options(call, options: dict) -> dict:
    """This forward's transformer_options (base.with_block_patches_for_sparse_forward)."""
    return with_block_patches_for_sparse_forward(call, options, PATCH_CLASS, _with_running_rows)


def _with_running_rows(call, patch):
    embedding = getattr(patch, "encoded_image", None)
    if embedding is None or embedding.ndim != 3 or embedding.shape[1] != call.grid_tokens:
        rows = None if embedding is None else tuple(embedding.shape)
        raise NotImplementedError(
            f"the Qwen Image DiffSynth ControlNet's control embedding ({rows}) does not cover the image's "
            f"{call.grid_tokens} tokens one row each, so it cannot follow the tokens region-adaptive sampling runs "
            "(a latent of several frames?): remove 'Apply Qwen Image DiffSynth ControlNet' or sample with KSampler")
    batch = call.grid_index.shape[0]
    if embedding.shape[0] == 1 and batch > 1:          # one control image for every image of the batch
        embedding = embedding.expand(batch, *embedding.shape[1:])
    running = copy.copy(patch)
    running.encoded_image = call.gather_grid(embedding)
    return running
