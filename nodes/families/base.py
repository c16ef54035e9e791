"""Interface of a model-family adapter, and the patching helpers every adapter shares."""
import functools
import importlib
import inspect
import logging
import weakref
from typing import Callable, Hashable, List, Optional, Tuple

import torch

from ..comfy_compat import (compiler_opaque, global_module_hooks, on_multigpu_thread, takes_transformer_options,
                             weights_may_move)
from ...sdit_core.forward_graphs import copied_tensors
from ...sdit_core.tokens import scatter_rows_


def patch_method(patcher, slot, path: str, before: Optional[Callable] = None, after: Optional[Callable] = None,
                 graph: bool = False, patches_between: Tuple[str, ...] = ()) -> None:
    """Object-patches the method at `path` (e.g. "diffusion_model.forward_orig") through the ModelPatcher.
    While a forward of the engine is open, `before(call, arguments)` edits the arguments (bound by the
    method's own signature, whatever wraps it) and `after(call, result)` maps the result; otherwise the
    method runs unchanged. It calls through to whatever was installed before (another node's patch).
    `graph`: the method's sparse calls may be replayed from CUDA graphs when the run has them on
    (forward_graphs.py): the method is the whole token-sparse part of the forward (between gather and
    scatter), or one layer of it that reads nothing but its arguments, the index and the K/V cache. `patches_between`:
    kinds of other nodes' patches that the model runs between such layers, never inside one (they do not keep the
    layer's calls eager)."""
    owner_path, _, name = path.rpartition(".")
    owner = patcher.get_model_object(owner_path) if owner_path else patcher.model
    original = unwrap_ours(patcher.get_model_object(path))
    signature = inspect.signature(getattr(type(owner), name).__get__(owner))
    patcher_ref = weakref.ref(patcher)      # the patch lives in the patcher: no cycle through it

    @compiler_opaque
    def enter(args, kwargs):
        call = slot.current_call()
        if call is None:
            return None, None
        bound = signature.bind(*args, **kwargs)
        if before is not None:
            before(call, bound.arguments)
        return call, bound

    finish = compiler_opaque(after) if after is not None else None

    @functools.partial(compiler_opaque, callees_compiled=True)     # ours eager, the model's code compiled
    def patched(*args, **kwargs):
        call, bound = enter(args, kwargs)
        if call is None:
            return original(*args, **kwargs)
        result = _replayed(patcher_ref(), call, bound, original, path, patches_between, owner) if graph else None
        if result is None:
            result = original(*bound.args, **bound.kwargs)
        return finish(call, result) if finish is not None else result

    patched.sdit_wraps = original
    patched.sdit_graph = graph
    patcher.add_object_patch(path, patched)


@compiler_opaque
def _replayed(patcher, call, bound: inspect.BoundArguments, method: Callable, site: str,
              patches_between: Tuple[str, ...] = (), owner=None):
    """`method(*bound.args, **bound.kwargs)` replayed from the stream's CUDA graphs, or None where it may not be
    (eager under torch.compile: captured, not compiled). `owner`: the module whose method it is."""
    if patcher is None or not _may_graph(patcher, call, bound.arguments, patches_between) or hooked_inside(call, owner):
        return None
    signature = bound.signature

    def forward(arguments):
        rebound = inspect.BoundArguments(signature, dict(arguments))
        return method(*rebound.args, **rebound.kwargs)
    return call.stream.graphs.run(call, dict(bound.arguments), forward, site=site)


def unwrap_ours(function):
    """What a function installed by an earlier region-adaptive patch on this model wraps: patching a
    patched model again replaces the earlier patch (the last one wins) instead of stacking on it."""
    while hasattr(function, "sdit_wraps"):
        function = function.sdit_wraps
    return function


