"""Cosmos 1.0 (comfy/ldm/cosmos/model.py, GeneralDIT: Text2World and Video2World 7B / 14B).

The forward embeds the video into a (frames, rows, cols, batch, channels) grid (`forward_before_blocks`, which also
returns the 3-D RoPE table, one row per token, and a learned position embedding of the grid's shape that the forward
adds before every block), then runs blocks of self-attention, cross-attention to the T5 prompt and an MLP, each
modulated per video; their attention flattens the grid, sequence first. The adapter hooks methods, never the forward's
code:
- `forward_before_blocks`' output: the running tokens as a grid of one-token frames (n, 1, 1, batch, channels), with
  their rows of the position embedding and of RoPE (per video: each may run other tokens);
- the cross-attention modules pass the K/V cache by (their keys are the prompt's, complete as they are);
- the final layer's output (one row per token) gets every token's row back, in the order the model's decoder reads.
"""
from .base import FamilyAdapter, gathered_freqs, passthrough_method, patch_method, runs_class_methods

_EXTRA_POSITIONS = "extra_pos_emb_B_T_H_W_D_or_T_H_W_B_D"


class Cosmos1Family(FamilyAdapter):
    names = ("Cosmos 1.0",)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.cosmos.model", "GeneralDIT",
                                  ("forward", "_forward", "forward_before_blocks", "decoder_head"))

    def refused_model(self, diffusion_model):
        if diffusion_model.block_x_format != "THWBD":
            return (f"Cosmos 1.0 with blocks in the {diffusion_model.block_x_format} layout (ComfyUI's loader sets "
                    "THWBD) is not supported by region-adaptive sampling: sample it with KSampler")
        return None

    def takes_frames(self, diffusion_model) -> bool:
        return True

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_spatial)

    def temporal_patch(self, diffusion_model) -> int:
        return int(diffusion_model.patch_temporal)

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        return [(image_tokens, diffusion_model.model_channels)] * len(_self_attention_layers(diffusion_model))

    def install(self, patcher, slot) -> None:
        diffusion_model = patcher.model.diffusion_model
        patch_method(patcher, slot, "diffusion_model.forward_before_blocks", after=_running_tokens)
        for path in _layers(diffusion_model, ("cross_attn", "ca")):
            passthrough_method(patcher, slot, f"diffusion_model.{path}.block.forward")
        patch_method(patcher, slot, "diffusion_model.final_layer.forward", after=_every_token_output)


def _layers(diffusion_model, kinds) -> list:
    return [f"blocks.{name}.blocks.{i}" for name, block in diffusion_model.blocks.items()
            for i, layer in enumerate(block.blocks) if layer.block_type in kinds]


def _self_attention_layers(diffusion_model) -> list:
    return _layers(diffusion_model, ("full_attn", "fa"))


def _running_tokens(call, inputs: dict) -> dict:
    """(frames, rows, cols, batch, channels) grids -> the running tokens as one-token frames; RoPE's rows for them,
    per video (batch, 1, tokens, ...: broadcast over the heads of the model's (batch, heads, tokens, ...) queries)."""
    tokens = call.gather(_tokens(inputs["x"]))                     # dense: unchanged, but counted
    if call.dense:
        return inputs
    inputs = dict(inputs, x=_frames(tokens))
    if inputs.get(_EXTRA_POSITIONS) is not None:
        inputs[_EXTRA_POSITIONS] = _frames(call.gather(_tokens(inputs[_EXTRA_POSITIONS])))
    if inputs.get("rope_emb_L_1_1_D") is not None:
        inputs["rope_emb_L_1_1_D"] = gathered_freqs(call, inputs["rope_emb_L_1_1_D"][None], prefix=0)[:, None]
    return inputs


def _tokens(grid):
    """(frames, rows, cols, batch, channels) -> (batch, tokens, channels), tokens in the grid's order."""
    return grid.flatten(0, 2).movedim(1, 0)


def _frames(tokens):
    """(batch, n, channels) -> (n, 1, 1, batch, channels): n frames of one token each."""
    return tokens.movedim(0, 1)[:, None, None]


def _every_token_output(call, out):
    """The final layer's rows ((batch x frames, rows x cols, .), or one per running token) -> a row per token of the
    whole grid, (batch x tokens, 1, .): the running ones computed, the others from the policy."""
    rows = out.reshape(-1, call.image_rows, out.shape[-1])
    return call.scatter(rows).flatten(0, 1)[:, None]
