"""LTX-Video's and LTX-2's video self-attention under a guide attention mask (newer ComfyUI: LTXVAddGuide with a
strength other than 1 or a pixel mask; `GuideAttentionMask`, built for the whole sequence before the blocks and handed
to every block's self-attention).

The model splits that attention's queries by position, [video | tracked guide tokens | the rest], and attends each
group with a key bias of its own (a log weight on the guide's keys for the video's queries, on the video's keys for the
guide's): up to three attention calls for one layer, over queries that are not the keys' rows, which the engine's
cache path cannot take. So the module's forward is restated around one engine call (base.attention_through_cache,
checked once against the model's own method): its keys and values go through the K/V cache as any layer's, and the
attention is the same split over the queries that ran, each by its position in the whole sequence (a dense forward:
every token; a sparse one: the running tokens, guide tokens among them where their noise mask, 1 - strength, lets the
policy pick them). Such forwards stay eager: the split reads the running positions on the host."""
import torch

from ..comfy_compat import ltxv_guide_attention_mask
from .base import attention_through_cache


def install_guided_self_attention(patcher, slot, block: str, family: str, check: bool) -> None:
    """Where this ComfyUI has guide attention masks: the self-attention of the block at `block` restated for calls
    that get one (others run the model's own method)."""
    mask_class = ltxv_guide_attention_mask()
    if mask_class is None:
        return

    def applies(arguments: dict) -> bool:
        options = arguments.get("transformer_options") or {}
        return (isinstance(arguments.get("mask"), mask_class) and arguments.get("context") is None
                and not options.get("stg_skip_self_attn", False))      # STG's pass-through of the values: the model's
    attention_through_cache(patcher, slot, f"{block}.attn1.forward", _guided_self_attention, family, check,
                            applies=applies)


def _guided_self_attention(call, module, x, context=None, mask=None, pe=None, k_pe=None, transformer_options={}):
    """CrossAttention.forward (comfy/ldm/lightricks/model.py) as self-attention with a guide mask: projections,
    QK-norm, RoPE and the optional per-head gate as the model computes them, the attention one call of the engine."""
    import comfy.ldm.lightricks.model as ltx
    q, k, v = module.q_norm(module.to_q(x)), module.k_norm(module.to_k(x)), module.to_v(x)
    if pe is not None:
        if k_pe is None and q.shape == k.shape and hasattr(ltx, "apply_rotary_emb_qk"):
            q, k = ltx.apply_rotary_emb_qk(q, k, pe)
        else:
            q, k = ltx.apply_rotary_emb(q, pe), ltx.apply_rotary_emb(k, pe if k_pe is None else k_pe)

    def attend(q, k, v, heads, **kwargs):
        return split_by_guide(q, k, v, heads, guide_groups(call, mask, q.shape[1], q.device), module.attn_precision)
    out = call.attention(attend, q, k, v, module.heads, {})
    if module.to_gate_logits is not None:
        rows, tokens, _ = out.shape
        gates = 2.0 * torch.sigmoid(module.to_gate_logits(x))
        out = (out.view(rows, tokens, module.heads, module.dim_head) * gates.unsqueeze(-1)).view(rows, tokens, -1)
    return module.to_out(out)


def guide_groups(call, mask, queries: int, device: torch.device) -> list:
    """[(rows, query index, key bias or None)]: this forward's queries grouped as ComfyUI's guide attention groups them
    by their positions in the whole sequence (before the guide, the guide's tracked tokens, after them), per row of the
    batch where the rows run other tokens; worked out once a forward (every layer gets the same mask)."""
    key = ("ltx guide groups", id(mask), queries, device)
    if key not in call.scratch:
        positions = query_positions(call, queries)
        start, end = mask.guide_start, mask.guide_start + mask.tracked_count
        groups = []
        for row in range(positions.shape[0]):
            rows = slice(None) if positions.shape[0] == 1 else slice(row, row + 1)
            where = positions[row]
            for chosen, bias in ((where < start, lambda at: mask.noisy_mask),
                                 ((where >= start) & (where < end), lambda at: mask.tracked_mask[:, :, at - start]),
                                 (where >= end, lambda at: None)):
                index = chosen.nonzero()[:, 0]
                if index.numel():
                    at, index = where[index].to(device), index.to(device)
                    groups.append((rows, index, bias(at)))
        call.scratch[key] = groups
    return call.scratch[key]


def query_positions(call, queries: int) -> torch.Tensor:
    """(rows | 1, queries) on the host: where each query of this forward sits in the whole sequence (LTX's guides
    are frames of the latent: the grid covers them, and no token follows it)."""
    if call.dense:
        return torch.arange(queries)[None]
    positions = call.grid_index
    if positions.shape[1] != queries:
        raise NotImplementedError(f"LTX guide attention over {queries} queries where {positions.shape[1]} tokens ran")
    return positions[:1] if call.shared_index else positions


def split_by_guide(q, k, v, heads: int, groups: list, precision) -> torch.Tensor:
    """Attention of queries (rows, n, channels) over every key (rows, T, channels), each group of queries (rows,
    index, key bias: guide_groups) with its key bias, as ComfyUI's guide attention does it."""
    import comfy.ldm.modules.attention as attention
    out = torch.empty_like(q)
    for rows, index, key_bias in groups:
        extra = {} if key_bias is None else dict(mask=key_bias, low_precision_attention=False)
        out[rows, index] = attention.optimized_attention(q[rows, index], k[rows], v[rows], heads,
                                                         attn_precision=precision, **extra)
    return out
