"""Wan's InfiniteTalk audio ("WanInfiniteTalkToVideo" with an InfiniteTalk model of "Load Model Patch";
comfy/ldm/wan/model_multitalk.py `MultiTalkCrossAttnPatch`; newer ComfyUI) on token-sparse forwards.

After each block's cross-attention the patch adds to every video token its attention to the audio tokens of its own
latent frame (one speaker: `SingleStreamAttention`, a query per token, that frame's audio as keys and values, then a
per-token projection): what a token gets depends on that token and its frame alone. ComfyUI's code views the tokens
frame by frame, so a sparse forward restates it for the running tokens alone: their queries attend to every frame's
audio with a mask that keeps each query's own frame (the same softmax over the same keys). The first time an audio
model runs a sparse forward, the restatement is checked against ComfyUI's own patch run on every token's row (the
skipped ones zero), once: a ComfyUI whose patch computes something else stops with a clear error. Where the restatement does not apply (a
reference frame after the video's, a speaker map) the patch runs on every token's row and the running tokens take
theirs. Several speakers with their masks (`MultiTalkGetAttnMapPatch`, which maps every token's query to the
speakers) stay refused (neighbours.py).
"""
import weakref

import torch

from .base import every_token_row, with_block_patches_for_sparse_forward

PATCH_CLASS = "MultiTalkCrossAttnPatch"
_CHECKED = weakref.WeakSet()        # audio models whose restatement matched ComfyUI's patch


def token_sparse_options(call, options: dict) -> dict:
    """This forward's transformer_options (base.with_block_patches_for_sparse_forward, the `attn2_patch` list)."""
    return with_block_patches_for_sparse_forward(call, options, PATCH_CLASS, AudioOnRunningTokens, kind="attn2_patch")


class AudioOnRunningTokens:
    """One sparse forward's stand-in for the patch."""

    def __init__(self, call, patch):
        self.call, self.patch = call, patch

    def __call__(self, kwargs):
        restated = self._restated(kwargs)
        if restated is not None and self.patch.model_patch.model in _CHECKED:
            return restated
        whole = self._on_every_token(kwargs)
        if restated is not None:
            self._check(restated, whole)
        return whole

    def _on_every_token(self, kwargs):
        return self.call.gather_grid(self.patch(dict(kwargs, x=every_token_row(self.call, kwargs["x"]))))

    def _restated(self, kwargs):
        """The patch (`MultiTalkCrossAttnPatch.__call__` with one speaker, `SingleStreamAttention.forward`) on the
        running tokens, or None where it does not apply."""
        options = kwargs.get("transformer_options") or {}
        x, block, shape = kwargs["x"], options.get("block_index"), options.get("grid_sizes")
        audio = options.get("audio_embeds")
        if block is None or shape is None or audio is None or options.get("x_ref_attn_map") is not None:
            return None
        frames, per_frame = int(shape[0]), int(shape[1]) * int(shape[2])
        call = self.call
        if x.shape[0] != 1 or call.image_sequence_length != frames * per_frame:   # one video, no frame after it
            return None
        audio = audio.to(device=x.device, dtype=x.dtype).squeeze(0)               # (frames, audio tokens, width)
        if audio.ndim != 3 or audio.shape[0] != frames:
            return None
        layer = self.patch.model_patch.model.blocks[block]
        attention = layer.audio_cross_attn
        heads, head_dim = attention.num_heads, attention.head_dim
        q = attention.q_linear(layer.norm_x(x)).view(1, x.shape[1], heads, head_dim).transpose(1, 2)
        k, v = attention.kv_linear(audio).view(-1, 2, heads, head_dim).unbind(1)     # every frame's audio tokens
        key_frames = torch.arange(frames, device=x.device).repeat_interleave(audio.shape[1])
        query_frames = torch.div(call.image_index_now().to(x.device), per_frame, rounding_mode="floor")
        own_frame = (query_frames[:, None, :, None] == key_frames[None, None, None, :])
        out = torch.nn.functional.scaled_dot_product_attention(q, k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                                               attn_mask=own_frame)
        out = attention.proj(out.transpose(1, 2).reshape(1, x.shape[1], heads * head_dim))
        return x + out * self.patch.audio_scale

    def _check(self, restated, whole) -> None:
        # float32 differs by rounding; bf16 / fp16 by a step of the residual stream's own rounding; NaN fails too
        tolerance = 1e-3 if whole.dtype == torch.float32 else 0.05
        restated, whole = restated.detach().float(), whole.detach().float()
        error, scale = float((restated - whole).abs().max()), float(whole.abs().max())
        if not error <= tolerance * scale + 1e-6:
            raise NotImplementedError(
                "InfiniteTalk: this ComfyUI's audio attention computes something other than what region-adaptive "
                f"sampling restates for the tokens that run (they differ by {error:.3g} on outputs of {scale:.3g}): "
                "sample it with KSampler, or update this node pack")
        _CHECKED.add(self.patch.model_patch.model)
