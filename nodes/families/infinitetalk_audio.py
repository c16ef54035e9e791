"""Wan's InfiniteTalk audio ("WanInfiniteTalkToVideo" with an InfiniteTalk model of "Load Model Patch";
comfy/ldm/wan/model_multitalk.py `MultiTalkCrossAttnPatch`; newer ComfyUI) on token-sparse forwards.

After each block's cross-attention the patch adds to every video token its attention to the audio tokens of its own
latent frame (one speaker: `SingleStreamAttention`, a query per token, that frame's audio as keys and values, then a
per-token projection): what a token gets depends on that token and its frame alone. ComfyUI's code views the tokens
frame by frame, so on a sparse forward the patch runs on every token's row, the skipped ones zero (what they get is not
used), and the running tokens take their rows of its output: exact on them, with the audio branch over every token on
every step. Several speakers with their masks (`MultiTalkGetAttnMapPatch`, which maps every token's query to the
speakers) stay refused (neighbours.py).
"""
from ...sdit_core.tokens import gather_rows
from .base import every_token_row, with_block_patches_for_sparse_forward

PATCH_CLASS = "MultiTalkCrossAttnPatch"


def token_sparse_options(call, options: dict) -> dict:
    """This forward's transformer_options (base.with_block_patches_for_sparse_forward, the `attn2_patch` list)."""
    return with_block_patches_for_sparse_forward(call, options, PATCH_CLASS, AudioOnRunningTokens, kind="attn2_patch")


class AudioOnRunningTokens:
    """One sparse forward's stand-in for the patch."""

    def __init__(self, call, patch):
        self.call, self.patch = call, patch

    def __call__(self, kwargs):
        out = self.patch(dict(kwargs, x=every_token_row(self.call, kwargs["x"])))
        return gather_rows(out, self.call.image_index_now().to(out.device))