def patch_module_forward(patcher, slot, path: str, before=None, after=None) -> None:
    """Object-patches a module's forward whose first argument is the token tensor: while a forward of the
    engine is open, `before(call, x)` maps the input and `after(call, out)` the output."""
    original = unwrap_ours(patcher.get_model_object(path + ".forward"))
    before = compiler_opaque(before) if before else None
    after = compiler_opaque(after) if after else None

    @functools.partial(compiler_opaque, callees_compiled=True)
    def forward(x, *args, **kwargs):
        call = slot.current_call()
        if call is None:
            return original(x, *args, **kwargs)
        out = original(before(call, x) if before else x, *args, **kwargs)
        return after(call, out) if after else out

    forward.sdit_wraps = original
    patcher.add_object_patch(path + ".forward", forward)


def hand_attention_override(patcher, slot, path: str, graph: bool = False) -> None:
    """Object-patches the forward of a block that takes `transformer_options` but is called without them (a
    ControlNet network's blocks: ComfyUI's ControlNet forwards call them bare): while a forward of the engine is open,
    its attention gets the pack's override (`slot.attention_override`), so it runs through the K/V cache. `graph`: as
    patch_method's (the block one layer of the token-sparse part)."""
    def hand(call, arguments):
        options = arguments.get("transformer_options") or {}
        arguments["transformer_options"] = dict(options, optimized_attention_override=slot.attention_override)

    patch_method(patcher, slot, path + ".forward", before=hand, graph=graph)


def passthrough_method(patcher, slot, path: str, sparse: Optional[Callable] = None) -> None:
    """Object-patches a method whose attention calls are not over the image tokens (cross-attention of
    the image queries to text or image context): while it runs, attention passes the engine's K/V
    cache by. Image queries stay the gathered ones; the keys are the context's, complete as they are.
    `sparse`: for a module whose queries attend to keys of their own frame, which the model computes on
    frames of equal size (frame_attention.py; Wan S2V's audio injector): on a sparse forward, once the tokens
    are gathered, `sparse(call, module, *args, **kwargs)` computes it in the method's place."""
    _patch_attention_kind(patcher, slot, path, "passthrough", sparse)


def replace_in_forwards(patcher, slot, path: str, replacement: Callable) -> None:
    """Object-patches the method at `path`: while a forward of the engine is open (dense or sparse),
    `replacement(call, owner, *args, **kwargs)` runs in its place."""
    owner = patcher.get_model_object(path.rsplit(".", 1)[0])
    original = unwrap_ours(patcher.get_model_object(path))
    replacement = compiler_opaque(replacement)

    @functools.partial(compiler_opaque, callees_compiled=True)
    def patched(*args, **kwargs):
        call = slot.current_call()
        if call is None:
            return original(*args, **kwargs)
        return replacement(call, owner, *args, **kwargs)

    patched.sdit_wraps = original
    patcher.add_object_patch(path, patched)


