"""PixArt-α and PixArt-Σ (comfy/ldm/pixart/pixartms.py, PixArtMS).

`forward_orig` patchifies the latent into tokens over (rows, cols) and adds a sine position embedding per token,
then runs blocks of self-attention over the image's tokens, cross-attention to the T5 prompt and a feed-forward
(modulated per image), and a per-token final layer before `unpatchify`. Its attention calls ComfyUI's without
`transformer_options`, so the engine's override never sees it. The adapter hooks modules, never the forward's code:
- the first block gathers the image tokens (their position embedding already added);
- every block's self-attention (`AttentionKVCompress.forward`) is restated on its own layers through the K/V cache,
  checked against the model's own on the first dense forward (base.attention_through_cache); the cross-attention's
  keys are the prompt's, complete as they are;
- the final layer's output is scattered back to every token.
Key/value compression (`sr_ratio` above 1: keys pooled over the whole grid) is a configuration ComfyUI never loads; a
model with it is refused with a clear error.
"""
from .base import FamilyAdapter, attention_through_cache, patch_method, patch_module_forward, runs_class_methods

_BLOCKS = "comfy.ldm.pixart.blocks"


class PixArtFamily(FamilyAdapter):
    names = ("PixArt-α", "PixArt-Σ")

    def matches(self, diffusion_model) -> bool:
        return (runs_class_methods(diffusion_model, "comfy.ldm.pixart.pixartms", "PixArtMS",
                                   ("forward", "forward_orig", "unpatchify"))
                and all(runs_class_methods(block, "comfy.ldm.pixart.pixartms", "PixArtMSBlock", ("forward",))
                        and runs_class_methods(block.attn, _BLOCKS, "AttentionKVCompress", ("forward",))
                        for block in diffusion_model.blocks))

    def refused_model(self, diffusion_model):
        if any(block.attn.sr_ratio != 1 for block in diffusion_model.blocks):
            return ("PixArt with key/value compression (attention whose keys are pooled over the whole grid) is not "
                    "supported by region-adaptive sampling; sample it with KSampler")
        return None

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size)

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        return [(image_tokens, diffusion_model.hidden_size)] * len(diffusion_model.blocks)

    def install(self, patcher, slot) -> None:
        blocks = len(patcher.model.diffusion_model.blocks)
        for i in range(blocks):
            patch_method(patcher, slot, f"diffusion_model.blocks.{i}.forward",
                         before=_gather_image_tokens if i == 0 else None, graph=True)
            attention_through_cache(patcher, slot, f"diffusion_model.blocks.{i}.attn.forward", _self_attention,
                                    "PixArt", check=i == 0)
        patch_module_forward(patcher, slot, "diffusion_model.final_layer", after=lambda call, out: call.scatter(out))


def _gather_image_tokens(call, arguments) -> None:
    arguments["x"] = call.gather(arguments["x"])    # dense: unchanged, but counted


def _self_attention(call, attention, x, mask=None, HW=None, block_id=None):
    """AttentionKVCompress.forward (without compression) on the tokens that run, through the K/V cache."""
    from comfy.ldm.modules.attention import optimized_attention
    if mask is not None:
        raise NotImplementedError("PixArt: a mask on the self-attention (which ComfyUI's model refuses too)")
    rows, n, channels = x.shape
    q, k, v = attention.qkv(x).reshape(rows, n, 3, channels).unbind(2)
    out = call.attention(optimized_attention, attention.q_norm(q), attention.k_norm(k), v, attention.num_heads, {})
    return attention.proj(out)
