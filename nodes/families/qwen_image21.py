"""Qwen-Image 2.1 (comfy/ldm/qwen_image21/model.py, QwenImage21Transformer2DModel; ComfyUI 0.37 and newer).

A class of its own, not Qwen-Image's: one token per latent pixel, single-stream blocks over [prefix | target image],
where the prefix is the prompt with any reference images' tokens spliced in (`build_sequence`). Attention is block
causal: the prefix attends causally within itself and never to the target; the target attends to everything. The
prefix is modulated at timestep 0, so its keys and values are the same on every step, and the model keeps them in a
prefix cache of its own for the sampling run: the first step runs the prefix through each block alone (the block
called with `prefix_len` equal to its rows) and then the target alone against the cached prefix; later steps run the
target alone. Where that cache is off (hooks, no room) every block runs [prefix | target] with `prefix_len` rows of
prefix. The adapter hooks modules, never the forward's code:
- `build_sequence`'s attention segments are kept for the forward;
- a block over the prefix alone runs as it is, past the engine's K/V cache;
- the first block over the target gathers its tokens; every block gets their RoPE rows, and an attention function
  that sends the target's keys and values through the K/V cache and attends with the model's own functions: the
  target's running queries to [prefix | every target token] (`prefix_cached_attention`), the prefix's queries as the
  model does (`block_causal_attention` over the prefix's segments);
- `proj_out`'s output is scattered back to every token.
The K/V cache holds the target's tokens only: the prefix's are complete on every step (computed, or the model's own).
"""
import torch

from .base import FamilyAdapter, gather_image_after, gathered_freqs, patch_method, patch_module_forward, runs_class_methods

_MODULE = "comfy.ldm.qwen_image21.model"
_SEGMENTS = ("qwen-image 2.1", "segments")        # a per-forward memo key: build_sequence's attention segments


class QwenImage21Family(FamilyAdapter):
    names = ("Qwen-Image 2.1",)

    def matches(self, diffusion_model) -> bool:
        return (runs_class_methods(diffusion_model, _MODULE, "QwenImage21Transformer2DModel",
                                   ("forward", "_forward", "build_sequence"))
                and all(runs_class_methods(block, _MODULE, "QwenImage21TransformerBlock", ("forward",))
                        for block in diffusion_model.transformer_blocks))

    def patch_size(self, diffusion_model) -> int:
        return 1                # a token per latent pixel (the latent is already packed to 64 channels)

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        return [(image_tokens, diffusion_model.inner_dim)] * len(diffusion_model.transformer_blocks)

    def install(self, patcher, slot) -> None:
        patch_method(patcher, slot, "diffusion_model.build_sequence", after=_keep_segments)
        for i in range(len(patcher.model.diffusion_model.transformer_blocks)):
            patch_method(patcher, slot, f"diffusion_model.transformer_blocks.{i}.forward", before=_block_inputs)
        patch_module_forward(patcher, slot, "diffusion_model.proj_out", after=lambda call, out: call.scatter(out))


def _keep_segments(call, result):
    call.scratch[_SEGMENTS] = result[2]
    return result


def _block_inputs(call, arguments) -> None:
    x, prefix, attn_fn = arguments["x"], int(arguments["prefix_len"]), arguments["attn_fn"]
    if prefix == x.shape[1]:                        # the prefix alone, filling the model's prefix cache
        arguments["attn_fn"] = _past_the_cache(call, attn_fn)
        return
    if call.image_rows is None:                     # the first block over the target
        arguments["x"] = gather_image_after(call, x, prefix)
    if not call.dense:
        arguments["pe"] = gathered_freqs(call, arguments["pe"], prefix=prefix)     # (1, tokens, 1, ., 2, 2)
    arguments["attn_fn"] = _through_the_cache(call, attn_fn, prefix, arguments.get("transformer_options") or {})


def _past_the_cache(call, attn_fn):
    def attn(*args, **kwargs):
        call.passthrough += 1
        try:
            return attn_fn(*args, **kwargs)
        finally:
            call.passthrough -= 1
    return attn


def _through_the_cache(call, attn_fn, prefix: int, transformer_options: dict):
    """The block's attention function for (rows, prefix + n, heads, head dim) queries, keys and values: the target's go
    through the K/V cache, attention runs through the model's own functions (past the cache)."""
    import comfy.ldm.qwen_image21.model as qwen_image21

    def attn(q, k, v, heads, preferred_attention=None):
        if prefix == 0:          # the target alone against the model's cached prefix: its own attention function
            attend_target = _past_the_cache(call, attn_fn)
        else:
            attend_target = _past_the_cache(call, qwen_image21.prefix_cached_attention(
                k[:, :prefix], v[:, :prefix], transformer_options))

        def attend(q_, k_full, v_full, heads_, **kwargs):       # (rows, n | every target token, heads * head dim)
            return attend_target(q_, k_full.unflatten(2, k.shape[2:]), v_full.unflatten(2, v.shape[2:]), heads,
                                 preferred_attention=preferred_attention)

        target = call.attention(attend, q[:, prefix:].flatten(2), k[:, prefix:].flatten(2), v[:, prefix:].flatten(2),
                                heads, {})
        if prefix == 0:
            return target
        segments = call.scratch[_SEGMENTS][:-1]     # the prefix's, as the model attends within it
        own = _past_the_cache(call, qwen_image21.block_causal_attention(segments, transformer_options))
        return torch.cat([own(q[:, :prefix], k[:, :prefix], v[:, :prefix], heads,
                              preferred_attention=preferred_attention), target], dim=1)
    return attn