def attention_through_cache(patcher, slot, path: str, replacement: Callable, family: str, check: bool,
                            before: Optional[Callable] = None, graph: bool = False,
                            applies: Optional[Callable[[dict], bool]] = None) -> None:
    """Object-patches an attention module's forward that calls ComfyUI's attention without `transformer_options`
    (so the engine's override never sees it): while a forward of the engine is open, `replacement(call, module,
    *args, **kwargs)` computes it from the module's own layers through `call.attention`. The replacement restates
    the model's few lines around attention. `check` (for one layer: the model's layers share the class): on the first
    dense forward after patching the replacement is checked against the model's own method on the same input, so that
    a ComfyUI whose attention computes something else stops with a clear error instead of sampling a wrong image.
    `before(call, arguments)` and `graph`: as patch_method's, the arguments bound by the replacement's signature (a
    whole block restated: a ControlNet's). `applies(arguments)`: where the replacement is only for some calls (an
    attention mask of a kind the engine cannot fit otherwise), the others run the model's own method, unchecked."""
    owner = patcher.get_model_object(path.rsplit(".", 1)[0])
    original = unwrap_ours(patcher.get_model_object(path))
    signature = inspect.signature(functools.partial(replacement, None, owner))     # what the block is called with
    patcher_ref = weakref.ref(patcher)
    replacement = compiler_opaque(replacement)
    unchecked = check

    @compiler_opaque
    def check_against_original(call, out, args, kwargs):
        nonlocal unchecked
        unchecked = False
        call.passthrough += 1                       # the model's own attention: past the K/V cache
        try:
            expected = original(*args, **kwargs)
        finally:
            call.passthrough -= 1
        out, expected = (o[0] if isinstance(o, (tuple, list)) else o for o in (out, expected))   # (out,) tuples too
        out, expected = out.detach(), expected.detach()
        error = float((out.float() - expected.float()).abs().max())
        scale = float(expected.float().abs().max())
        if not error <= 0.05 * scale + 1e-6:        # bf16 and fused kernels differ by far less; NaN fails too
            raise NotImplementedError(
                f"{family}: this ComfyUI's {type(owner).__name__}.forward computes something other than what "
                f"region-adaptive sampling restates for its K/V cache (they differ by {error:.3g} on outputs of "
                f"{scale:.3g}): sample it with KSampler, or update this node pack")

    @compiler_opaque
    def enter(call, args, kwargs):
        bound = signature.bind(*args, **kwargs)
        if before is not None:
            before(call, bound.arguments)
        return bound

    @functools.partial(compiler_opaque, callees_compiled=True)
    def patched(*args, **kwargs):
        call = slot.current_call()
        if call is None:
            return original(*args, **kwargs)
        bound = enter(call, args, kwargs)
        args, kwargs = bound.args, bound.kwargs
        if applies is not None and not applies(bound.arguments):
            return original(*args, **kwargs)
        restated = functools.partial(replacement, call, owner)
        out = _replayed(patcher_ref(), call, bound, restated, path, owner=owner) if graph else None
        if out is None:
            out = restated(*args, **kwargs)
        if unchecked and call.dense:
            check_against_original(call, out, args, kwargs)
        return out

    patched.sdit_wraps = original
    patched.sdit_graph = graph
    patcher.add_object_patch(path, patched)


def image_keys_method(patcher, slot, path: str, hand_override: bool = False) -> None:
    """Object-patches a method whose attention has queries of another sequence, which always runs, and the image
    tokens alone as keys (LTX-2's audio attending to the video): while it runs, attention completes the keys and
    values of the tokens that ran from the K/V cache (a layer of its own), as in self-attention. `hand_override`: the
    method takes `transformer_options` but the model may call it without them (a form of Kandinsky 6): it is handed
    the pack's attention override, as `hand_attention_override` hands a block."""
    _patch_attention_kind(patcher, slot, path, "image_keys", hand_override=hand_override)


def _patch_attention_kind(patcher, slot, path: str, counter: str, sparse: Optional[Callable] = None,
                          hand_override: bool = False) -> None:
    """While the method at `path` runs in a forward of the engine, the call's `counter` (what kind of attention
    runs: engine.ForwardCall) is raised."""
    owner = patcher.get_model_object(path.rsplit(".", 1)[0])
    original = unwrap_ours(patcher.get_model_object(path))
    sparse = compiler_opaque(sparse) if sparse is not None else None
    signature = inspect.signature(getattr(type(owner), path.rsplit(".", 1)[1]).__get__(owner)) if hand_override else None

    @functools.partial(compiler_opaque, callees_compiled=True)
    def patched(*args, **kwargs):
        call = slot.current_call()
        if call is None:
            return original(*args, **kwargs)
        if sparse is not None and not call.dense and call.image_rows is not None:
            return sparse(call, owner, *args, **kwargs)
        if signature is not None:
            bound = signature.bind(*args, **kwargs)
            options = bound.arguments.get("transformer_options") or {}
            bound.arguments["transformer_options"] = dict(options, optimized_attention_override=slot.attention_override)
            args, kwargs = bound.args, bound.kwargs
        setattr(call, counter, getattr(call, counter) + 1)
        try:
            return original(*args, **kwargs)
        finally:
            setattr(call, counter, getattr(call, counter) - 1)

    patched.sdit_wraps = original
    patcher.add_object_patch(path, patched)


