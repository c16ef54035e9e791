"""CogVideoX (comfy/ldm/cogvideo/model.py, CogVideoXTransformer3DModel; newer ComfyUI): 1.0 (2B, 5B) and 1.5 (5B),
text-to-video and image-to-video.

The forward embeds the text and the video into one sequence (`patch_embed`: a 2-D patch per frame for 1.0, a 2 x 2 x
2 patch over frames for 1.5; 1.0 2B adds sine position embeddings per token), splits it again, runs blocks (joint
attention over [text | video] with 3-axis RoPE on the video's queries and keys, a feed-forward over both, modulated
per video) and a per-token output (`norm_final`, `norm_out`, `proj_out`). The adapter hooks modules, never the
forward's code:
- the first block gathers the video tokens; every block gets the running tokens' RoPE rows;
- `proj_out`'s output is scattered back to every token.
The model's RoPE is one (tokens, channels) table for the whole batch: a sparse step needs every row of the batch to
run the same tokens (one video, its cond and uncond rows); the sampler nodes refuse a batch of several videos
before sampling, and a Model Patch node's run stops with the same clear error at its first sparse step.
"""
from .base import FamilyAdapter, patch_method, patch_module_forward, runs_class_methods, shared_table_rows

BATCH = ("CogVideoX with a batch of several videos is not supported by region-adaptive sampling (its rotary "
         "embedding is one table for the batch, and each video runs other tokens): use batch size 1")


class CogVideoXFamily(FamilyAdapter):
    names = ("CogVideoX",)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.cogvideo.model", "CogVideoXTransformer3DModel",
                                  ("forward", "_forward", "_get_rotary_emb"))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size)

    def takes_frames(self, diffusion_model) -> bool:
        return True

    def temporal_patch(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size_t or 1)

    def refused_latent(self, diffusion_model, shape):
        return BATCH if shape[0] > 1 else None

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        return [(text_tokens + image_tokens, diffusion_model.dim)] * len(diffusion_model.blocks)

    def install(self, patcher, slot) -> None:
        for i in range(len(patcher.model.diffusion_model.blocks)):
            patch_method(patcher, slot, f"diffusion_model.blocks.{i}.forward", before=_gather_block_inputs)
        patch_module_forward(patcher, slot, "diffusion_model.proj_out", after=lambda call, out: call.scatter(out))


def _gather_block_inputs(call, arguments) -> None:
    if call.image_rows is None:                     # the first block
        arguments["hidden_states"] = call.gather(arguments["hidden_states"])     # dense: unchanged, but counted
    rope = arguments.get("image_rotary_emb")
    if call.dense or rope is None:
        return
    arguments["image_rotary_emb"] = tuple(shared_table_rows(call, table, BATCH) for table in rope)   # (tokens, .)
