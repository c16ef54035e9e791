"""Qwen-Image 2.1 (comfy/ldm/qwen_image21/model.py, QwenImage21Transformer2DModel; ComfyUI 0.37 and newer).

A class of its own, not Qwen-Image's: one token per latent pixel, single-stream blocks over [prefix | target image],
where the prefix is the prompt with any reference images' tokens spliced in (`build_sequence`). Attention is block
causal: the prefix attends causally within itself and never to the target; the target attends to everything. The
prefix is modulated at timestep 0, so its keys and values are the same on every step, and the model keeps them in a
prefix cache of its own for the sampling run: the first step runs the prefix through each block alone (the block
called with `prefix_len` equal to its rows) and then the target alone against the cached prefix; later steps run the
target alone. Where that cache is off (hooks, no room) every block runs [prefix | target] with `prefix_len` rows of
prefix. The adapter hooks modules, never the forward's code:
- a block over the prefix alone runs as it is, past the engine's K/V cache;
- the first block over the target gathers its tokens; every block gets their RoPE rows, and its attention function
  wrapped: the target's keys and values go through the K/V cache, then the model's own function attends the prefix's
  queries and the target's running ones over [prefix | every target token] (its block-causal segments end the
  target's at the whole sequence's end), filling the model's prefix cache where it does that;
- `proj_out`'s output is scattered back to every token;
- newer ComfyUI's Fun ControlNet (block replacements running a tower of the model's blocks; with them on the model, the
  model keeps no prefix cache) runs on the running tokens too, its tower with K/V cache layers of its own
  (qwen_image21_fun_controlnet.py).
The K/V cache holds the target's tokens only: the prefix's are complete on every step (computed, or the model's own).
"""
import torch

from . import qwen_image21_fun_controlnet
from .base import (FamilyAdapter, gather_image_after, gathered_freqs, patch_method, patch_module_forward,
                   runs_class_methods)

_MODULE = "comfy.ldm.qwen_image21.model"


class QwenImage21Family(FamilyAdapter):
    names = ("Qwen-Image 2.1",)
    handled_patches = (qwen_image21_fun_controlnet.PATCH_CLASS,)

    def matches(self, diffusion_model) -> bool:
        return (runs_class_methods(diffusion_model, _MODULE, "QwenImage21Transformer2DModel",
                                   ("forward", "_forward", "build_sequence"))
                and all(runs_class_methods(block, _MODULE, "QwenImage21TransformerBlock", ("forward",))
                        for block in diffusion_model.transformer_blocks))

    def patch_size(self, diffusion_model) -> int:
        return 1                # a token per latent pixel (the latent is already packed to 64 channels)

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        return [(image_tokens, diffusion_model.inner_dim)] * len(diffusion_model.transformer_blocks)

    def patch_cache_layers(self, diffusion_model, transformer_options, image_tokens):
        return qwen_image21_fun_controlnet.cache_layers(transformer_options, image_tokens, diffusion_model.inner_dim)

    def install(self, patcher, slot) -> None:
        for i in range(len(patcher.model.diffusion_model.transformer_blocks)):
            patch_method(patcher, slot, f"diffusion_model.transformer_blocks.{i}.forward", before=_block_inputs)
        patch_method(patcher, slot, "diffusion_model._forward", before=_fun_controlnet_on_running_tokens)
        patch_module_forward(patcher, slot, "diffusion_model.proj_out", after=lambda call, out: call.scatter(out))


def _fun_controlnet_on_running_tokens(call, arguments) -> None:
    if arguments.get("transformer_options") is not None:
        arguments["transformer_options"] = qwen_image21_fun_controlnet.forward_options(
            call, arguments["transformer_options"], _through_the_cache)


def _block_inputs(call, arguments) -> None:
    x, prefix, attn_fn = arguments["x"], int(arguments["prefix_len"]), arguments["attn_fn"]
    if prefix == x.shape[1]:                        # the prefix alone, filling the model's prefix cache
        arguments["attn_fn"] = _past_the_cache(call, attn_fn)
        return
    if call.image_rows is None:                     # the first block over the target
        arguments["x"] = gather_image_after(call, x, prefix)
    if not call.dense:
        arguments["pe"] = gathered_freqs(call, arguments["pe"], prefix=prefix)     # (1, tokens, 1, ., 2, 2)
    arguments["attn_fn"] = _through_the_cache(call, attn_fn, prefix)


def _past_the_cache(call, attn_fn):
    """The model's attention function, its calls to ComfyUI's attention passing the engine's K/V cache by."""
    def attn(*args, **kwargs):
        call.passthrough += 1
        try:
            return attn_fn(*args, **kwargs)
        finally:
            call.passthrough -= 1
    return attn


def _through_the_cache(call, attn_fn, prefix: int):
    """The block's attention function for (rows, prefix + n, heads, head dim) queries, keys and values: the target's
    keys and values go through the K/V cache, and the model's own function attends over [prefix | every target token]
    (past the cache), so it also fills the model's prefix cache where it does that."""
    def attn(q, k, v, heads, preferred_attention=None):
        prefix_out = []

        def attend(q_, k_full, v_full, heads_, **kwargs):      # (rows, n | every target token, heads * head dim)
            q_, k_full, v_full = (t.unflatten(2, q.shape[2:]) for t in (q_, k_full, v_full))
            if prefix:
                q_, k_full, v_full = (torch.cat([whole[:, :prefix], t], dim=1) for whole, t in
                                      ((q, q_), (k, k_full), (v, v_full)))
            out = _past_the_cache(call, attn_fn)(q_, k_full, v_full, heads, preferred_attention=preferred_attention)
            prefix_out.append(out[:, :prefix])
            return out[:, prefix:]

        target = call.attention(attend, q[:, prefix:].flatten(2), k[:, prefix:].flatten(2), v[:, prefix:].flatten(2),
                                heads, {})
        return torch.cat([prefix_out[0], target], dim=1) if prefix else target
    return attn
