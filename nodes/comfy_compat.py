"""Every place where the pack adapts to what the running ComfyUI has: feature probes, never version
numbers, gathered here so the differences we handle can be read in one place. What the sampling device
computes (float64, float8): sdit_core/device_support.py."""
import dataclasses
import inspect
import logging
from typing import Callable, List, Optional

import torch

from ..sdit_core.trace import PIXELS_PER_LATENT


def dynamic_vram(patcher) -> bool:
    """Does ComfyUI stage this model's weights on demand (dynamic VRAM: `ModelPatcherDynamic`, newer
    ComfyUI, default on CUDA there) instead of loading them by plan?"""
    is_dynamic = getattr(patcher, "is_dynamic", None)
    return bool(is_dynamic()) if callable(is_dynamic) else False


def weights_may_move(patcher) -> bool:
    """Can the model's weights change address during a forward? Low-VRAM mode streams them in block by
    block; dynamic VRAM stages them on demand and never sets `model_lowvram`. A replayed CUDA graph would
    read freed memory."""
    return bool(getattr(patcher.model, "model_lowvram", False)) or dynamic_vram(patcher)


def global_module_hooks() -> bool:
    """Are torch forward hooks registered for every module (`register_module_forward_hook` and its pre-hook
    kind)? Their tables are torch's internals: absent ones count as none."""
    from torch.nn.modules import module
    return bool(getattr(module, "_global_forward_pre_hooks", None) or getattr(module, "_global_forward_hooks", None))


def inference_dtype(base_model) -> torch.dtype:
    """The dtype the model computes in (its keys and values): newer ComfyUI says it (`get_dtype_inference`);
    older ones compute in `manual_cast_dtype` where weights are cast, else in the weights' dtype."""
    probe = getattr(base_model, "get_dtype_inference", None)
    dtype = probe() if callable(probe) else getattr(base_model, "manual_cast_dtype", None) or base_model.get_dtype()
    return dtype or torch.float32       # a model built without a dtype computes in the latent's: float32


def models_loaded_beside(prepared, prepare_kwargs: dict) -> Optional[list]:
    """The models ComfyUI's prepare_sampling loaded beside the sampled one (its result: model, conds,
    models), or None where its load is not to be planned again: another result, or a load forced whole or
    offloaded (`force_full_load`, `force_offload`: newer ComfyUI's training and full-load paths)."""
    if prepare_kwargs.get("force_full_load") or prepare_kwargs.get("force_offload"):
        return None
    return list(prepared[2]) if isinstance(prepared, tuple) and len(prepared) == 3 else None


def compiler_opaque(function: Callable, callees_compiled: bool = False) -> Callable:
    """`function` runs eagerly inside a model under torch.compile (ComfyUI's TorchCompileModel node):
    dynamo would otherwise trace the engine's per-forward bookkeeping (lists that grow per layer,
    per-forward objects) and guard on it, recompiling layer after layer. `callees_compiled`: only
    the function's own frame runs eagerly, the model code it calls is still compiled."""
    disable = getattr(getattr(torch, "compiler", None), "disable", None)     # torch >= 2.1
    return function if disable is None else disable(function, recursive=not callees_compiled)


def on_multigpu_thread(transformer_options: dict) -> bool:
    """Is this forward one of several that newer ComfyUI runs at once on several GPUs (a thread each)?"""
    return transformer_options.get("multigpu_thread_device") is not None


def leading_latent_shape(x_shape, latent_shapes) -> tuple:
    """The shape of the latent the model's tokens come from. Newer ComfyUI samples a latent of several parts
    (LTX-2's video and audio: a NestedTensor) packed as (batch, 1, every part's values in turn) and says the
    parts' shapes in `latent_shapes` (outer_sample's argument, a condition of every model call): the first part's
    (the video), for `x_shape`'s batch; a latent of one part: `x_shape` itself."""
    if latent_shapes is None or len(latent_shapes) < 2:
        return tuple(x_shape)
    return (int(x_shape[0]),) + tuple(int(d) for d in latent_shapes[0][1:])


def first_part(samples):
    """A LATENT's samples, or where newer ComfyUI holds a latent of several parts (a NestedTensor: LTX-2's video and
    audio) its first part, the video's."""
    return samples.unbind()[0] if getattr(samples, "is_nested", False) and hasattr(samples, "unbind") else samples


