"""Other nodes on the same MODEL that region-adaptive sampling cannot work with. Each is named in a clear
error when sampling starts, instead of a wrong image or a shape error deep in a block.

Checked, and why:
- ComfyUI's "Model Sparse Attention" (BlockSparseAttention) puts its attention override on top of ours
  again at every step and computes attention itself, so our K/V cache would not see those calls.
- ComfyUI's "Flux KV Cache" takes the reference tokens out of the image sequence after the first step and
  appends their kept keys/values inside attention. The engine follows that (ForwardCall.dropped_extras) where the
  adapter counts those tokens at its gather (Flux, Qwen-Image, Krea 2: `FLUX_KV_CACHE_PATCH` in handled_patches);
  elsewhere the keys would not line up with the tokens that ran.
- KJNodes' Enhance-A-Video nodes (Wan, HunyuanVideo, LTX-Video; and their forks) replace each block's self-attention
  with one scaled by a score of every video token's queries and keys across frames (found by the transformer option
  they set): on a sparse step the score would be of the running tokens alone, folded into frames they do not fill.
- Newer ComfyUI's "Prism Sparse Attention Settings" with attention other than dense: Prism's video blocks then
  compute attention with a block-sparse kernel of their own over the whole video, past the engine.
- ComfyUI's "HiDream-O1 Patch Seam Smoothing" runs the diffusion model again inside each model call on the
  image rolled by part of a patch: those passes would see other image content at the tokens the engine picked,
  and one forward of the engine would run the model several times.
- Newest ComfyUI's "Seamless Tiling" (ModelPatchSeamlessTiling) evaluates the model two or four times a step on the
  latent rolled by half its size (a model_function_wrapper, found in the chain of such wrappers by its module):
  each rolled call would read the K/V cache and the skipped tokens' outputs of the call before it, other image
  content at the same places.
- Patches that add inputs of their own to the image tokens by position over the whole image (the
  DiffSynth, Uni3C and Z-Image Fun ControlNets of "Load Model Patch" and InfiniteTalk's audio attention on a model other
  than Qwen-Image, plain Wan and Z-Image (Lumina's NextDiT), whose adapters run them token-sparse
  (FamilyAdapter.handled_patches), InfiniteTalk's speaker map (several speakers with masks: every token's query),
  newer ComfyUI's MiniMax H3 and Qwen-Image 2.1 Fun ControlNets, block replacements running a control tower over the
  whole sequence, on other models than their own, whose adapters run the tower whole beside the sparse blocks):
  they need every token's hidden state, the sparse forward has only the running ones
  (without this check: a size mismatch inside the patch). Found by class name, theirs or a base's,
  so custom packs that subclass them are named too. Other packs' patches of that kind are unknown here:
  where a token-sparse forward fails inside the model while patches of other nodes are on it, the error
  names those patches (`explain_failed_sparse_forward`, called by the APPLY_MODEL wrapper).
Before every forward: the model's code that the family adapter patched is still the pack's (or calls it). A node that
swaps its own forward or blocks in for each call (step caches such as TeaCache, MagCache and WaveSpeed's First Block
Cache: a model function wrapper that patches the diffusion model's `forward_orig` or its list of blocks while it runs)
would run every token past the engine, and the run would silently be that node's alone, reuse a cached residual of
other tokens, or fail inside the model: an error naming the function found there
(`ModelCodeCheck`).
After every token-sparse forward: attention that went past the engine (an attention override another node set
over ours while sampling, a global replacement of ComfyUI's attention functions) saw only the tokens that ran: an
error, naming the override where there is one (`check_attention_went_through`, called by the APPLY_MODEL wrapper).
Works with (tested): EasyCache / LazyCache (whole skipped steps), other attention overrides that keep
the call's shape (chained under ours: one set by a node applied after ours, such as "Model Attention Backend", when
sampling starts), block patches (forwards stay eager), Skip Layer Guidance (its
perturbed network is a stream of its own: sparse_patch._stream_key), patches on the text tokens (USO's
style tokens before the prompt)."""
import weakref
from typing import Optional, Tuple

from .errors import SDiTInputError

