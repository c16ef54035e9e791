"""Fun ControlNets that are block replacements running a control tower whole beside the sparse blocks: MiniMax H3's
("Apply MiniMax H3 Fun ControlNet", `MiniMaxH3FunControlBlockPatch`) and Qwen-Image 2.1's ("Apply Qwen Image 2.1 Fun
ControlNet", `QwenImage21FunControlBlockPatch`), both newer ComfyUI, read in the search index.

Such a ControlNet replaces some of the model's blocks (`patches_replace["dit"]`): at the first of them it takes the
sequence entering that block and puts its control image's (or video's) rows at the image's positions, then after each
replaced block runs one block of its tower (blocks of the model's own kind) over that stream and adds the output to the
block's, by position. Its stream covers every token and reads only the model's embedding of them, so the tower keeps
running whole on every step (ComfyUI's own code) and what it adds is what a dense forward adds. A stand-in around the
patch, for one forward:
- the patch runs with the engine passed by (`ForwardCall.passthrough`): the tower's attention is over its own whole
  stream, no layer of the model's (an attention override another node set under ours still computes it); the model's
  block inside it runs through the engine again;
- the patch gets the block's output with a row for every image token (the running tokens' rows, zeros for the others),
  so the tower's output adds to it by position; the running tokens' rows are kept after it.
The first replaced block's input is every token's embedding (the engine gathers inside that block), so the tower starts
from what it starts from on a dense forward.
"""
from typing import Callable

import torch

from .base import every_image_row_after, with_block_replacements


def forward_options(call, options: dict, class_name: str, image_start: Callable[[dict], int]) -> dict:
    """This forward's transformer_options: the block replacements of `class_name` behind stand-ins; `image_start(args)`:
    where the image's tokens start in the sequence a replacement is handed."""
    return with_block_replacements(options, class_name, lambda patch: TowerBesideSparseBlocks(call, patch, image_start))


class TowerBesideSparseBlocks:
    """One forward's stand-in for a Fun ControlNet's block replacement (or a chain of them: each calls the one it
    replaced, `previous`, and the chain ends at the block)."""

    def __init__(self, call, patch, image_start: Callable[[dict], int]):
        self.call, self.patch, self.image_start = call, patch, image_start

    def __call__(self, args, extra_args):
        call, start, original_block = self.call, self.image_start(args), extra_args["original_block"]

        def block_over_every_image_row(block_args):
            call.passthrough -= 1                   # the model's block: through the engine
            try:
                out = original_block(block_args)
            finally:
                call.passthrough += 1
            return dict(out, img=_unbatched(every_image_row_after(call, _batched(out["img"]), start), out["img"]))

        call.passthrough += 1                       # the tower: past the engine
        try:
            out = self.patch(args, dict(extra_args, original_block=block_over_every_image_row))
        finally:
            call.passthrough -= 1
        img = _batched(out["img"])
        if not call.dense:
            img = torch.cat([img[:, :start], call.gather_grid(img[:, start:])], dim=1)
        return dict(out, img=_unbatched(img, out["img"]))


def _batched(sequence: torch.Tensor) -> torch.Tensor:
    """MiniMax H3's packed sequence has no batch dimension (one video at a time): (rows, channels) -> (1, rows, .)."""
    return sequence[None] if sequence.ndim == 2 else sequence


def _unbatched(sequence: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sequence[0] if like.ndim == 2 else sequence