def takes_reference_latents(diffusion_model) -> bool:
    """Does this model's forward take reference latents (`ref_latents`: newer ComfyUI's Lumina 2 /
    Z-Image Omni), which ComfyUI fills from a prompt's `reference_latents`? Older ones ignore them."""
    forward = getattr(type(diffusion_model), "_forward", None)
    return forward is not None and "ref_latents" in inspect.signature(forward).parameters


def patchifies_frames(diffusion_model) -> bool:
    """Does this Qwen-Image model patchify latents of more than one frame (newer ComfyUI: Qwen-Image-Layered's
    layers as frames)? Tried on a two-frame zero latent of one token a frame: older ones reshape as for one
    frame and fail. `process_img` is a reshape without weights, so this runs nothing of the model."""
    p = int(diffusion_model.patch_size)
    try:
        tokens = diffusion_model.process_img(torch.zeros(1, 1, 2, p, p))[0]
    except (AttributeError, TypeError, RuntimeError):      # no such patchify, or one frame only
        return False
    return tokens.shape[1] == 2


def lumina_takes_frames(diffusion_model) -> bool:
    """Does this Lumina model (`NextDiT`) take latents with a frame axis (newer ComfyUI: Ming-Image's Wan 2.1 VAE
    latents, Ming-Image-Layer's composite and layers as frames)? Its `unpatchify` then takes the frame count and its
    own `_forward` the reference frames that came with them (Z-Image pixel space's `_forward`, which unpacks four
    dimensions, does not)."""

    def takes(method, parameter):
        return method is not None and parameter in inspect.signature(method).parameters
    cls = type(diffusion_model)
    return takes(getattr(cls, "unpatchify", None), "frames") and takes(getattr(cls, "_forward", None), "ref_frames")


def references_follow_as_frames(diffusion_model) -> bool:
    """Does ComfyUI hand this Lumina model a prompt's reference latents as clean frames after the image's tokens
    (`ref_frames`: Ming-Image, marked by its `__ming_image__` buffer) rather than as Z-Image Omni's references
    before them (`ref_latents`)?"""
    return hasattr(diffusion_model, "__ming_image__")


def pixels_per_latent(base_model) -> int:
    """Image pixels per latent pixel (side) of the model's VAE: the latent format's `spacial_downscale_ratio`
    (newer ComfyUI); 8 where a ComfyUI does not say (0.3.75: right for all but Wan 2.2 TI2V 5B, HunyuanVideo 1.5
    and HunyuanImage 2.1, whose maps are then drawn smaller than their pictures unless a picture is given)."""
    return int(getattr(getattr(base_model, "latent_format", None), "spacial_downscale_ratio", PIXELS_PER_LATENT))


def context_window_frames(transformer_options: dict, handler) -> Optional[List[int]]:
    """The frames of the run's video that this forward's latent holds, in order, when ComfyUI's context
    windows (`handler`: model_options["context_handler"]) split the video along its frame axis; None
    otherwise. ComfyUI hands the window to the model in transformer_options["context_window"] (its
    `index_list`); newer ComfyUI puts a causal anchor frame before it (`causal_anchor_index`) and the
    frames the handler retains (`latent_retain_index_list`) at their own positions. The engine checks
    the count against the latent (guide frames appended after the window make it differ: dense)."""
    window = transformer_options.get("context_window")
    frames = getattr(window, "index_list", None)
    if handler is None or frames is None or getattr(window, "dim", None) != 2:     # (B, C, frames, H, W)
        return None
    frames = [int(f) for f in frames]
    anchor = getattr(window, "causal_anchor_index", None)
    if anchor is not None and anchor >= 0:
        frames = [int(anchor)] + frames
    for position in getattr(handler, "latent_retain_index_list", None) or []:
        if 0 <= position < len(frames):
            frames[position] = position
    return frames


def weight_hooks_key(base_model) -> tuple:
    """The hooks a model call runs with (ComfyUI's conditioning hooks: a LoRA on some prompts, its strength scheduled
    by keyframes), as (hook, strength) pairs: ComfyUI patches the weights for each group of prompts before the call
    (`ModelPatcher.apply_hooks` sets the patcher's `current_hooks`). () where none, or where ComfyUI has no hooks."""
    hooks = getattr(getattr(base_model, "current_patcher", None), "current_hooks", None)
    return tuple(sorted((id(getattr(hook, "hook_ref", hook)), float(getattr(hook, "strength", 1.0)))
                        for hook in getattr(hooks, "hooks", ())))


