"""ComfyUI's own ControlNets (Apply ControlNet) run on the tokens the model runs.

ComfyUI runs a ControlNet apart from the model, before each of the model's forwards (`ControlNet.get_control` in
calc_cond_batch), over every image token; its residuals are then added to the model's image tokens block by block.
Where the ControlNet's network has an adapter (`families.CONTROLNETS`), it runs token-sparse too: on the tokens the
model's forward will run, through K/V caches of its own (an engine stream that feeds the model's, `open_forward`'s
`feeds`), so its cost falls with the model's instead of staying whole in every step.

- When sampling starts, each ControlNet chain in this run's conds (ComfyUI copies the guider's conds per run) is
  swapped for shallow copies (the ControlNets passed in stay as they were) whose network loads through a clone of its
  ModelPatcher carrying the adapter's object patches, and whose `get_control` notes which model forward it feeds.
- ComfyUI's own `get_control` then runs (the hint, the timestep range, strength, the merge with the chain); its call
  of the network (the copy's `control_model`, a `NetworkForward`) opens the engine forward, the adapter gathers its
  tokens, its attention goes through the cache. The adapters patch the network's submodules only, never a method of
  the network itself, and nothing of ours refers back to the copies or the clone: a ControlNet the user drops is freed
  at once, as ComfyUI's model management expects.
- The residuals come in the rows the model's forward runs (a dense ControlNet forward's, the first of its stream, are
  gathered after it), marked for `gather_control`; where the model's forward is dense they cover every token.
A chain with any other ControlNet (T2I adapters, Control LoRAs, other packs' ControlNet classes, a network without an
adapter) stays as it is: it runs over every token and its residuals are gathered, as before.
"""
import copy
import functools
import threading
import weakref
from dataclasses import dataclass
from typing import Callable, Hashable, Optional

import torch

from ..sdit_core.tokens import gather_rows
from .families import controlnet_adapter_for
from .families.base import SPARSE_CONTROL, map_residuals_once
from .neighbours import check_attention_went_through

# apply_model's own parameters: what the model's forward gets besides them are its conditions (sparse_patch.py)
APPLY_MODEL_NAMED = ("c_concat", "c_crossattn", "control", "transformer_options")

_pending = threading.local()        # the ControlNet forward about to run in this thread (set by its get_control)


@dataclass
class _Feed:
    """A ControlNet forward and the model forward it feeds."""
    run: object
    stream_key: Hashable
    main_key: Hashable
    network: Hashable
    latent_shape: tuple
    sigma: float
    sample_sigmas: Optional[torch.Tensor]
    rows: Optional[tuple] = None            # (evaluation, rows per image) where its residuals came in the model's rows

    @property
    def lineage(self) -> Hashable:
        """The stream's key without the weights it runs with (the model's forward: (lineage, weight hooks))."""
        return (self.main_key[0],) + self.stream_key[1:]


def sparse_chain_adapters(control, family) -> Optional[list]:
    """The adapters of every ControlNet in `control`'s chain, or None where one cannot run token-sparse."""
    adapters = []
    while control is not None:
        if not _comfy_controlnet(control):
            return None
        adapter = controlnet_adapter_for(control.control_model, family)
        if adapter is None or not adapter.runs_sparse(control.control_model):
            return None
        adapters.append(adapter)
        control = control.previous_controlnet
    return adapters


def _comfy_controlnet(control) -> bool:
    """ComfyUI's own ControlNet class, or one of ComfyUI's own subclasses of it (SD3.5's ControlNetSD35 loads the
    model's embedders into the network before sampling; Qwen-Image's QwenFunControlNet eases the strength and calls
    ComfyUI's get_control): its get_control runs the network once per model forward, as the swap expects."""
    import comfy.controlnet
    kind = type(control)
    return issubclass(kind, comfy.controlnet.ControlNet) and kind.__module__ == comfy.controlnet.__name__


def controlnet_cache_layers(family, entry: dict, image_tokens: int, text_tokens: int) -> list:
    """The K/V cache layers of a conds entry's ControlNets that run token-sparse (for the memory plan)."""
    control = entry.get("control")
    adapters = sparse_chain_adapters(control, family) if control is not None else None
    layers = []
    for adapter in adapters or []:
        layers += adapter.kv_cache_layers(control.control_model, image_tokens, text_tokens, control)
        control = control.previous_controlnet
    return layers


