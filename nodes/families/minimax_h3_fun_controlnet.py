"""MiniMax H3's Fun ControlNet ("Apply MiniMax H3 Fun ControlNet" with a model of "Load Model Patch"; newer
ComfyUI, read in the search index: `MiniMaxH3FunControlBlockPatch`, `comfy/ldm/minimax/controlnet.py`) on the
engine's forwards.

The ControlNet is a tower of a few of the model's blocks (five beside fifty) that replaces some blocks
(`patches_replace["dit"]`): at its first block it takes the sequence entering that block, puts its control video's rows
at the video's positions of the whole packed layout, and then, after each replaced block, runs one of its blocks over
that stream of its own and adds the output to the block's. Its stream is over every token and it reads only the
model's embedding of them, so it keeps running whole on every step (ComfyUI's own code): what it adds is what a dense
forward adds. A stand-in around the patch, for one forward:
- hands the tower ComfyUI's attention rather than the engine's (newer ComfyUI's tower drops any override itself; an
  older form runs the override it is given, which would route the tower's calls through the K/V cache as if they were
  the model's layers): the override another node set under ours stays;
- hands the patch the block's output with a row for every video token (the running tokens' rows, zeros for the
  others), so the tower's output adds to it by position, then keeps the running tokens' rows.
The first block's input is every token's embedding (the engine gathers inside that block), so the tower starts from
what it starts from on a dense forward.
"""
import torch

from .base import every_image_row_after, unwrap_ours, with_block_replacements

PATCH_CLASS = "MiniMaxH3FunControlBlockPatch"
_OVERRIDE = "optimized_attention_override"


def forward_options(call, options: dict) -> dict:
    """This forward's transformer_options: the ControlNet's block replacements behind their stand-ins."""
    return with_block_replacements(options, PATCH_CLASS, lambda patch: TowerBesideSparseBlocks(call, patch))


class TowerBesideSparseBlocks:
    """One forward's stand-in for a block replacement of the Fun ControlNet (or a chain of them: each calls the one it
    replaced, `previous`, and the chain ends at the block)."""

    def __init__(self, call, patch):
        self.call, self.patch = call, patch

    def __call__(self, args, extra_args):
        options, call = args["transformer_options"], self.call
        start = args["mod_segments"][-1][0]          # the video: the packed sequence's last segment
        original_block = extra_args["original_block"]

        def block_over_every_video_row(block_args):
            out = original_block(dict(block_args, transformer_options=options))
            return dict(out, img=every_image_row_after(call, out["img"][None], start)[0])

        out = self.patch(dict(args, transformer_options=_without_our_override(options)),
                         dict(extra_args, original_block=block_over_every_video_row))
        img = out["img"]
        if not call.dense:
            img = torch.cat([img[:start], call.gather_grid(img[None, start:])[0]])
        return dict(out, img=img)


def _without_our_override(options: dict) -> dict:
    beneath = unwrap_ours(options.get(_OVERRIDE))
    tower = {name: value for name, value in options.items() if name != _OVERRIDE}
    if beneath is not None:
        tower[_OVERRIDE] = beneath
    return tower