def context_window_key(transformer_options: dict) -> Optional[tuple]:
    """Which of ComfyUI's context windows a model call runs: (the axis, its indices), or None outside windows."""
    window = transformer_options.get("context_window")
    indices = getattr(window, "index_list", None)
    return None if indices is None else (getattr(window, "dim", None), tuple(int(i) for i in indices))


def context_windows_off_frames(handler, latent_shape) -> Optional[int]:
    """The axis along which ComfyUI's context windows cut the latent where that is not a video's frame axis (an
    image's height or width: Context Windows (Manual)'s `dim`, as PiD's tiling uses it), or None: no windows, or
    windows over the frames. ComfyUI runs windows only where the latent is longer than one along the axis."""
    dim = getattr(handler, "dim", None)
    if dim is None or not 0 <= int(dim) < len(latent_shape) or (len(latent_shape) == 5 and int(dim) == 2):
        return None
    length = getattr(handler, "context_length", None)
    return int(dim) if length is None or int(latent_shape[int(dim)]) > int(length) else None


def context_windows_at_start(handler, base_model, noise_shape, sigmas) -> Optional[List[int]]:
    """The frames of each context window ComfyUI's `handler` runs at the first of `sigmas` over a latent of
    `noise_shape`, newer ComfyUI's causal anchor frame (`causal_window_fix`: the frame before a window
    that does not start the video) included; None where the video is not split along its frame axis or
    the handler cannot be asked (then the run is planned as one window)."""
    windows_of, set_step = getattr(handler, "get_context_windows", None), getattr(handler, "set_step", None)
    if not callable(windows_of) or getattr(handler, "dim", None) != 2 or len(noise_shape) != 5:
        return None
    if int(noise_shape[2]) <= int(getattr(handler, "context_length", 0) or 0):
        return None                                 # ComfyUI runs no windows over a short enough video
    options = {"transformer_options": {"sample_sigmas": sigmas}}
    try:
        if callable(set_step):                      # the uniform schedules place windows by step
            set_step(sigmas[:1], options)
        windows = windows_of(base_model, torch.empty(tuple(noise_shape), device="meta"), options)
        frames = [list(window.index_list) for window in windows]
    except Exception as error:      # noqa: BLE001 - a plan is best effort: whatever a handler raises, sample on
        logging.warning("SDiT: ComfyUI's context windows could not be read for the memory plan (%s)", error)
        return None
    anchor = bool(getattr(handler, "causal_window_fix", False))
    return [len(f) + int(anchor and bool(f) and int(f[0]) >= 1) for f in frames]


def sampler_name(sampler) -> str:
    """The k-diffusion name of a KSAMPLER ("euler_ancestral", "lcm", ...), read off its function
    ("sample_euler_ancestral"); '' when it cannot be told."""
    name = getattr(getattr(sampler, "sampler_function", None), "__name__", "") or ""
    return name[len("sample_"):] if name.startswith("sample_") else name


# Fields that newer ComfyUI requires in a model's params dataclass, with the value that keeps the
# behaviour of the versions before them (Flux family: no text position ids, no pooled-vector input;
# HunyuanVideo: the 1.5 additions off).
_FIELDS_ADDED_LATER = {"txt_ids_dims": [], "vec_in_dim": None, "byt5": False, "meanflow": False,
                       "use_cond_type_embedding": False, "vision_in_dim": None,
                       "meanflow_sum": False}     # HunyuanVideo: only read when meanflow is on


def complete_params(params, config: dict) -> dict:
    """`config` with every field `params` (a dataclass) requires and `config` lacks set to its neutral
    value, so a config written for one ComfyUI builds the model on another."""
    completed = dict(config)
    for field in dataclasses.fields(params):
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if required and field.name not in completed:
            if field.name not in _FIELDS_ADDED_LATER:
                raise TypeError(f"{params.__name__} requires '{field.name}', which this pack does not know a "
                                f"neutral value for")
            completed[field.name] = _FIELDS_ADDED_LATER[field.name]
    return completed


def flux_unet_config(config: dict) -> dict:
    """A Flux / Flux 2 / Chroma unet config that the running ComfyUI's params dataclass accepts."""
    import comfy.ldm.chroma.model
    import comfy.ldm.flux.model
    params = comfy.ldm.chroma.model.ChromaParams if config.get("image_model") == "chroma" \
        else comfy.ldm.flux.model.FluxParams
    return complete_params(params, config)