def gathered_freqs(call, freqs: torch.Tensor, prefix: int) -> torch.Tensor:
    """RoPE frequencies of [prefix | full image sequence] (sequence on dim 1) -> [prefix | running image
    tokens], computed once per forward (every layer gets the same tensor). Frequencies built for one
    image and broadcast over the batch are expanded to the batch first (a view): each image may run
    other tokens."""
    key = ("freqs", freqs.data_ptr(), tuple(freqs.shape), prefix)
    if key not in call.scratch:
        rows = call.image_index_now().shape[0]
        if freqs.shape[0] == 1 and rows > 1:
            freqs = freqs.expand(rows, *freqs.shape[1:])
        image = call.gather(freqs[:, prefix:])
        call.scratch[key] = torch.cat([freqs[:, :prefix], image], dim=1) if prefix else image
    return call.scratch[key]


def _may_graph(patcher, call, arguments: dict, patches_between: Tuple[str, ...] = ()) -> bool:
    """A sparse call may replay from a graph when the run captures them, its tensors live where the
    graphs do, the weights stay where they are (comfy_compat.weights_may_move) and no other node
    patches the blocks (their Python code would run only at capture), but for patches of the kinds the model runs
    between the graphed layers (`patches_between`)."""
    graphs = call.stream.graphs
    if graphs is None or call.dense or call.stays_eager or not graphs.worth_keying(call):
        return False
    tensors = copied_tensors(arguments)
    if not tensors or not all(graphs.backend.supports(t) for t in tensors):
        return False
    if weights_may_move(patcher):       # for the whole run, said once: the user can change it
        graphs.enabled = False
        logging.info("SDiT: CUDA graphs stay off in this run: ComfyUI may move the model's weights between "
                     "forwards (low VRAM, or dynamic VRAM, a newer ComfyUI's default: started with "
                     "--disable-dynamic-vram it keeps a model that fits in VRAM in place)")
        return False
    options = arguments.get("transformer_options") or {}
    if on_multigpu_thread(options):      # one graph pool per run, but the threads' devices differ
        return False
    inside = [kind for kind, patches in (options.get("patches") or {}).items() if patches and kind not in patches_between]
    return not inside and not options.get("patches_replace")


def hooked_inside(call, module) -> bool:
    """Does Python code of another pack run inside the module's calls: torch forward hooks on a module below it (not
    on the module itself: the model calls it, so its own hooks run outside the graph), or global module hooks? A graph
    would run that code at capture only (Nunchaku's 4-bit Z-Image packs each attention layer's RoPE in such a hook,
    per forward). The modules below it are listed once per stream (what a stream keeps: engine.Stream.carried)."""
    if global_module_hooks():
        return True
    if not isinstance(module, torch.nn.Module):
        return False
    key = ("modules below", id(module))
    below = call.stream.carried.get(key)
    if below is None or below[0] is not module:
        below = call.stream.carried[key] = (module, [m for m in module.modules() if m is not module])
    return any(m._forward_pre_hooks or m._forward_hooks for m in below[1])


def gather_image_first(call, tokens: torch.Tensor) -> torch.Tensor:
    """The image's tokens, embedded for a model whose joint attention puts them first ([image | text]): gathered, and
    the engine told the image comes first (dense: unchanged, but counted)."""
    call.image_first = True
    return call.gather(tokens)


def gather_image_after(call, sequence: torch.Tensor, start: int, dropped: int = 0) -> torch.Tensor:
    """[prefix | image sequence] with the image from `start` -> [prefix | running image tokens] (dense: unchanged, but
    counted): for a model that joins the text (or registers) before the image tokens ahead of its blocks. `dropped`:
    the image sequence's last extra tokens that a node took out before (ComfyUI's Flux KV Cache, which hands attention
    their kept keys): counted as running, as the engine's attention finds them in the keys (ForwardCall.dropped_extras)."""
    image = sequence[:, start:]
    if dropped:
        image = torch.cat([image, image.new_zeros(image.shape[0], dropped, *image.shape[2:])], dim=1)
    image = call.gather(image)
    if dropped:
        image = image[:, :-dropped]
    return sequence if call.dense else torch.cat([sequence[:, :start], image], dim=1)


