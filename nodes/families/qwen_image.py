"""Qwen-Image (comfy/ldm/qwen_image/model.py).

`_forward` patchifies the latent (a single-frame 5-D latent; in newer ComfyUI also Qwen-Image-Layered's
layers as frames, numbered (frames, rows, cols) as the pack numbers video tokens), appends reference-latent tokens,
builds RoPE from [text ids | image ids] with `pe_embedder`, embeds image tokens with the per-token
`img_in`, runs double-stream blocks with joint attention over [text | image], and projects back with
the per-token `proj_out`. The adapter hooks those three per-token modules (never the forward code):
- a DIFFUSION_MODEL wrapper notes the text length, gathers ControlNet residuals and, on sparse forwards, hands
  the DiffSynth ControlNet's block patch the running tokens' rows of its control image (diffsynth_controlnet.py);
- `pe_embedder` gets the image part of its ids gathered, `img_in` the image tokens;
- `proj_out`'s output is scattered back to the full grid.
Reference tokens follow the grid and always run; where newer ComfyUI marks them by position
(`timestep_zero_index`, Qwen-Image-Edit-2511), each block gets that position in the gathered sequence. ComfyUI's
Flux KV Cache takes the references out after `img_in` once it keeps their keys: the engine follows it
(ForwardCall.dropped_extras).
"""
import functools
import inspect

import comfy.patcher_extension as patcher_extension

from ..comfy_compat import compiler_opaque, patchifies_frames
from ..neighbours import FLUX_KV_CACHE_PATCH
from .base import (FamilyAdapter, gather_control, patch_method, patch_module_forward, reference_latents,
                   runs_class_methods)
from .diffsynth_controlnet import PATCH_CLASS as DIFFSYNTH_PATCH, token_sparse_options

WRAPPER_KEY = "comfyui_sdit_qwen_image"


class QwenImageFamily(FamilyAdapter):
    names = ("Qwen-Image",)
    handled_patches = (DIFFSYNTH_PATCH, FLUX_KV_CACHE_PATCH)   # the Flux KV Cache: gathered at img_in, before it

    def matches(self, diffusion_model) -> bool:
        # A subclass with a forward of its own is another model (Nunchaku's 4-bit Qwen-Image: blocks of its own whose
        # attention does not take ComfyUI's transformer_options)
        return runs_class_methods(diffusion_model, "comfy.ldm.qwen_image.model", "QwenImageTransformer2DModel",
                                  ("forward", "_forward"))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size)

    def takes_frames(self, diffusion_model) -> bool:
        return patchifies_frames(diffusion_model)

    def sequence_references(self, diffusion_model, values):
        return reference_latents(values)

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        return [(text_tokens + image_tokens, diffusion_model.inner_dim)] * len(diffusion_model.transformer_blocks)

    def install(self, patcher, slot) -> None:
        signature = inspect.signature(patcher.model.diffusion_model._forward)

        @compiler_opaque
        def note(args, kwargs):
            call = slot.current_call()
            if call is None:
                return args, kwargs
            kwargs["control"] = gather_control(call, kwargs.get("control"))      # ComfyUI passes it by name
            bound = signature.bind(*args, **kwargs)      # by the model's own signature: unknown arguments pass through
            call.text_len = bound.arguments["context"].shape[1]
            if bound.arguments.get("transformer_options") is not None:
                bound.arguments["transformer_options"] = token_sparse_options(call, bound.arguments["transformer_options"])
            return bound.args, bound.kwargs

        @functools.partial(compiler_opaque, callees_compiled=True)
        def note_text_and_control(executor, *args, **kwargs):
            args, kwargs = note(args, kwargs)
            return executor(*args, **kwargs)

        patcher.remove_wrappers_with_key(patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)   # last patch wins
        patcher.add_wrapper_with_key(patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, note_text_and_control)
        patch_module_forward(patcher, slot, "diffusion_model.pe_embedder", before=self._gather_image_ids)
        patch_module_forward(patcher, slot, "diffusion_model.img_in", before=lambda call, x: call.gather(x))
        patch_module_forward(patcher, slot, "diffusion_model.proj_out", after=lambda call, out: call.scatter(out))
        # newer ComfyUI: edit references that take timestep 0 start at `timestep_zero_index` (the dense grid size);
        # each block's sparse calls may replay from a CUDA graph of its own (the sparse part starts inside `_forward`)
        for i in range(len(patcher.model.diffusion_model.transformer_blocks)):
            patch_method(patcher, slot, f"diffusion_model.transformer_blocks.{i}.forward", before=self._map_reference_start,
                         graph=True)

    @staticmethod
    def _map_reference_start(call, arguments):
        if arguments.get("timestep_zero_index") is not None:
            arguments["timestep_zero_index"] = call.position_after_gather(int(arguments["timestep_zero_index"]))

    @staticmethod
    def _gather_image_ids(call, ids):
        import torch
        text = call.text_len
        return torch.cat([ids[:, :text], call.gather(ids[:, text:])], dim=1)
