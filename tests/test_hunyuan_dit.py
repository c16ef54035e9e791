"""HunyuanDiT 1.x (`comfy.ldm.hydit.models.HunYuanDiT`) on tiny random-weight instances of its real ComfyUI class (CPU,
fp32): self-attention over the image's tokens and cross-attention to the CLIP and mT5 prompt, both with 2-D RoPE on the
image's queries and called without `transformer_options` (restated by the adapter on the modules' own layers), long
skip connections, a v-prediction model; the exactness set of the image families (a non-square latent, two prompts),
the check of the restated attention against the model's own, the memory plan, both sampler nodes and both Model
Patch nodes."""
import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.families import adapter_for
from comfyui_sdit.sdit_core.engine import SparseRun
from sdit_testkit import assert_exact_on_active_tokens, build_tiny, random_active
from test_engine_exactness import engine_forward, patch
from test_memory_plan import sample_patched
from test_video import (assert_within, dense_then_sparse, every_token_active, model_patch_nodes_under_ksampler,
                        sampler_node_end_to_end)

TOL = 1e-5
HEIGHT, WIDTH = 8, 12                            # a non-square latent at patch size 2: 4 x 6 = 24 tokens
TOKENS = (HEIGHT // 2) * (WIDTH // 2)
# ComfyUI's HunyuanDiT config, made tiny: 4 blocks (two of them with long skips) of 4 heads of 16, CLIP and mT5
# prompts of 6 and 5 tokens 32 wide
TINY_HUNYUAN_DIT = dict(image_model="hydit", depth=4, hidden_size=64, num_heads=4, patch_size=2, in_channels=4,
                        text_states_dim=32, text_states_dim_t5=32, text_len=6, text_len_t5=5, mlp_ratio=2.0,
                        size_cond=False, use_style_cond=False)


def tiny_hunyuan_dit(seed):
    return build_tiny(comfy.supported_models.HunyuanDiT, TINY_HUNYUAN_DIT, seed)


def latent(batch=1):
    return torch.zeros(batch, 4, HEIGHT, WIDTH)


def conditioning(seed: int, clip_tokens: int, t5_tokens: int):
    """A CLIP and an mT5 prompt with their masks, as ComfyUI's HunyuanDiT text encoder gives them (padding masked)."""
    g = torch.Generator().manual_seed(seed)
    mask, mask_t5 = torch.zeros(1, 6), torch.zeros(1, 5)
    mask[:, :clip_tokens], mask_t5[:, :t5_tokens] = 1, 1
    return [[torch.randn(1, 6, 32, generator=g), {"attention_mask": mask,
                                                  "conditioning_mt5xl": torch.randn(1, 5, 32, generator=g),
                                                  "attention_mask_mt5xl": mask_t5}]]


def prompts():
    return dict(positive=conditioning(1, 4, 5), negative=conditioning(2, 2, 3))


def test_hunyuan_dit_is_its_own_adapter():
    assert adapter_for(tiny_hunyuan_dit(seed=0), "test").names == ("HunyuanDiT",)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(batch, cfg):
    run = every_token_active(tiny_hunyuan_dit(seed=3), latent(batch), cfg, prompts(), TOKENS, assert_within(TOL))
    assert run.grid == (HEIGHT // 2, WIDTH // 2)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(batch, cfg):
    """A third of the tokens, in random order and different per image (both prompts padded alike: one call, one
    stream, at cfg 3 four rows)."""
    active = random_active(batch, TOKENS, TOKENS // 3, seed=1)
    by_stream = dense_then_sparse(tiny_hunyuan_dit(seed=4), latent(batch), active, cfg, prompts())
    assert len(by_stream) == 1
    assert_exact_on_active_tokens(by_stream, TOKENS)


def test_controlnet_residuals_on_the_long_skips_are_gathered():
    """HunyuanDiT's ControlNet adds a residual to each long skip (the model pops them from the list it is given, so
    each forward gets its own list): with a third of the tokens, the sparse forward equals the dense one on them."""
    model = tiny_hunyuan_dit(seed=9)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, HEIGHT, WIDTH, generator=g)
    residual = 0.1 * torch.randn(1, TOKENS, 64, generator=g)         # one long skip in 4 blocks
    cond = prompts()["positive"][0]
    text = dict(context=cond[0].clone(), text_embedding_mask=cond[1]["attention_mask"],
                encoder_hidden_states_t5=cond[1]["conditioning_mt5xl"],
                text_embedding_mask_t5=cond[1]["attention_mask_mt5xl"], image_meta_size=torch.zeros(1, 6))

    def kwargs(control=True):
        return dict(text, context=text["context"].clone(), control={"output": [residual]} if control else None)
    active = random_active(1, TOKENS, TOKENS // 3, seed=4)
    patched, slot, policy = patch(model, [None, active])
    run = SparseRun(policy, x.shape, patch_size=2)
    slot.run = run
    try:
        with engine_forward(patched, run, 0.6) as forward:
            dense, sparse = forward(x, **kwargs()), forward(x, **kwargs())
    finally:
        slot.run = None
    plain = model.model.diffusion_model(x, torch.full((1,), 0.6), transformer_options={}, **kwargs())
    assert (dense - plain).abs().max().item() <= TOL and (sparse - plain).abs().max().item() <= TOL
    assert run.evals[1].calls[0].attention_image_rows == [TOKENS // 3] * 4
    without = model.model.diffusion_model(x, torch.full((1,), 0.6), transformer_options={}, **kwargs(control=False))
    assert (without - plain).abs().max().item() > 1e-3, "the residuals count"


@pytest.mark.parametrize("module", ["Attention", "CrossAttention"])
def test_attention_that_computes_something_else_stops_clearly(monkeypatch, module):
    """The adapter restates the model's self- and cross-attention; where a ComfyUI's computes otherwise the first
    dense forward stops with the error, before any image is sampled wrong."""
    from comfy.ldm.hydit import attn_layers
    original = getattr(attn_layers, module).forward

    def changed(self, *args, **kwargs):
        return (original(self, *args, **kwargs)[0] * 0.5,)
    monkeypatch.setattr(getattr(attn_layers, module), "forward", changed)
    with pytest.raises(NotImplementedError, match=f"{module}.forward computes something other"):
        every_token_active(tiny_hunyuan_dit(seed=6), latent(1), 1.0, prompts(), TOKENS, assert_within(TOL))


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Self-attention over the image's tokens alone in every block (the prompt enters by cross-attention)."""
    run = sample_patched(tiny_hunyuan_dit(seed=0), latent(2), cfg, prompts())
    width, layers = 64, 4
    rows = 2 + (2 if cfg > 1 else 0)                            # the positive's and the negative's, batch 2
    assert run.kv_planned_bytes == run.kv_peak_bytes == rows * layers * TOKENS * width * 2 * 4


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_hunyuan_dit(seed=7), {"samples": latent(2)}, prompts(), method,
                                             TOKENS)
    assert trace.grid == (HEIGHT // 2, WIDTH // 2)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_hunyuan_dit(seed=8), {"samples": latent(2)}, prompts(), assert_within(TOL))
