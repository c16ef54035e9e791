"""ERNIE-Image (comfy/ldm/ernie/model.py, ErnieImageModel; newer ComfyUI).

The forward patchifies the latent (`x_embedder`, a token per latent pixel at patch size 1), joins the projected
prompt after the image's tokens, builds RoPE for [image | text] (`pos_embed`), runs single-stream blocks (joint
attention with QK-norm and RoPE, modulated per image by one shared AdaLN) and a per-token output (`final_norm`,
`final_linear`), then keeps the image's rows. Its attention calls ComfyUI's without `transformer_options`, so the
engine's override never sees it. The adapter hooks modules, never the forward's code:
- `x_embedder`'s output: the image tokens are gathered; attention is image first;
- `pos_embed`'s output: the image part of RoPE is gathered, the text part stays;
- every block's attention (`ErnieImageAttention.forward`) is restated on its own layers through the K/V cache,
  checked against the model's own on the first dense forward (base.attention_through_cache); each block may replay
  from a CUDA graph of its own (its shared modulation, a list of six tensors, copied into its static buffers);
- `final_linear`'s output (over [running image | text]) becomes every image token's row: the running ones computed,
  the others from the policy.
"""
import torch

from .base import (FamilyAdapter, attention_through_cache, gather_image_first, patch_method, patch_module_forward,
                   runs_class_methods)

_MODULE = "comfy.ldm.ernie.model"


class ErnieImageFamily(FamilyAdapter):
    names = ("ERNIE-Image",)

    def matches(self, diffusion_model) -> bool:
        return (runs_class_methods(diffusion_model, _MODULE, "ErnieImageModel", ("forward",))
                and all(runs_class_methods(layer, _MODULE, "ErnieImageSharedAdaLNBlock", ("forward",))
                        and runs_class_methods(layer.self_attention, _MODULE, "ErnieImageAttention", ("forward",))
                        for layer in diffusion_model.layers))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size)

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        return [(image_tokens + text_tokens, diffusion_model.hidden_size)] * len(diffusion_model.layers)

    def install(self, patcher, slot) -> None:
        patch_module_forward(patcher, slot, "diffusion_model.x_embedder", after=gather_image_first)
        patch_module_forward(patcher, slot, "diffusion_model.pos_embed", after=_gather_image_rope)
        for i in range(len(patcher.model.diffusion_model.layers)):
            # each block's sparse calls may replay from a CUDA graph of its own (its modulation comes as a list of six)
            patch_method(patcher, slot, f"diffusion_model.layers.{i}.forward", graph=True)
            attention_through_cache(patcher, slot, f"diffusion_model.layers.{i}.self_attention.forward",
                                    _attention, "ERNIE-Image", check=i == 0)
        patch_module_forward(patcher, slot, "diffusion_model.final_linear",
                             after=lambda call, out: call.scatter(out[:, :call.image_rows]))


def _gather_image_rope(call, rope):
    """(batch, image + text, 1, head_dim / 2, 2, 2) -> the running image tokens' rows, then the text's."""
    if call.dense:
        return rope
    image = call.grid_tokens
    return torch.cat([call.gather(rope[:, :image]), rope[:, image:]], dim=1)


def _attention(call, attention, x, attention_mask=None, image_rotary_emb=None):
    """ErnieImageAttention.forward on the tokens that run: QK-norm, RoPE, attention through the K/V cache."""
    import comfy.quant_ops
    from comfy.ldm.modules.attention import optimized_attention
    rows, n, _ = x.shape
    q = attention.norm_q(attention.to_q(x).view(rows, n, attention.heads, attention.head_dim))
    k = attention.norm_k(attention.to_k(x).view(rows, n, attention.heads, attention.head_dim))
    if image_rotary_emb is not None:
        q, k = comfy.quant_ops.ck.apply_rope_split_half(q, k, image_rotary_emb)
    out = call.attention(optimized_attention, q.reshape(rows, n, -1), k.reshape(rows, n, -1), attention.to_v(x),
                         attention.heads, {"mask": attention_mask})
    return attention.to_out[0](out)
