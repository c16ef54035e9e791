"""Qwen-Image 2.1's Fun ControlNet ("Apply Qwen Image 2.1 Fun ControlNet" with a model of "Load Model Patch"; newer
ComfyUI, read in the search index: `QwenImage21FunControlBlockPatch`, `QwenImage21FunControl` in
comfy/ldm/qwen_image21/model.py) on the tokens that run.

The ControlNet is a tower of the model's own blocks (sixteen beside the model's thirty-two) that replaces every other
block: at the first it takes the sequence entering it and puts its control image's tokens (a row per target token) at
the target's positions, then after each replaced block runs one tower block over that stream and adds the output to the
block's. Its stream is [prefix | target] as the model's, so on a sparse forward it runs as the model does: the running
target tokens alone, its attention over every target token's keys and values from K/V cache layers of its own, which a
dense forward stores (`ForwardCall.layer_name`: named, outside the model's numbered layers, so the forwards before its
start or after its end percent keep the model's layers where they were). Each forward runs ComfyUI's own patch on a
copy whose control tokens are the running ones; the tower's blocks get the running tokens' RoPE rows and an attention
function through the cache (qwen_image21.py's `_through_the_cache`, handed in). Where the tower's layers are not stored (it starts after
the last dense forward) or ControlNets are chained on a block, the tower runs whole beside the sparse blocks instead
(control_towers.py): exact either way.
"""
import copy
from typing import Hashable, List, Tuple

from . import control_towers
from .base import gather_image_after, gathered_freqs, is_patch_of, with_block_replacements

PATCH_CLASS = "QwenImage21FunControlBlockPatch"
_TOWER = "qwen-image 2.1 fun controlnet tower"
_BLOCK_ARGUMENTS = ("mod", "pe", "attn_fn", "prefix_len")       # what ComfyUI's model hands its block replacements
OLDER_MODEL = ("Apply Qwen Image 2.1 Fun ControlNet: this ComfyUI's Qwen-Image 2.1 does not hand block replacements the "
               "block's arguments ({}) that the ControlNet needs, so region-adaptive sampling cannot run it: update "
               "ComfyUI, or sample with KSampler")


def forward_options(call, options: dict, through_the_cache) -> dict:
    """This forward's transformer_options: the ControlNet's block replacements behind stand-ins for this forward
    (`through_the_cache(call, attn_fn, prefix)`: the model's attention function with the target's keys and values
    through the K/V cache)."""
    fun = _fun_controlnet_patches(options)
    if not fun:
        return options
    if not _tower_runs_on_tokens(call, fun):
        return control_towers.forward_options(call, options, PATCH_CLASS, _prefix_len)
    copies = {}                                     # the ControlNet's state: one copy per forward, for all its blocks

    def for_this_forward(patch):
        key = id(patch.control_patch)
        if key not in copies:
            copies[key] = _control_on_running_tokens(call, patch.control_patch)
        return TowerOnRunningTokens(call, patch, copies[key], through_the_cache)
    return with_block_replacements(options, PATCH_CLASS, for_this_forward)


def cache_layers(transformer_options: dict, grid_tokens: int, dim: int) -> List[Tuple[int, int]]:
    """The K/V cache layers of the Fun ControlNets' towers on a model (for the memory plan): one per replaced block."""
    return [(grid_tokens, dim) for _ in _fun_controlnet_patches(transformer_options)]


def _fun_controlnet_patches(transformer_options: dict) -> list:
    """The ControlNet's block replacements on the model (one per replaced block)."""
    replacements = ((transformer_options.get("patches_replace") or {}).get("dit") or {}).values()
    return [patch for patch in replacements if is_patch_of(patch, PATCH_CLASS)]


def _prefix_len(args: dict) -> int:
    """Where the target starts in the sequence a block replacement is handed (a clear error where this ComfyUI's model
    hands the replacement too little to run the ControlNet on: a form older than ComfyUI's ControlNet)."""
    missing = [name for name in _BLOCK_ARGUMENTS if name not in args]
    if missing:
        raise NotImplementedError(OLDER_MODEL.format(", ".join(missing)))
    return int(args["prefix_len"])


def _layer_name(patch) -> Hashable:
    return (_TOWER, id(patch.control_patch), patch.block_index)


def _tower_runs_on_tokens(call, patches) -> bool:
    """A dense forward stores the towers' layers; a sparse one reads them where the last dense one stored them. A
    chain (another node's replacement under the ControlNet's) runs whole."""
    if any(getattr(patch, "previous", None) is not None for patch in patches):
        return False
    return call.dense or all(_layer_name(patch) in call.stream.kv
                             for patch in patches if patch.control_patch.active)


def _control_on_running_tokens(call, control_patch):
    """A copy of the ControlNet's state for this forward, whose control tokens ((1, channels, height, width), a row per
    target token) are the running tokens' (rows, channels, running): its own code flattens and transposes them to
    rows of tokens either way."""
    patch = copy.copy(control_patch)
    control = getattr(patch, "control", None)
    if control is not None and patch.active and not call.dense:
        tokens = control.flatten(2).transpose(1, 2)                             # (1, target tokens, channels)
        tokens = tokens.expand(call.grid_index.shape[0], -1, -1)
        patch.control = call.gather_grid(tokens).transpose(1, 2)
    return patch


class TowerOnRunningTokens:
    """One forward's stand-in for a block replacement of the ControlNet: ComfyUI's patch on the copy, on the tokens
    that run."""

    def __init__(self, call, patch, control_patch, through_the_cache):
        self.call, self.through_the_cache = call, through_the_cache
        self.patch = copy.copy(patch)
        self.patch.control_patch = control_patch
        self.name = _layer_name(patch)

    def __call__(self, args, extra_args):
        call, prefix, original_block = self.call, _prefix_len(args), extra_args["original_block"]
        img = args["img"]
        if call.image_rows is None:                 # the first block over the target: gathered before the patch keeps it
            img = gather_image_after(call, img, prefix)
        pe = args["pe"] if call.dense else gathered_freqs(call, args["pe"], prefix)

        def model_block(block_args):
            call.layer_name = None                  # the model's own layer
            try:
                return original_block(dict(block_args, pe=args["pe"]))     # the block gathers its RoPE rows itself
            finally:
                call.layer_name = self.name

        call.layer_name = self.name                 # the tower's attention: its own K/V cache layer
        try:
            return self.patch(dict(args, img=img, pe=pe, attn_fn=self.through_the_cache(call, args["attn_fn"], prefix)),
                              dict(extra_args, original_block=model_block))
        finally:
            call.layer_name = None