def scatter_image_after_prefix(call, out: torch.Tensor) -> torch.Tensor:
    """An output over [prefix | running image tokens] -> [prefix | every image token's row]: the running ones
    computed, the others from the policy."""
    prefix = out.shape[1] - (call.image_rows - call.dropped_extras)
    return torch.cat([out[:, :prefix], call.scatter(out[:, prefix:])], dim=1)


def every_token_row(call, tokens: torch.Tensor) -> torch.Tensor:
    """The running tokens' rows in a (batch, whole image sequence, channels) tensor of zeros, for a model that cuts or
    reshapes the image sequence by position before a per-token output layer (the zero rows' outputs are not used:
    `scatter_every_row` replaces them)."""
    if call.dense:
        return tokens
    full = tokens.new_zeros(tokens.shape[0], call.image_sequence_length, tokens.shape[-1])
    return scatter_rows_(full, call.image_index_now().to(tokens.device), tokens)


def every_image_row_after(call, out: torch.Tensor, prefix: int) -> torch.Tensor:
    """[prefix | running image tokens] -> [prefix | every image token's row] (`every_token_row` on the image part; dense:
    unchanged), for a model that cuts the image's rows out of a joint sequence by position."""
    if call.dense:
        return out
    return torch.cat([out[:, :prefix], every_token_row(call, out[:, prefix:])], dim=1)


def every_token_carried(call, hidden: torch.Tensor, key) -> torch.Tensor:
    """(rows, running tokens, channels) -> (rows, every token, channels): the running ones now, the others as last
    computed in this stream (`Stream.carried`, under `key`: it lives for the sampling run), for a model whose output
    layer mixes neighbouring tokens (a convolution over the token grid: its border pixels see their neighbours' latest
    features). A dense forward's hidden states are kept as they are."""
    if call.dense:
        call.stream.carried[key] = hidden.detach().clone()
        return hidden
    last = call.stream.carried.get(key)
    if last is None or last.shape[0] != hidden.shape[0] or (last.device, last.dtype) != (hidden.device, hidden.dtype):
        last = call.stream.carried[key] = hidden.new_zeros(hidden.shape[0], call.grid_tokens, hidden.shape[-1])
    # written in place: the stream's copy is this forward's input and the next one's starting point
    return scatter_rows_(last, call.grid_index.to(hidden.device), hidden.detach())


def scatter_pixel_patches(call, image: torch.Tensor, patch: int) -> torch.Tensor:
    """(rows, channels, height, width) decoded from every token of a pixel-space model -> the running tokens' patches
    kept, the others filled by the policy (as per-token outputs of channels * patch * patch values)."""
    height, width = image.shape[-2:]
    patches = torch.nn.functional.unfold(image, kernel_size=patch, stride=patch).transpose(1, 2)
    if not call.dense:
        patches = patches.gather(1, call.grid_index.to(image.device)[..., None].expand(-1, -1, patches.shape[-1]))
    full = call.scatter(patches)
    return torch.nn.functional.fold(full.transpose(1, 2), output_size=(height, width), kernel_size=patch, stride=patch)


def shared_table_rows(call, table: torch.Tensor, refusal: str) -> torch.Tensor:
    """A table with a row per image token, one for the whole batch (a model's RoPE) -> the running tokens' rows, once per
    forward and table. It serves the batch only where every row runs the same tokens (one image, its cond and uncond
    rows): otherwise NotImplementedError(refusal)."""
    if not call.shared_index:
        raise NotImplementedError(refusal)
    key = ("shared table rows", table.data_ptr(), tuple(table.shape))
    if key not in call.scratch:
        call.scratch[key] = table.index_select(0, call.image_index_now()[0].to(table.device))
    return call.scratch[key]


def scatter_every_row(call, out: torch.Tensor) -> torch.Tensor:
    """A per-token output computed over every token's row (after `every_token_row`) -> the running tokens' rows kept,
    the others from the policy."""
    return call.scatter(out if call.dense else call.gather_grid(out))