def hunyuan_video_unet_config(config: dict) -> dict:
    import comfy.ldm.hunyuan_video.model
    return complete_params(comfy.ldm.hunyuan_video.model.HunyuanVideoParams, config)


# Parameter names that changed between ComfyUI versions: RMSNorm's gain is `scale` in older Flux code
# and `weight` in newer (ComfyUI's own RMSNorm op).
_RENAMED_SUFFIXES = ((".scale", ".weight"), (".weight", ".scale"))


def load_state_dict_strictly(module, state: dict) -> None:
    """Loads `state` into `module` after mapping renamed keys to the names the running ComfyUI uses;
    then strictly, so anything else that does not match is an error."""
    expected = set(module.state_dict())
    mapped = {}
    for key, value in state.items():
        if key not in expected:
            for old, new in _RENAMED_SUFFIXES:
                renamed = key[:-len(old)] + new
                if key.endswith(old) and renamed in expected and renamed not in state:
                    key = renamed
                    break
        mapped[key] = value
    module.load_state_dict(mapped, strict=True)


def attention_takes_grouped_kv(attention_forward: Callable) -> bool:
    """Does this attention module hand ComfyUI's attention keys and values with fewer heads than its queries
    (grouped-query attention, `enable_gqa`: newer ComfyUI's OmniGen2) instead of repeating them to the queries'
    heads first (0.3.75)? Read in its source, the one place where the two differ; where the source cannot be
    read, the repeated (larger) count is assumed, so the memory plan never falls short."""
    try:
        return "enable_gqa" in inspect.getsource(attention_forward)
    except (OSError, TypeError):
        return False


def takes_transformer_options(module) -> bool:
    """Does this module's forward take ComfyUI's `transformer_options` (where its attention finds the override)?
    A ControlNet's network calls its blocks without them; the pack hands them in (sparse_controlnet.py). The class's
    forward: an object patch (ours, from an earlier run) may sit on the module."""
    return "transformer_options" in inspect.signature(type(module).forward).parameters


def kandinsky5_attends_sparsely(diffusion_model) -> bool:
    """Does this Kandinsky 5 switch its visual blocks to its own block-sparse attention (NABLA, over tokens in its own
    "fractal" order) on long videos (`sparse_params`: newer ComfyUI, read in the index at comfyanonymous 0c84b76; not
    in 0.3.75 or 0.33)?"""
    blocks = getattr(diffusion_model, "visual_transformer_blocks", None)
    return bool(blocks) and "sparse_params" in inspect.signature(type(blocks[0]).forward).parameters


def sd3_block_mixing_takes_transformer_options() -> bool:
    """Does SD3's joint block (JointBlock.forward -> block_mixing, keyword arguments passed through) hand attention
    ComfyUI's `transformer_options`? SD3's ControlNet calls its joint blocks without them (sd3_controlnet.py)."""
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
    mixing = getattr(mmdit, "_block_mixing", None)
    return mixing is not None and "transformer_options" in inspect.signature(mixing).parameters


def zimage_control_blocks_take_transformer_options(control_model) -> bool:
    """Do the Z-Image Fun ControlNet's blocks (ComfyUI's ZImage_Control: Lumina's JointTransformerBlock, which takes
    ComfyUI's `transformer_options`, or a subclass passing its keyword arguments on) accept them? ComfyUI calls them
    without; the pack hands them in so their attention reaches the K/V cache (zimage_fun_controlnet.py)."""
    import comfy.ldm.lumina.model as lumina
    if "transformer_options" not in inspect.signature(lumina.JointTransformerBlock.forward).parameters:
        return False
    blocks = list(getattr(control_model, "control_layers", [])) + list(getattr(control_model, "control_noise_refiner", []))
    return all(isinstance(block, lumina.JointTransformerBlock) and (
        takes_transformer_options(block) or any(p.kind is inspect.Parameter.VAR_KEYWORD
                                                for p in inspect.signature(type(block).forward).parameters.values()))
        for block in blocks)


def ltxv_guide_attention_mask():
    """The class of LTX-Video's guide attention mask (newer ComfyUI: a guide of strength other than 1, or with a pixel
    mask, scales attention to its tokens by position, `GuideAttentionMask`, handed to every block's self-attention),
    or None where ComfyUI has none."""
    import comfy.ldm.lightricks.model
    return getattr(comfy.ldm.lightricks.model, "GuideAttentionMask", None)