_BLOCK_SPARSE_CALLBACK = "block_sparse_attention"     # its ON_PREPARE_STATE callback key
FLUX_KV_CACHE_PATCH = "KV_Attn_Input"                  # its attn1_patch class
_SEAM_SMOOTHING_WRAPPER = "hidream_o1_patch_seam_smoothing"   # its DIFFUSION_MODEL wrapper key
_PRISM_ATTENTION = "prism_attention"                   # Prism Sparse Attention Settings' transformer option
_ENHANCE_A_VIDEO = "enhance_weight"                     # the transformer option KJNodes' Enhance-A-Video nodes set
_SEAMLESS_TILING_MODULE = "nodes_seamless_tiling"      # the module of Seamless Tiling's model_function_wrapper
_CHANGES_ATTENTION = "changes attention in a way region-adaptive sampling cannot follow"
_BY_POSITION = ("adds its own inputs to the image tokens by their position in the whole image, while "
                "region-adaptive sampling runs only some of those tokens")
_POSITIONAL_PATCHES = {       # patch class -> the node that puts it on the model
    "DiffSynthCnetPatch": "Apply Qwen Image DiffSynth ControlNet",
    "ZImageControlPatch": "Apply Z-Image Fun ControlNet",
    "WanUni3CCnetPatch": "Apply Wan Uni3C ControlNet",
    "MultiTalkCrossAttnPatch": "WanInfiniteTalkToVideo",
    "MultiTalkGetAttnMapPatch": "WanInfiniteTalkToVideo",
    "MiniMaxH3FunControlBlockPatch": "Apply MiniMax H3 Fun ControlNet",     # a block replacement (newer ComfyUI)
    "QwenImage21FunControlBlockPatch": "Apply Qwen Image 2.1 Fun ControlNet",   # likewise (newest ComfyUI)
}


def conflicting_node(patcher, handled: Tuple[str, ...] = ()) -> Tuple[str, str]:
    """(display name, why) of a node on `patcher` that we cannot run with, or ('', ''). `handled`: patch classes
    of the table below that the model's adapter runs token-sparse (FamilyAdapter.handled_patches)."""
    import comfy.patcher_extension as patcher_extension
    get_callbacks = getattr(patcher, "get_callbacks", None)
    if callable(get_callbacks) and get_callbacks(patcher_extension.CallbacksMP.ON_PREPARE_STATE,
                                                 _BLOCK_SPARSE_CALLBACK):
        return "Model Sparse Attention", _CHANGES_ATTENTION
    get_wrappers = getattr(patcher, "get_wrappers", None)
    if callable(get_wrappers) and get_wrappers(patcher_extension.WrappersMP.DIFFUSION_MODEL, _SEAM_SMOOTHING_WRAPPER):
        return "HiDream-O1 Patch Seam Smoothing", ("runs the model again on the image shifted by part of a patch, "
                                                   "where other image content sits at the tokens region-adaptive "
                                                   "sampling picked")
    if any(getattr(f, "__module__", "").endswith(_SEAMLESS_TILING_MODULE)
           for f in _wrapper_chain(patcher.model_options.get("model_function_wrapper"))):
        return "Seamless Tiling", ("evaluates the model several times a step on the latent shifted by half its size, "
                                   "where region-adaptive sampling would reuse the unshifted tokens' keys and outputs "
                                   "at the same places")
    options = patcher.model_options.get("transformer_options", {})
    if options.get(_PRISM_ATTENTION, "dense") != "dense":
        return "Prism Sparse Attention Settings", ("with attention other than dense computes the video's attention "
                                                   "with Prism's own block-sparse kernel, past region-adaptive "
                                                   "sampling's K/V cache (set its attention to dense)")
    if options.get(_ENHANCE_A_VIDEO):
        return "Enhance-A-Video (KJNodes)", ("scales each block's self-attention by a score of every video token's "
                                               "queries and keys across frames, while region-adaptive sampling runs "
                                               "only some of those tokens")
    patches = options.get("patches", {})
    if FLUX_KV_CACHE_PATCH not in handled and any(type(p).__name__ == FLUX_KV_CACHE_PATCH
                                                  for p in patches.get("attn1_patch", [])):
        return "Flux KV Cache", ("takes the reference images' tokens out of the sequence, which region-adaptive "
                                 "sampling follows on Flux, Qwen-Image and Krea 2 only")
    listed = [patch for patch_list in patches.values()
              for patch in (patch_list if isinstance(patch_list, (list, tuple)) else ())]
    listed += [patch for by_block in options.get("patches_replace", {}).values() if isinstance(by_block, dict)
               for patch in by_block.values()]
    for patch in listed:
        for cls in type(patch).__mro__:
            if cls.__name__ in _POSITIONAL_PATCHES and cls.__name__ not in handled:
                return _POSITIONAL_PATCHES[cls.__name__], _BY_POSITION
    return "", ""


