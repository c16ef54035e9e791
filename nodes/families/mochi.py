"""Mochi (comfy/ldm/genmo/joint_model/asymm_models_joint.py, AsymmDiTJoint): text-to-video.

The forward embeds the video into tokens over (frames, rows, cols) (`x_embedder`, a 2-D patch per frame), runs
asymmetric joint blocks (the video and the T5 text have hidden sizes of their own; their queries, keys and values
meet in one attention over [video | text], with 3-D RoPE on the video's), modulated per video, and a per-token final
layer. The adapter hooks modules, never the forward's code:
- the first block that runs gathers the video tokens (the model checks their count after embedding them); attention
  is video first; every block gets the running tokens' RoPE rows (the model makes them once for the video,
  (tokens, heads, .));
- the final layer's output is scattered back to every token.
"""
from .base import FamilyAdapter, gathered_freqs, patch_method, runs_class_methods


class MochiFamily(FamilyAdapter):
    names = ("Mochi",)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.genmo.joint_model.asymm_models_joint", "AsymmDiTJoint",
                                  ("forward", "prepare", "embed_x"))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size)

    def takes_frames(self, diffusion_model) -> bool:
        return True

    def prompt_tokens(self, base_model, tokens, values):
        """The text's unpadded tokens: the model crops the prompt to them (`num_tokens`, from its mask)."""
        mask = values.get("attention_mask")
        return min(tokens, max(1, int(mask.sum()))) if mask is not None else tokens

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        return [(image_tokens + text_tokens, diffusion_model.hidden_size_x)] * len(diffusion_model.blocks)

    def install(self, patcher, slot) -> None:
        for i in range(len(patcher.model.diffusion_model.blocks)):
            patch_method(patcher, slot, f"diffusion_model.blocks.{i}.forward", before=_gather_block_inputs)
        patch_method(patcher, slot, "diffusion_model.final_layer.forward", after=lambda call, out: call.scatter(out))


def _gather_block_inputs(call, arguments) -> None:
    if call.image_rows is None:                     # the first block that runs
        call.image_first = True
        arguments["x"] = call.gather(arguments["x"])    # dense: unchanged, but counted
    if call.dense:
        return
    rotation = dict(arguments.get("attn_kwargs") or {})
    for name in ("rope_cos", "rope_sin"):           # (tokens, heads, head_dim / 2), one for the batch
        rotation[name] = gathered_freqs(call, rotation[name][None], prefix=0)
    arguments["attn_kwargs"] = rotation
