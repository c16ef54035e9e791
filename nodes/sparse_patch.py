"""Puts the token-sparse engine on a clone of a ComfyUI MODEL, through ModelPatcher mechanisms only.

- OUTER_SAMPLE wrapper: creates the run state (policy, caches) when sampling starts and drops the
  caches when it ends, even on error or interrupt, so every run starts clean;
- PREPARE_SAMPLING wrapper: puts the K/V cache in ComfyUI's memory plan (memory_plan.py);
- APPLY_MODEL wrapper: opens one engine forward per model call (its stream, sigma and image grid);
- `optimized_attention_override`: routes every attention call through the engine's K/V cache,
  chaining any override another node installed before us (or after us: put back on top when sampling starts);
- the family adapter's object patch: gathers active tokens and scatters the output;
- ComfyUI's ControlNets whose network has an adapter run on the model's tokens too (sparse_controlnet.py).
The model passed in is never modified: everything is installed on a clone.
"""
import functools
import inspect
import math
import time
from typing import Any, Callable, Optional

import comfy.patcher_extension as patcher_extension

from ..kernels.fp8_dequant import dequantize_fp8
from ..kernels.kv_write import kv_write
from ..sdit_core.count_grid import count_grid
from ..sdit_core.engine import ForwardCall, SparseRun
from ..sdit_core.forward_graphs import default_backend
from ..sdit_core.policy import TokenPolicy
from ..sdit_core.tokens import is_latent_shape, leading_part, tokens_inside
from .families import adapter_for
from .families.base import unwrap_ours
from .neighbours import (ModelCodeCheck, check_attention_went_through, check_neighbours,
                         explain_failed_sparse_forward)
from .sampler_support import warn, why_dense
from .sparse_controlnet import controlnet_cache_layers, run_controlnets_with_tokens
from .comfy_compat import (compiler_opaque, context_window_frames, context_window_key, context_windows_at_start,
                           leading_latent_shape, models_loaded_beside, weight_hooks_key)
from .memory_plan import check_cache_fits, evaluated_prompts, make_room_for_cache, planned_cache_bytes
from .errors import SDiTInputError
from .sampling import check_kv_cache_on, check_latent_kind, tiles_by_patch

WRAPPER_KEY = "comfyui_sdit_token_sparse"
# Names of optimized_attention's positional parameters after (q, k, v, heads).
_ATTENTION_POSITIONAL = ("mask", "attn_precision", "skip_reshape", "skip_output_reshape")


class RunSlot:
    """The run in progress on one patched model, and the last finished one (for traces)."""

    def __init__(self):
        self.run: Optional[SparseRun] = None
        self.last_run: Optional[SparseRun] = None
        self.attention_override: Optional[Callable] = None     # ours in charge of the run (ControlNets get it)
        self.object_patches: dict = {}                          # the run's, as ComfyUI puts them on the model

    @compiler_opaque        # read from inside the model: eager under torch.compile
    def current_call(self) -> Optional[ForwardCall]:
        return self.run.current if self.run is not None else None


def engine_attention(slot: RunSlot, previous: Optional[Callable]) -> Callable:
    """An `optimized_attention_override` that routes each attention call of an open forward through the engine's
    K/V cache; the attention itself is computed by `previous` (another node's override: a chosen backend) or by
    ComfyUI's function. Only the slot's override in charge routes: one that another node's override called on
    top of it passes the call through (the engine saw it already)."""
    @compiler_opaque
    def attention_override(func, *args, **kwargs):
        if previous is None:
            attend = func
        else:
            def attend(*a, **kw):
                return previous(func, *a, **kw)
        call = slot.current_call()
        if call is None or slot.attention_override is not attention_override:
            return attend(*args, **kwargs)
        kwargs = dict(kwargs)
        q, k, v = args[:3]
        heads = args[3] if len(args) > 3 else kwargs.pop("heads")   # SD3 passes heads by keyword
        for name, value in zip(_ATTENTION_POSITIONAL, args[4:]):
            kwargs[name] = value
        return call.attention(attend, q, k, v, heads, kwargs)

    attention_override.sdit_wraps = previous
    return attention_override


# transformer_options flags that switch parts of LTX-2's blocks off for a pass (comfy/ldm/lightricks/av_model.py)
_LTX2_PASS_FLAGS = ("run_vx", "run_ax", "a2v_cross_attn", "v2a_cross_attn")


def _stream_key(transformer_options: dict):
    """The prompts a call runs, and which of the model's blocks other nodes replace or perturb for it: guidance
    that evaluates a perturbed network within a step (Skip Layer Guidance: the cond prompt again with blocks
    skipped; newer ComfyUI's LTX-Video STG: with blocks' self-attention skipped; LTX-2 guiders' modality-isolated
    pass: without the attention between video and audio) is another network, whose K/V cache and cached output are
    its own."""
    uuids = transformer_options.get("uuids")
    prompts = tuple(uuids) if uuids else tuple(transformer_options.get("cond_or_uncond", ()))
    replaced = frozenset((kind, key) for kind, patches in transformer_options.get("patches_replace", {}).items()
                         for key in patches)
    replaced |= {("stg self-attention", block) for block in transformer_options.get("stg_self_attn_blocks") or ()}
    # LTX-2's guiders evaluate the cond prompt again with a stream or the attention between video and audio off
    replaced |= {("ltx-2 pass off", flag) for flag in _LTX2_PASS_FLAGS if transformer_options.get(flag) is False}
    return prompts, replaced