def _wrapper_chain(wrapper, most: int = 16) -> list:
    """A model_function_wrapper and the functions its closure keeps (a node that sets one keeps the wrapper it
    replaced there, to call on), transitively, at most `most` of them."""
    found, todo = [], [wrapper]
    while todo and len(found) < most:
        function = todo.pop()
        if not callable(function) or any(function is f for f in found):
            continue
        found.append(function)
        for cell in getattr(function, "__closure__", None) or ():
            try:
                todo.append(cell.cell_contents)
            except ValueError:          # a cell not filled yet
                pass
    return found


def other_patches(transformer_options: dict, object_patches: Optional[dict] = None) -> str:
    """The patches other nodes put on the model's blocks, by list and class, their block replacements and their object
    patches of the diffusion model's code ('' where none): what a sparse forward that failed inside the model is told
    to look at (a custom pack's patch that works by position over the whole image, which no check here knows).
    Compiled modules and functions (TorchCompileModel's) are the model's own code."""
    named = [f"{type(patch).__name__} ({kind})" for kind, patch_list in transformer_options.get("patches", {}).items()
             for patch in (patch_list if isinstance(patch_list, (list, tuple)) else ())]
    named += [f"{type(patch).__name__} (replaces {' '.join(map(str, block)) if isinstance(block, tuple) else block})"
              for by_block in transformer_options.get("patches_replace", {}).values() if isinstance(by_block, dict)
              for block, patch in by_block.items()]
    named += [f"{path} (object patch)" for path, value in (object_patches or {}).items()
              if path.startswith("diffusion_model.") and not hasattr(value, "sdit_wraps")
              and not hasattr(value, "_orig_mod") and not hasattr(value, "_torchdynamo_orig_callable")]
    return ", ".join(named)


def explain_failed_sparse_forward(error: Exception, transformer_options: dict, node: str,
                                  object_patches: Optional[dict] = None) -> Exception:
    """An error raised inside the model during a token-sparse forward, where other nodes' patches are on
    the model: named as such, with the patches (the original error chained). Otherwise the error itself:
    ours are clear already, out-of-memory and interrupts are what they say."""
    import torch
    patches = other_patches(transformer_options, object_patches)
    if (not patches or isinstance(error, (SDiTInputError, NotImplementedError, torch.OutOfMemoryError))
            or not isinstance(error, (RuntimeError, IndexError, ValueError))):
        return error
    return SDiTInputError(node, "model", f"a token-sparse forward failed inside the model ({error}); the model also "
                                         f"carries patches of other nodes ({patches}), which may need every token "
                                         f"of the image: remove them or sample with KSampler")


def check_neighbours(patcher, node: str, handled: Tuple[str, ...] = ()) -> None:
    other, why = conflicting_node(patcher, handled)
    if other:
        raise SDiTInputError(node, "model", f"the model also has the '{other}' node applied, which {why}; "
                                            f"remove '{other}' or use KSampler")


