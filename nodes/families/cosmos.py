"""Cosmos Predict2 and Anima (comfy/ldm/cosmos/predict2.py, MiniTrainDIT; comfy/ldm/anima/model.py).

MiniTrainDIT embeds the latent (image or video, a 5-D latent of one or more frames) into tokens on a
(frames, rows, cols) grid and keeps them in that 5-D shape (batch, frames, rows, cols, channels) through
its blocks: self-attention over the flattened tokens with 3-D RoPE, cross-attention to the text,
a feed-forward, each modulated per frame (the timestep is per video, or per frame for Video2World's
conditioning frames). Anima is the same network with an adapter that maps its LLM's text to the
cross-attention context before sampling (`preprocess_text_embeds`, outside the blocks).
The adapter hooks modules, never the forward's code:
- the first block that runs gathers the tokens; a sparse sequence of n running tokens goes through the
  blocks as n "frames" of one token, (batch, n, 1, 1, channels), so each block's per-frame broadcasts
  become per-token ones: every block gets the running tokens' RoPE rows, their frame's modulation and,
  where the model has them (extra_per_block_abs_pos_emb), their learned position embeddings;
- cross-attention passes the K/V cache by (its keys are the text, complete as they are);
- the final layer gets the running tokens' modulation and its output is scattered back to the grid;
- each block's sparse calls may replay from a CUDA graph (forward_graphs.py): a block reads its arguments, the
  index and the K/V cache alone (Anima LLLite's features come through a patch, which keeps the blocks eager).
Self-attention has no text prefix: the K/V cache holds the image tokens alone.
Anima LLLite (newer ComfyUI's "Apply Anima LLLite") encodes its control image into features per token before the
blocks and adds them, through small per-token layers, to every block's q/k/v and feed-forward inputs: on a
sparse forward the first block hands each running token its own features.
"""
import torch

from .base import FamilyAdapter, gathered_freqs, passthrough_method, patch_method, runs_class_methods

GRID = ("cosmos", "token grid")      # a per-forward layout key: (frames, rows, cols) of the 5-D token tensor
LLLITE_FEATURES = "AnimaLLLitePatch"     # its post_input patch: the key of its per-token features in model_patch_data


class CosmosFamily(FamilyAdapter):
    names = ("Cosmos Predict2", "Anima")

    def matches(self, diffusion_model) -> bool:
        # Anima overrides `forward` only to map its text first; a subclass running blocks of its own is another model
        return (runs_class_methods(diffusion_model, "comfy.ldm.cosmos.predict2", "MiniTrainDIT", ("_forward",))
                and all(runs_class_methods(block, "comfy.ldm.cosmos.predict2", "Block", ("forward",))
                        for block in diffusion_model.blocks))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_spatial)

    def takes_frames(self, diffusion_model) -> bool:
        return True                     # image models too: ComfyUI hands them single-frame 5-D latents

    def temporal_patch(self, diffusion_model) -> int:
        return int(diffusion_model.patch_temporal)

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        return [(image_tokens, diffusion_model.model_channels)] * len(diffusion_model.blocks)

    def install(self, patcher, slot) -> None:
        # the sparse part starts inside `_forward`: each block's sparse calls may replay from a CUDA graph of its own
        for i in range(len(patcher.model.diffusion_model.blocks)):
            patch_method(patcher, slot, f"diffusion_model.blocks.{i}.forward", before=_gather_block_inputs, graph=True)
            passthrough_method(patcher, slot, f"diffusion_model.blocks.{i}.cross_attn.forward")
        patch_method(patcher, slot, "diffusion_model.final_layer.forward", before=_gather_final_modulation,
                     after=_scatter_final_output)


def _as_sparse_frames(tokens: torch.Tensor) -> torch.Tensor:
    """(batch, n, channels) running tokens -> (batch, n, 1, 1, channels): n frames of one token each."""
    return tokens[:, :, None, None]


def _flat(grid_tensor: torch.Tensor) -> torch.Tensor:
    """(batch, frames, rows, cols, channels) -> (batch, tokens, channels), tokens in the grid's order."""
    return grid_tensor.reshape(grid_tensor.shape[0], -1, grid_tensor.shape[-1])


def _gather_block_inputs(call, arguments) -> None:
    if call.image_rows is None:         # the first block that runs
        x = arguments["x_B_T_H_W_D"]
        call.layout[GRID] = tuple(x.shape[1:4])
        running = call.gather(_flat(x))     # dense: unchanged, but counted
        if call.dense:
            return
        arguments["x_B_T_H_W_D"] = _as_sparse_frames(running)
        _gather_control_features(call, arguments.get("transformer_options") or {})
    if call.dense:
        return
    # RoPE rows are (1, tokens, 1, head_dim / 2, 2, 2) for every image: each image gets its running tokens' rows
    arguments["rope_emb_L_1_1_D"] = gathered_freqs(call, arguments["rope_emb_L_1_1_D"], prefix=0)
    arguments["emb_B_T_D"] = _per_running_token(call, arguments["emb_B_T_D"])
    arguments["adaln_lora_B_T_3D"] = _per_running_token(call, arguments.get("adaln_lora_B_T_3D"))
    extra = arguments.get("extra_per_block_pos_emb")
    if extra is not None:
        key = ("cosmos position", extra.data_ptr())
        if key not in call.scratch:
            rows = call.image_index_now().shape[0]
            call.scratch[key] = _as_sparse_frames(call.gather_grid(_flat(extra).expand(rows, -1, -1)))
        arguments["extra_per_block_pos_emb"] = call.scratch[key]


def _gather_control_features(call, transformer_options: dict) -> None:
    """Anima LLLite's features, (batch | 1, tokens, channels) over the grid in the forward's own `model_patch_data`
    (a dict the model makes anew each forward), become the running tokens' (its layers repeat one image's features
    over the batch; so does this)."""
    data = transformer_options.get("model_patch_data") or {}
    rows = call.image_index_now().shape[0]
    for patch, features in list(data.items()):
        if not (torch.is_tensor(features) and any(c.__name__ == LLLITE_FEATURES for c in type(patch).__mro__)):
            continue
        if features.shape[0] != rows and rows % features.shape[0] == 0:
            features = features.repeat(rows // features.shape[0], 1, 1)
        data[patch] = call.gather_grid(features)


def _per_running_token(call, per_frame):
    """Modulation input per video (batch, 1, channels) broadcasts over the running tokens as it is; per frame
    (batch, frames, channels) each running token gets its frame's row."""
    if per_frame is None or per_frame.shape[1] == 1:
        return per_frame
    key = ("cosmos per frame", per_frame.data_ptr(), tuple(per_frame.shape))
    if key not in call.scratch:
        frames, rows, cols = call.layout[GRID]
        if per_frame.shape[1] != frames:
            raise ValueError(f"modulation for {per_frame.shape[1]} frames, the tokens have {frames}")
        every_token = per_frame[:, :, None].expand(-1, -1, rows * cols, -1).reshape(per_frame.shape[0], -1,
                                                                                  per_frame.shape[-1])
        call.scratch[key] = call.gather_grid(every_token)
    return call.scratch[key]


def _gather_final_modulation(call, arguments) -> None:
    if not call.dense:
        arguments["emb_B_T_D"] = _per_running_token(call, arguments["emb_B_T_D"])
        arguments["adaln_lora_B_T_3D"] = _per_running_token(call, arguments.get("adaln_lora_B_T_3D"))


def _scatter_final_output(call, out: torch.Tensor) -> torch.Tensor:
    full = call.scatter(_flat(out))
    return full.reshape(full.shape[0], *call.layout[GRID], full.shape[-1])