def run_controlnets_with_tokens(conds: dict, slot, family, main_stream: Callable, node: str) -> int:
    """Swaps each ControlNet chain of this run's `conds` that can run token-sparse for copies that do. `main_stream(x,
    sigma, transformer_options, conditions)` gives the model forward's (stream key, network). Returns how many
    ControlNets were swapped."""
    copies, clones = {}, {}

    def sparse_copy(control, adapters):
        if id(control) not in copies:
            proxy = copy.copy(control)
            # ComfyUI registers its per-GPU copies in this dict: the copy's own, not the original's
            proxy.multigpu_clones = dict(getattr(control, "multigpu_clones", {}) or {})
            if control.previous_controlnet is not None:
                proxy.previous_controlnet = sparse_copy(control.previous_controlnet, adapters[1:])
            wrapped = control.control_model_wrapped
            if id(wrapped) not in clones:           # copies of one ControlNet share its patcher, as they did
                clone = wrapped.clone()
                adapters[0].install(clone, slot)
                clones[id(wrapped)] = clone
            proxy.control_model_wrapped = clones[id(wrapped)]
            proxy.control_model = NetworkForward(control.control_model, slot, node, adapters[0])
            # (the proxy by a weak reference: a partial holding it in its own __dict__ would be a reference cycle)
            proxy.get_control = functools.partial(_get_control, weakref.ref(proxy), len(copies), slot, main_stream)
            copies[id(control)] = proxy
        return copies[id(control)]

    for entries in (conds or {}).values():
        for entry in entries or []:
            control = entry.get("control") if isinstance(entry, dict) else None
            adapters = sparse_chain_adapters(control, family) if control is not None else None
            if adapters:
                entry["control"] = sparse_copy(control, adapters)
    swapped = len(copies)
    copies.clear()          # sparse_copy refers to itself (a cycle): what it made must not hang on it
    clones.clear()
    return swapped


def _get_control(proxy_ref, link: int, slot, main_stream: Callable, x_noisy, t, cond, batched_number,
                 transformer_options):
    """ComfyUI's get_control, with the model forward it feeds noted for the network's forward."""
    proxy = proxy_ref()
    run = slot.run
    if run is None:
        return type(proxy).get_control(proxy, x_noisy, t, cond, batched_number, transformer_options)
    sigma = float(t.flatten()[0])
    conditions = {name: value for name, value in cond.items() if name not in APPLY_MODEL_NAMED}
    main_key, network = main_stream(x_noisy, sigma, transformer_options, conditions)
    feed = _Feed(run, (main_key, "controlnet", link), main_key, network, tuple(x_noisy.shape), sigma,
                 transformer_options.get("sample_sigmas"))
    outer = getattr(_pending, "feed", None)         # a chain: ComfyUI's get_control runs the previous one's first
    _pending.feed = feed
    try:
        control = type(proxy).get_control(proxy, x_noisy, t, cond, batched_number, transformer_options)
    finally:
        _pending.feed = outer
    if control is not None and feed.rows is not None:
        control = dict(control, **{SPARSE_CONTROL: feed.rows})
    return control


class NetworkForward:
    """The network as a swapped ControlNet's get_control sees it (its `control_model`): where the get_control noted a
    feed, a call runs as an engine forward; anything else is the network's. (Not an object patch on the network's own
    forward: unpatching one leaves ComfyUI's backup, a bound method, in the network's __dict__, a reference cycle that
    outlives a ControlNet the user drops and leaves ComfyUI's loaded-model entry for it dead.)"""

    def __init__(self, network, slot, node: str, adapter):
        self.network, self.slot, self.node, self.adapter = network, slot, node, adapter

    def __getattr__(self, name):            # what ComfyUI reads of the network (its dtype, SD3.5's embedders)
        network = self.__dict__.get("network")
        if network is None:                 # (a copy being made: no network yet)
            raise AttributeError(name)
        return getattr(network, name)

    def __deepcopy__(self, memo):
        """A deep copy (newer ComfyUI's copy of a ControlNet for another GPU) is the network's: that copy runs whole."""
        return copy.deepcopy(self.network, memo)

    def __call__(self, *args, **kwargs):
        feed = getattr(_pending, "feed", None)
        if feed is None or feed.run is not self.slot.run:
            return self.network(*args, **kwargs)
        run = feed.run
        call = run.open_forward(feed.latent_shape, feed.sigma, feed.sample_sigmas, feed.stream_key,
                                network=feed.network, feeds=feed.main_key, lineage=feed.lineage)
        completed = False
        try:
            self.adapter.opened(call, kwargs)
            control = self.network(*args, **kwargs)
            check_attention_went_through(call, {}, self.node)
            if call.feeds_index is not None:
                if call.dense:        # its stream's first forward, over every token: cut to the model's rows
                    index = call.feeds_index
                    control = map_residuals_once(control, lambda r: gather_rows(r, index.to(r.device)))
                feed.rows = (call.info.index, int(call.feeds_index.shape[1]))
            completed = True
            return control
        finally:
            run.close_forward(call, completed)
