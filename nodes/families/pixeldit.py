"""PixelDiT (comfy/ldm/pixeldit/model.py, PixDiT_T2I; newer ComfyUI): text to image in pixel space.

The forward cuts the RGB image into patches (16 x 16 pixels: the token grid), runs MMDiT blocks over them (joint
attention over [text | patches] with 2-D RoPE), then pixel blocks over every patch's pixels: each compresses a patch's
pixels into one token, runs self-attention across the patches (2-D RoPE of its own), expands back and modulates each
pixel from its patch's features; a per-pixel final layer and a fold make the image. The adapter hooks methods, never
the forward's code:
- the first MMDiT block gathers the running patches; every block gets their RoPE rows;
- `_pre_pixel_blocks` (the model's own hook) hands back every patch's row (the skipped ones zero), as the model reads
  them by the whole grid;
- the first pixel block gathers the running patches' pixels and features, and every pixel block is told the grid is
  the running patches (a column of them) with their rows of its RoPE: its attention reads the others' keys and values
  from the K/V cache, as the MMDiT blocks' does;
- the final layer's output gets every patch's pixels back.
Both RoPE tables are one for the whole batch: a sparse step needs every row of the batch to run the same patches (one
image, its cond and uncond rows); the sampler nodes refuse a batch of several images before sampling, and a Model Patch
node's run stops with the same clear error at its first sparse step.
"""
from .base import FamilyAdapter, every_token_row, patch_method, runs_class_methods, shared_table_rows

BATCH = ("PixelDiT (and PiD, its decoder) with a batch of several images is not supported by region-adaptive sampling "
         "(its rotary embeddings are one table for the batch, and each image runs other patches): use batch size 1")


class PixelDiTFamily(FamilyAdapter):
    names = ("PixelDiT",)
    # edits `_pre_pixel_blocks`' arguments before the model's hook runs on the running patches (PiD's: pid.py)
    before_pixel_blocks = None

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.pixeldit.model", "PixDiT_T2I",
                                  ("forward", "_forward", "_pre_patch_block", "_pre_pixel_blocks", "_fetch_patch_pos"))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size)

    def refused_latent(self, diffusion_model, shape):
        return BATCH if shape[0] > 1 else None

    def prompt_tokens(self, base_model, tokens, values):
        return min(tokens, base_model.diffusion_model.txt_max_length)      # the model cuts longer prompts

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        return ([(text_tokens + image_tokens, diffusion_model.hidden_size)] * len(diffusion_model.patch_blocks)
                + [(image_tokens, diffusion_model.pixel_attn_hidden_size)] * len(diffusion_model.pixel_blocks))

    def install(self, patcher, slot) -> None:
        diffusion_model = patcher.model.diffusion_model
        for i in range(len(diffusion_model.patch_blocks)):
            patch_method(patcher, slot, f"diffusion_model.patch_blocks.{i}.forward", before=_gather_patch_block_inputs,
                         graph=True)
        patch_method(patcher, slot, "diffusion_model._pre_pixel_blocks", before=self.before_pixel_blocks,
                     after=every_token_row)
        for i in range(len(diffusion_model.pixel_blocks)):
            block = f"diffusion_model.pixel_blocks.{i}"
            patch_method(patcher, slot, f"{block}.forward", before=_gather_pixel_block_inputs, graph=True)
            patch_method(patcher, slot, f"{block}._fetch_pos", before=_whole_grid, after=_running_rows)
        patch_method(patcher, slot, "diffusion_model.final_layer.forward", after=_every_patch)


def _gather_patch_block_inputs(call, arguments) -> None:
    if call.image_rows is None:                     # the first block: the patches, the text apart
        arguments["x"] = call.gather(arguments["x"])     # dense: unchanged, but counted
    if not call.dense:
        arguments["pos_img"] = _running_rows(call, arguments["pos_img"])


def _running_rows(call, table):
    """A RoPE table with a row per patch of the grid -> the running patches' rows."""
    return table if call.dense else shared_table_rows(call, table, BATCH)


def _gather_pixel_block_inputs(call, arguments) -> None:
    if call.dense:
        return
    x, features = arguments["x"], arguments["s_cond"]
    patches = call.grid_tokens
    batch = features.shape[0] // patches
    if "pixeldit pixels gathered" not in call.layout:     # the first pixel block: every patch's pixels
        call.layout["pixeldit pixels gathered"] = True
        arguments["x"] = call.gather_grid(x.view(batch, patches, -1)).view(-1, *x.shape[1:])
    key = ("pixeldit features", features.data_ptr())
    if key not in call.scratch:                     # every pixel block gets the same features
        call.scratch[key] = call.gather_grid(features.view(batch, patches, -1)).flatten(0, 1)
    arguments["s_cond"] = call.scratch[key]
    # the grid the block sees: the running patches, one column of them (its RoPE rows follow: `_running_rows`)
    arguments["image_height"] = call.image_rows * arguments["patch_size"]
    arguments["image_width"] = arguments["patch_size"]


def _whole_grid(call, arguments) -> None:
    """The pixel block's RoPE is for the whole grid of patches, whatever grid the block was told."""
    if not call.dense:
        arguments["height"], arguments["width"] = call.grid


def _every_patch(call, out):
    """The final layer's pixels of the running patches ((batch x patches, pixels, channels)) -> of every patch: the
    running ones computed, the others from the policy."""
    rows = out.reshape(-1, call.image_rows, out.shape[1] * out.shape[2])
    return call.scatter(rows).view(-1, *out.shape[1:])