def scatter_video_output(call, out: torch.Tensor, grid: Tuple[int, int, int]) -> torch.Tensor:
    """A per-token output layer's (batch, channels, frames, height, width) latent output over every token of a
    (frames, rows, cols) token `grid` -> its tokens, the running ones kept and the others the policy's
    (`scatter_every_row`) -> the latent's shape again."""
    t, h, w = grid
    batch, channels = out.shape[:2]
    pt, ph, pw = out.shape[2] // t, out.shape[3] // h, out.shape[4] // w
    tokens = (out.reshape(batch, channels, t, pt, h, ph, w, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
              .reshape(batch, t * h * w, channels * pt * ph * pw))
    full = scatter_every_row(call, tokens)
    return (full.reshape(batch, t, h, w, channels, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
            .reshape(out.shape))


def runs_class_methods(diffusion_model, module: str, class_name: str, methods: Tuple[str, ...]) -> bool:
    """The model is an instance of ComfyUI's `module.class_name` (where the running ComfyUI has it) and its class
    runs that class's own `methods` (those the class has): a subclass that overrides one is another model, which
    gets the "not supported" error."""
    try:
        cls = getattr(importlib.import_module(module), class_name, None)
    except ImportError:
        return False
    return (cls is not None and isinstance(diffusion_model, cls)
            and all(getattr(type(diffusion_model), name) is getattr(cls, name)
                    for name in methods if hasattr(cls, name)))


def is_patch_of(patch, class_name: str) -> bool:
    """`patch` is ComfyUI's patch class `class_name` or a custom pack's subclass of it."""
    return any(cls.__name__ == class_name for cls in type(patch).__mro__)


def with_block_patches_for_sparse_forward(call, options: dict, class_name: str, sparse_copy: Callable,
                                          kind: str = "double_block") -> dict:
    """The transformer_options of this forward: on a sparse one, each patch of `class_name` in the `kind` list
    (another node's, which needs every image token) replaced by `sparse_copy(call, patch)`, a stand-in for this forward
    that runs it on the tokens that run; the same dict otherwise (the patches on the model are never changed)."""
    patches = options.get("patches") or {}
    listed = patches.get(kind) or []
    if call.dense or not any(is_patch_of(p, class_name) for p in listed):
        return options
    replaced = [sparse_copy(call, p) if is_patch_of(p, class_name) else p for p in listed]
    return dict(options, patches=dict(patches, **{kind: replaced}))


def with_block_replacements(options: dict, class_name: str, stand_in: Callable, kind: str = "dit") -> dict:
    """The transformer_options of this forward with each block replacement of `class_name` in `patches_replace[kind]`
    (another node's) replaced by `stand_in(patch)`; the same dict where there is none (the patches on the model are
    never changed)."""
    by_kind = options.get("patches_replace") or {}
    replacements = by_kind.get(kind) or {}
    if not any(is_patch_of(p, class_name) for p in replacements.values()):
        return options
    replaced = {block: stand_in(p) if is_patch_of(p, class_name) else p for block, p in replacements.items()}
    return dict(options, patches_replace=dict(by_kind, **{kind: replaced}))


# Set in a ControlNet's residuals that ran with the model's tokens (sparse_controlnet.py): (evaluation, rows per image)
SPARSE_CONTROL = "sdit_sparse_rows"


def gather_control(call, control: dict) -> dict:
    """ControlNet residuals are added to the image tokens block by block: gather them alike. A ControlNet with fewer
    blocks than the model hands the same residual to several (Flux's XLabs and InstantX ones repeat a few tensors over
    the model's 19 double and 38 single blocks): each distinct tensor is gathered once, and the entries share it, as
    they did. Residuals of a ControlNet that ran token-sparse itself (sparse_controlnet.py) come in the tokens' rows
    already."""
    if control is not None and SPARSE_CONTROL in control:
        if call.dense or control[SPARSE_CONTROL] != (call.info.index, int(call.grid_index.shape[1])):
            raise RuntimeError(f"region-adaptive sampling: a ControlNet ran on other tokens ({control[SPARSE_CONTROL]}) "
                               f"than the model's forward (evaluation {call.info.index}, dense: {call.dense})")
        return {name: value for name, value in control.items() if name != SPARSE_CONTROL}
    if control is None or call.dense:
        return control
    return map_residuals_once(control, call.gather_grid)


def map_residuals_once(control: dict, function: Callable) -> dict:
    """ControlNet residuals ({name: [tensor or None per block]}) with `function` applied to each distinct tensor once:
    entries that shared a tensor share its result."""
    done = {}

    def once(residual):
        if id(residual) not in done:
            done[id(residual)] = function(residual)
        return done[id(residual)]
    return {name: [once(r) if torch.is_tensor(r) else r for r in residuals]
            if isinstance(residuals, (list, tuple)) else residuals for name, residuals in control.items()}


def every_row(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """A tensor ComfyUI hands every row of a forward as a batch of one (a ControlNet's hint), expanded to `rows`."""
    return tensor.expand(rows, *tensor.shape[1:]) if tensor.shape[0] == 1 else tensor


def gather_hint(call, hint: torch.Tensor) -> torch.Tensor:
    """A ControlNet's hint tokens (one batch row for every row, or one each): the running ones."""
    return call.gather(every_row(hint, call.record.rows))


def gather_grid_ids(call, ids: torch.Tensor) -> torch.Tensor:
    """[text ids | image ids] of a ControlNet, whose image ids are the latent's grid alone: the image's gathered."""
    text = ids.shape[1] - call.grid_tokens
    return torch.cat([ids[:, :text], gather_hint(call, ids[:, text:])], dim=1)


def reference_latents(values: dict) -> list:
    """A prompt's `reference_latents` (ComfyUI's ReferenceLatent node: Flux Kontext / Flux 2 edit,
    Qwen-Image-Edit), which the model embeds after the image's tokens."""
    return list(values.get("reference_latents") or [])


class ControlNetAdapter:
    """Interface of a ControlNet network's adapter (sparse_controlnet.py runs the network beside the model it feeds)."""
    name = ""

    def matches(self, control_model) -> bool:
        raise NotImplementedError

    def feeds(self, family: "FamilyAdapter") -> bool:
        """Does the network feed models of this family (its residuals fit their blocks)?"""
        raise NotImplementedError

    def block_paths(self, control_model) -> List[str]:
        """Its blocks with attention over the image tokens (a K/V cache layer each, in order)."""
        raise NotImplementedError

    def runs_sparse(self, control_model) -> bool:
        """Its blocks take transformer_options (where the pack's attention override reaches them)."""
        return all(takes_transformer_options(control_model.get_submodule(path))
                   for path in self.block_paths(control_model))

    def kv_cache_layers(self, control_model, image_tokens: int, text_tokens: int, control) -> List[Tuple[int, int]]:
        raise NotImplementedError

    def install(self, patcher, slot) -> None:
        """Object patches on a clone of the network's ModelPatcher: gather its tokens; its blocks get the override."""
        raise NotImplementedError

    def opened(self, call, arguments: dict) -> None:
        """The network's forward opened as `call`, with `arguments` as ComfyUI passes them (by name): what the
        adapter notes of them for the forward (a network that runs the model's own embedders: the text length)."""


class FamilyAdapter:
    """Interface of a model-family adapter."""
    names: Tuple[str, ...] = ()
    # patches of other nodes that neighbours.py refuses elsewhere and this family runs token-sparse (by class name)
    handled_patches: Tuple[str, ...] = ()

    def takes_frames(self, diffusion_model) -> bool:
        """Whether this model samples latents of more than one frame (batch, channels, frames, height, width):
        video families, and an image family whose model takes frames of another kind (Qwen-Image's layers)."""
        return False

    def temporal_patch(self, diffusion_model) -> int:
        """Latent frames per token (video families)."""
        return 1

    def matches(self, diffusion_model) -> bool:
        raise NotImplementedError

    def patch_size(self, diffusion_model) -> int:
        raise NotImplementedError

    def install(self, patcher, slot) -> None:
        """Adds the object patches that gather image tokens and scatter the output."""
        raise NotImplementedError

    def prompt_tokens(self, base_model, tokens: int, values: dict) -> int:
        """Tokens the blocks get beside the image of a prompt of `tokens` text tokens with these conditioning
        values (its dict): a model may pad the text or add tokens of its own."""
        return tokens

    def sequence_references(self, diffusion_model, values: dict) -> list:
        """Latents a prompt's conditioning values (its dict) put into the sequence beside the image's tokens
        (references, which run on every step; most models put them after the image's): the memory plan counts
        their tokens in the K/V cache."""
        return []

    def sequence_reference_tokens(self, diffusion_model, values: dict, tokens: Callable, image_shape: tuple) -> int:
        """How many tokens those latents put into the sequence (`tokens(latent shape)` counts a latent's) beside an
        image latent of `image_shape`: the memory plan's count. A model that embeds references of its own way (Wan
        S2V's packed motion frames, HiDream-O1's images sized to the target) says."""
        return sum(tokens(latent.shape) for latent in self.sequence_references(diffusion_model, values))

    def latent_parts_tokens(self, diffusion_model, latent_shapes: list, text_tokens: int, values: dict) -> int:
        """Tokens the other parts of a latent of several parts (`latent_shapes`: each part's shape, the image's first)
        put into the image's attention beside a prompt of `text_tokens` tokens with these conditioning values (its
        dict): MiniMax H3's audio in one sequence with the video. Most models attend over the image's part alone."""
        return 0

    def kv_cache_layers(self, diffusion_model, image_tokens: int, text_tokens: int,
                        values: dict) -> List[Tuple[int, int]]:
        """(tokens, channels) per batch row of each attention layer whose keys and values the K/V cache keeps,
        in a forward over `image_tokens` image tokens and a prompt of `text_tokens` tokens with these
        conditioning values (its dict; a model may run more layers for some, e.g. Wan VACE per control video):
        what the memory plan counts (memory_plan.py)."""
        raise NotImplementedError

    def patch_cache_layers(self, diffusion_model, transformer_options: dict, image_tokens: int) -> List[Tuple[int, int]]:
        """The K/V cache layers of other nodes' patches on the model that run with attention of their own through the
        engine (`handled_patches`: the Z-Image Fun ControlNet's blocks), for a latent of `image_tokens` grid tokens."""
        return []

    def network(self, diffusion_model, sigma: float) -> Hashable:
        """Which of the model's networks a forward at `sigma` runs, where the model switches them by sigma within
        one sampling run (Prism's high- and low-noise video towers); None: one network throughout. A switch is a
        network whose K/V cache and cached outputs start afresh: its first forward runs dense (the engine)."""
        return None

    def refused_model(self, diffusion_model) -> Optional[str]:
        """Why this model of the family, as configured, cannot be sampled region-adaptively, or None (asked by every
        node before anything else)."""
        return None

    def refused_latent(self, diffusion_model, shape: tuple) -> Optional[str]:
        """Why a latent of this shape cannot be sampled region-adaptively with this model, or None (asked by the
        sampler nodes before sampling, as `refused_conditioning` and `samples_alone` are)."""
        return None

    def samples_alone(self, diffusion_model, shape: tuple) -> Optional[str]:
        """Why the model samples a latent of this shape in a way region-adaptive sampling cannot follow, or None: the
        sampler nodes refuse it before sampling; under a Model Patch node that run is the model's own, with a log
        line."""
        return None

    def refused_conditioning(self, diffusion_model, values: dict) -> Optional[str]:
        """Why a conditioning entry's values (its dict) cannot be sampled region-adaptively with this
        model, or None. The sampler nodes ask before sampling; the adapter's patches still refuse at
        the first forward what reaches the model another way (a Model Patch node under KSampler)."""
        return None


class VideoFamilyAdapter(FamilyAdapter):
    """A video family whose model's `patch_size` is (frames, rows, columns) per token."""

    def takes_frames(self, diffusion_model) -> bool:
        return True

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size[-1])

    def temporal_patch(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size[0])