def _conditions_key(conditions: dict):
    """Which conditions a model call gets (their names): a guider that evaluates a prompt again without one of them
    (LTX-2's identity guidance: the cond prompt without its reference voice) runs another network on the same
    prompts, whose K/V cache and cached output are its own, even where the image's tokens are the same."""
    return tuple(sorted(name for name, value in conditions.items() if value is not None))


def apply_token_sparse(model, make_policy: Callable[[SparseRun], TokenPolicy], node: str,
                       on_run_end: Optional[Callable[[SparseRun, float], None]] = None,
                       graph_backend: Callable[[], Any] = default_backend, kv_cache: Optional[str] = None,
                       method: str = "region-adaptive sampling",
                       on_run_options: Optional[Callable[[dict], None]] = None):
    """Returns (patched clone, slot). `make_policy(run)` is called at every sampling start;
    `on_run_end(run, seconds)` after every completed sampling run; `on_run_options(model_options)` when sampling
    starts, with the run's own copy of the model options (CFGGuider.sample makes one), where nodes applied after
    ours may have put things after ours. `graph_backend()` gives each run
    its CUDA-graph backend, or None to run every forward eagerly (default: SDIT_CUDA_GRAPHS).
    `kv_cache`: how the K/V cache stores its rows (kv_cache.STORES; None: the model's dtype)."""
    adapter = adapter_for(model, node)
    check_neighbours(model, node, adapter.handled_patches)
    patch_size = adapter.patch_size(model.model.diffusion_model)
    temporal_patch = adapter.temporal_patch(model.model.diffusion_model)
    takes_frames = adapter.takes_frames(model.model.diffusion_model)
    patched = model.clone()
    slot = RunSlot()
    adapter.install(patched, slot)
    check_model_code = ModelCodeCheck(patched)

    def main_stream(x, sigma: float, transformer_options: dict, conditions: dict):
        """The (stream key, network) of a model forward. The key is (its lineage, the weight hooks it runs with): the
        lineage its prompts and perturbations, the conditions it gets, the device (a stream's K/V cache lives there:
        multi-GPU runs cond and uncond on different devices) and its context window (each a stream of its own; a
        step's windows: one evaluation); a hook keyframe that changes a LoRA's strength starts a new stream of the
        lineage, dense, which drops the old one."""
        lineage = (_stream_key(transformer_options), _conditions_key(conditions), str(x.device),
                   context_window_key(transformer_options))
        return (lineage, weight_hooks_key(model.model)), adapter.network(model.model.diffusion_model, sigma)

    def outer_sample(executor, *args, **kwargs):
        arguments = inspect.signature(executor.class_obj.outer_sample).bind(*args, **kwargs).arguments
        noise = arguments["noise"]
        latent_shape = leading_latent_shape(noise.shape, arguments.get("latent_shapes"))
        packed = tuple(noise.shape) != latent_shape         # a latent of several parts (LTX-2's video and audio)
        check_latent_kind(latent_shape, node, video=takes_frames)
        if not tiles_by_patch(latent_shape, patch_size):
            # the sampler nodes refuse such a latent before sampling; under another node's sampler (the Helios Pyramid
            # Sampler's smaller stages) the model pads it as it would alone
            warn(f"this run's latent ({latent_shape[-2]}x{latent_shape[-1]}) is not a multiple of the model's patch "
                 f"size {patch_size}: the model samples it alone", node)
            return executor(*args, **kwargs)
        alone = adapter.samples_alone(model.model.diffusion_model, latent_shape)
        if alone:           # the sampler nodes refuse it before sampling (refused_latent)
            warn(f"{alone}; this run is the model's own", node)
            return executor(*args, **kwargs)
        guider_patcher = getattr(executor.class_obj, "model_patcher", None)   # with every node applied after us
        sampled = guider_patcher if guider_patcher is not None else patched
        check_neighbours(sampled, node, adapter.handled_patches)
        run = SparseRun(TokenPolicy(), latent_shape, patch_size, write_rows=kv_write, graph_backend=graph_backend(),
                        kv_store=kv_cache, dequantize=dequantize_fp8, temporal_patch=temporal_patch)
        # few distinct token counts on a GPU (attention plans and CUDA graphs are per shape)
        run.count_grid = count_grid(getattr(patched.load_device, "type", "cpu"), math.prod(run.grid))
        run.policy = make_policy(run)
        model_options = getattr(executor.class_obj, "model_options", None) or {}
        run.context_handler = model_options.get("context_handler")     # ComfyUI's context windows, if any
        if run.context_handler is not None and packed:
            raise SDiTInputError(node, "model", "ComfyUI's context windows over a latent of several parts (LTX-2's "
                                 "video and audio) are not supported by region-adaptive sampling: remove the context "
                                 "windows node, or sample with KSampler")
        reason, advice = why_dense(run.policy, arguments.get("sampler"), int(arguments["sigmas"].shape[-1]) - 1,
                                   run.context_handler, latent_shape, method)
        if reason:                  # nothing to speed up: no cache kept, none written
            run.dense_only, run.note = True, reason
            warn(reason, node, advice)
        if arguments.get("denoise_mask") is not None:       # inpainting: only tokens inside the mask are picked
            mask = arguments["denoise_mask"]
            mask = leading_part(mask, latent_shape) if packed else mask
            run.policy.selectable = tokens_inside(mask, latent_shape, patch_size, temporal_patch)
        windows = context_windows_at_start(run.context_handler, sampled.model, latent_shape, arguments["sigmas"])
        run.kv_planned_bytes = 0 if run.dense_only else planned_cache_bytes(     # dense throughout: no cache
            adapter, sampled, latent_shape, evaluated_prompts(executor.class_obj), kv_cache, patch_size, temporal_patch,
            windows, arguments.get("latent_shapes"),
            side_layers=functools.partial(controlnet_cache_layers, adapter))
        if not run.dense_only:      # this run's copies of the conds (ComfyUI's guider makes them per run)
            run_controlnets_with_tokens(getattr(executor.class_obj, "conds", None), slot, adapter, main_stream, node)
        check_kv_cache_on(sampled.load_device, kv_cache, node)
        check_cache_fits(run.kv_planned_bytes, sampled.load_device, kv_cache, node, windowed=windows is not None)
        run_options = model_options if model_options is not getattr(sampled, "model_options", None) else {}
        slot.attention_override = attention_in_charge(run_options)
        if on_run_options is not None and run_options:
            on_run_options(run_options)
        slot.object_patches = dict(sampled.object_patches)
        slot.run = run
        started = time.monotonic()
        try:
            result = executor(*args, **kwargs)
            if on_run_end is not None:
                on_run_end(run, time.monotonic() - started)
            return result
        finally:
            run.release()
            slot.attention_override = installed
            slot.run = None
            slot.last_run = run

    def attention_in_charge(run_options: dict) -> Callable:
        """Ours, on top of this run's attention override: a node applied after ours that set one of its own
        (ComfyUI's "Model Attention Backend", a SageAttention node) replaced ours; ours goes back on top for the
        run, that node's override computing the attention, as where it was applied before ours."""
        options = run_options.get("transformer_options")
        if options is None:
            return installed
        current = options.get("optimized_attention_override")
        if current is installed:
            return installed
        options["optimized_attention_override"] = engine_attention(slot, current)
        return options["optimized_attention_override"]

    def prepare_sampling(executor, model, noise_shape, conds, *args, **kwargs):
        loaded = executor(model, noise_shape, conds, *args, **kwargs)
        others = models_loaded_beside(loaded, kwargs)
        if slot.run is not None and others is not None:
            make_room_for_cache(slot.run.kv_planned_bytes, model, noise_shape, conds, others)
        return loaded

    def apply_model(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        run = slot.run
        latent_shape = leading_latent_shape(x.shape, kwargs.get("latent_shapes"))
        # (LTX-2 with its video switched off for the call, a guider's or a custom node's audio-only pass: no video
        # tokens run, none to skip)
        if run is None or not is_latent_shape(latent_shape) or transformer_options.get("run_vx") is False:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        check_model_code(executor.class_obj, slot.object_patches, node)
        sigma = float(t.flatten()[0])
        stream_key, network = main_stream(x, sigma, transformer_options, kwargs)
        call = run.open_forward(latent_shape, sigma, transformer_options.get("sample_sigmas"), stream_key,
                                frames=context_window_frames(transformer_options, run.context_handler), network=network,
                                lineage=stream_key[0])
        completed = False
        try:
            out = executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
            check_attention_went_through(call, transformer_options, node)
            completed = True
            return out
        except Exception as error:
            explained = error if call.dense else explain_failed_sparse_forward(error, transformer_options, node,
                                                                               slot.object_patches)
            if explained is error:
                raise
            raise explained from error
        finally:
            run.close_forward(call, completed)

    transformer_options = patched.model_options.setdefault("transformer_options", {})
    installed = engine_attention(slot, unwrap_ours(transformer_options.get("optimized_attention_override")))
    slot.attention_override = installed
    transformer_options["optimized_attention_override"] = installed
    for kind, wrapper in ((patcher_extension.WrappersMP.OUTER_SAMPLE, outer_sample),
                          (patcher_extension.WrappersMP.PREPARE_SAMPLING, prepare_sampling),
                          (patcher_extension.WrappersMP.APPLY_MODEL, apply_model)):
        patched.remove_wrappers_with_key(kind, WRAPPER_KEY)        # an earlier patch of ours: the last one wins
        patched.add_wrapper_with_key(kind, WRAPPER_KEY, wrapper)
    return patched, slot
