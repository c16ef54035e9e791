"""HunyuanDiT 1.x (comfy/ldm/hydit/models.py, HunYuanDiT).

The forward patchifies the latent into tokens (`x_embedder`), builds 2-D RoPE as (cos, sin) tables over the tokens,
then runs blocks of self-attention over the image's tokens and cross-attention of the image's queries to the CLIP and
mT5 prompt, with long skip connections from each block of the first half to its mirror in the second (ControlNet
residuals added to them), and a per-token final layer before `unpatchify`. Its attention calls ComfyUI's without
`transformer_options`, and its RoPE checks that the table covers every token. The adapter hooks modules, never the
forward's code:
- the forward: ControlNet residuals are gathered; `x_embedder`'s output: the image tokens are gathered;
- every block gets the running tokens' rows of the RoPE tables (and replays from a CUDA graph of its own, the tables
  copied into its static buffers); its self-attention is restated on its own layers
  through the K/V cache, its cross-attention (queries rotated, keys the prompt's) past it, both checked against the
  model's own on the first dense forward (base.attention_through_cache);
- the final layer's output is scattered back to every token.
"""
import torch

from .base import (FamilyAdapter, attention_through_cache, gather_control, patch_method, patch_module_forward,
                   runs_class_methods)

_MODELS = "comfy.ldm.hydit.models"
_LAYERS = "comfy.ldm.hydit.attn_layers"


class HunyuanDiTFamily(FamilyAdapter):
    names = ("HunyuanDiT",)

    def matches(self, diffusion_model) -> bool:
        return (runs_class_methods(diffusion_model, _MODELS, "HunYuanDiT", ("forward", "unpatchify"))
                and all(runs_class_methods(block, _MODELS, "HunYuanDiTBlock", ("forward", "_forward"))
                        and runs_class_methods(block.attn1, _LAYERS, "Attention", ("forward",))
                        and runs_class_methods(block.attn2, _LAYERS, "CrossAttention", ("forward",))
                        for block in diffusion_model.blocks))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size)

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        return [(image_tokens, diffusion_model.hidden_size)] * len(diffusion_model.blocks)

    def install(self, patcher, slot) -> None:
        patch_method(patcher, slot, "diffusion_model.forward", before=_gather_control)
        patch_module_forward(patcher, slot, "diffusion_model.x_embedder", after=lambda call, x: call.gather(x))
        for i in range(len(patcher.model.diffusion_model.blocks)):
            block = f"diffusion_model.blocks.{i}"
            patch_method(patcher, slot, f"{block}.forward", before=_gather_rope, graph=True)
            attention_through_cache(patcher, slot, f"{block}.attn1.forward", _self_attention, "HunyuanDiT", i == 0)
            attention_through_cache(patcher, slot, f"{block}.attn2.forward", _cross_attention, "HunyuanDiT", i == 0)
        patch_module_forward(patcher, slot, "diffusion_model.final_layer", after=lambda call, out: call.scatter(out))


def _gather_control(call, arguments) -> None:
    arguments["control"] = gather_control(call, arguments.get("control"))


def _gather_rope(call, arguments) -> None:
    """(cos, sin), each (every token, head dim) -> (rows, running tokens, head dim), once per forward."""
    freqs = arguments.get("freq_cis_img")
    if call.dense or freqs is None:
        return
    key = ("hunyuan dit rope", freqs[0].data_ptr())
    if key not in call.scratch:
        call.scratch[key] = tuple(call.gather_grid(table.expand(call.image_index_now().shape[0], -1, -1))
                                  for table in freqs)
    arguments["freq_cis_img"] = call.scratch[key]


def _rotate(x: torch.Tensor, freqs, heads_at: int) -> torch.Tensor:
    """The model's real-valued RoPE (x cos + rotate_half(x) sin) with tables of (tokens, dim) or (rows, tokens, dim),
    for x of (rows, heads, tokens, dim) (`heads_at` 1) or (rows, tokens, heads, dim) (2)."""
    from comfy.ldm.hydit.attn_layers import rotate_half
    cos, sin = (table if table.ndim == 3 else table[None] for table in freqs)
    cos, sin = cos.unsqueeze(heads_at), sin.unsqueeze(heads_at)
    return x * cos + rotate_half(x) * sin


def _self_attention(call, attention, x, freqs_cis_img=None):
    """Attention.forward on the tokens that run, through the K/V cache."""
    from comfy.ldm.modules.attention import optimized_attention
    rows, n, channels = x.shape
    qkv = attention.Wqkv(x).reshape(rows, n, 3, attention.num_heads, attention.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)                                             # (rows, heads, n, head dim)
    q, k = attention.q_norm(q), attention.k_norm(k)
    if freqs_cis_img is not None:
        q, k = _rotate(q, freqs_cis_img, 1), _rotate(k, freqs_cis_img, 1)
    out = call.attention(optimized_attention, q, k, v, attention.num_heads,
                         {"skip_reshape": True, "attn_precision": attention.attn_precision})
    return (attention.proj_drop(attention.out_proj(out)),)


def _cross_attention(call, attention, x, y, freqs_cis_img=None):
    """CrossAttention.forward on the tokens that run: their queries rotated, the prompt's keys as they are."""
    from comfy.ldm.modules.attention import optimized_attention
    rows, n, _ = x.shape
    q = attention.q_norm(attention.q_proj(x).view(rows, n, attention.num_heads, attention.head_dim))
    k, v = attention.kv_proj(y).view(rows, y.shape[1], 2, attention.num_heads, attention.head_dim).unbind(dim=2)
    k = attention.k_norm(k)
    if freqs_cis_img is not None:
        q = _rotate(q, freqs_cis_img, 2)
    out = optimized_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attention.num_heads,
                              skip_reshape=True, attn_precision=attention.attn_precision)
    return (attention.proj_drop(attention.out_proj(out)),)