class ModelCodeCheck:
    """Before a forward: the functions the family adapter put on the model's code are what the model holds (or in the
    chain of functions what it holds keeps: a wrapper over ours); no method of the diffusion model's ComfyUI class was
    swapped for other code on the fly (the run's object patches are what ComfyUI put there); and its lists of blocks
    hold the classes they were built with. Each is what a node does that puts its own forward or blocks in place of
    the model's for each call. Cheap enough for every forward: the patched objects are found once per model."""

    def __init__(self, patched):
        import torch
        self.own = [(*path.rpartition(".")[::2], function) for path, function in patched.object_patches.items()
                    if hasattr(function, "sdit_wraps")]             # (owner path, attribute, ours)
        self.blocks = {name: tuple(map(_built_class, child))
                       for name, child in patched.model.diffusion_model.named_children()
                       if isinstance(child, torch.nn.ModuleList)}
        self._owners = {}       # id(base model) -> (it, weakly; the owner of each own patch): a model of each device

    def __call__(self, base_model, object_patches: dict, node: str) -> None:
        import comfy.utils
        model = base_model.diffusion_model          # the lists of blocks first: the patches' owners sit in them
        for name, value in vars(model).items():
            if callable(value) and value is not object_patches.get(f"diffusion_model.{name}"):
                method = getattr(type(model), name, None)
                # ComfyUI undoes another patcher's object patch by setting back what it replaced: the class's own
                # method, bound to the model
                own = getattr(value, "__func__", None) is method and getattr(value, "__self__", None) is model
                if not own and callable(method) and getattr(method, "__module__", "").startswith("comfy."):
                    raise _code_swapped(f"diffusion_model.{name}", value, node)
        for name, classes in self.blocks.items():
            found = getattr(model, name, None)
            if tuple(map(_built_class, found or ())) != classes and f"diffusion_model.{name}" not in object_patches:
                raise _code_swapped(f"diffusion_model.{name}", next(iter(found or ()), found), node)
        owners = self._owners.get(id(base_model))
        if owners is None or owners[0]() is not base_model:
            owners = self._owners[id(base_model)] = (weakref.ref(base_model), [
                comfy.utils.get_attr(base_model, owner) if owner else base_model for owner, _, _ in self.own])
        for owner, (owner_path, name, ours) in zip(owners[1], self.own):
            found = getattr(_compiled_from(owner), name)
            if found is not ours and not any(f is ours for f in _wrapper_chain(getattr(found, "__func__", found))):
                raise _code_swapped(f"{owner_path}.{name}", found, node)


def _compiled_from(module):
    """The module torch.compile compiled (ComfyUI's TorchCompileModel, and nodes compiling block by block, put the
    compiled module in its place while the model runs; it runs the original's code, ours included), or the module."""
    return getattr(module, "_orig_mod", module)


def _built_class(module) -> type:
    return type(_compiled_from(module))


def _code_swapped(path: str, found, node: str) -> SDiTInputError:
    """`found`: a function, a bound method or a module (named by its class)."""
    function = getattr(found, "__func__", found)
    name = f"{getattr(function, '__qualname__', type(function).__qualname__)} from {getattr(function, '__module__', '?')}"
    return SDiTInputError(node, "model", f"another node put its own code ({name}) in place of the model's "
                                         f"`{path.removeprefix('diffusion_model.')}` while sampling, where "
                                         "region-adaptive sampling picks the tokens: the run would be that node's "
                                         "alone, reuse its cached results for other tokens, or fail inside the model. "
                                         "Step caches (TeaCache, MagCache, WaveSpeed's First Block Cache) do this: "
                                         "remove that node or sample with KSampler")


def check_attention_went_through(call, transformer_options: dict, node: str) -> None:
    """After a forward: on a token-sparse step every attention over the image tokens must have gone through the
    engine (its K/V cache holds the tokens that did not run); one that went past it saw only those that ran."""
    if not call.attention_went_past():
        return
    override = transformer_options.get("optimized_attention_override")
    if override is not None and not hasattr(override, "sdit_wraps"):       # ours carry that mark
        name = getattr(override, "__qualname__", type(override).__name__)
        why = (f"another node set an attention override ({name}) over region-adaptive sampling's while sampling: "
               f"remove that node or sample with KSampler")
    else:
        why = ("a node replaced ComfyUI's attention functions (a global SageAttention patch, for example; ComfyUI's "
               "own --use-sage-attention works), or this model does not hand its attention ComfyUI's "
               "transformer_options: remove that node or sample with KSampler")
    raise SDiTInputError(node, "model", "on a token-sparse step the model's attention went past region-adaptive "
                                        f"sampling's K/V cache, so the tokens that ran would see only each other; {why}")
