"""Attention of each running video token to the keys of its own frame (per-frame cross-attention).

Some video models add, beside the self-attention over every token, a cross-attention in which each frame's
tokens attend to a few keys of that frame alone: Wan Animate's face motion tokens, HuMo's audio tokens. The
model reshapes the token sequence into frames of equal size for it; a token-sparse sequence runs any number
of tokens per frame, so here every running token attends to the keys of every frame, the other frames'
masked out: the same softmax over its own frame's keys, in one attention call."""
import torch
import torch.nn.functional as F


def attend_within_frames(call, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frames: int) -> torch.Tensor:
    """q (rows, n, heads, dim) of the running tokens; k, v (rows, frames * keys per frame, heads, dim), frame by
    frame. The whole image sequence (grid, then any tokens after it) splits into `frames` equal frames, as the
    model splits it. Returns (rows, n, heads * dim)."""
    length = call.image_sequence_length
    if length % frames or k.shape[1] % frames:
        raise ValueError(f"{length} tokens and {k.shape[1]} keys do not split into {frames} equal frames")
    token_frame = call.image_index_now().to(q.device) // (length // frames)                   # (rows, n)
    key_frame = torch.arange(frames, device=q.device).repeat_interleave(k.shape[1] // frames)   # (keys,)
    own_frame = (token_frame[:, :, None] == key_frame)[:, None]                                 # (rows, 1, n, keys)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=own_frame)
    return out.transpose(1, 2).flatten(2)
