"""HiDream-I1 and E1 (`comfy.ldm.hidream.model.HiDreamImageTransformer2DModel`) on tiny random-weight instances of its
real ComfyUI class (CPU, fp32): joint attention with the image first and text that differs per block (T5 and the last
Llama layer carried along, one Llama layer per block), a mixture-of-experts feed-forward routed per token; the
exactness set of the image families, the memory plan, both sampler nodes and both Model Patch nodes, and HiDream-E1's
edit image beside the latent (its tokens run on every step)."""
import importlib

import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import build_tiny, ksample, text_conditioning
from test_engine_exactness import dense_sparse_plain
from test_memory_plan import sample_patched
from test_video import (assert_within, assert_within_scale, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end)

comfy_nodes = importlib.import_module("nodes")   # ComfyUI's nodes.py
TOL = 1e-5
HEIGHT, WIDTH = 8, 12                            # a non-square latent
TOKENS = (HEIGHT // 2) * (WIDTH // 2)
T5, LLAMA = 24, 32                               # the two text encoders' widths
# ComfyUI's detected HiDream config (model_detection.py), made tiny: 2 double- and 2 single-stream blocks, one Llama
# layer each (the last one twice, as the real config repeats layer 31)
TINY_HIDREAM = dict(image_model="hidream", patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                    num_single_layers=2, attention_head_dim=16, num_attention_heads=4, caption_channels=[T5, LLAMA],
                    text_emb_dim=32, num_routed_experts=4, num_activated_experts=2, axes_dims_rope=[8, 4, 4],
                    max_resolution=[128, 128], llama_layers=[0, 1, 2, 2])


def tiny_hidream(seed):
    return build_tiny(comfy.supported_models.HiDream, TINY_HIDREAM, seed)


def latent(batch=1):
    return torch.zeros(batch, 16, HEIGHT, WIDTH)


def prompt(seed, t5_tokens, llama_tokens, **extra):
    """What HiDream's text encoders hand the model: T5's tokens, a pooled vector and three Llama layers' tokens."""
    g = torch.Generator().manual_seed(seed + 100)
    return text_conditioning(seed, t5_tokens, T5, pooled_output=torch.randn(1, 32, generator=g),
                             conditioning_llama3=torch.randn(1, 3, llama_tokens, LLAMA, generator=g), **extra)


def prompts(**extra):
    """Prompts of different lengths: ComfyUI runs them as two streams at cfg > 1."""
    return dict(positive=prompt(1, 7, 5, **extra), negative=prompt(2, 5, 4, **extra))


def test_hidream_is_its_own_adapter():
    assert adapter_for(tiny_hidream(seed=0), "test").names == ("HiDream-I1", "HiDream-E1")


def test_tokens_take_different_experts():
    """The precondition of the exactness tests: the tiny model's gates route tokens to different experts, so a
    sparse step that routed the running tokens as a group would fail them."""
    model = tiny_hidream(seed=1).model.diffusion_model
    moe = model.double_stream_blocks[0].block.ff_i
    experts, _, _ = moe.gate(torch.randn(1, TOKENS, model.inner_dim, generator=torch.Generator().manual_seed(3)))
    assert len(torch.unique(experts)) == TINY_HIDREAM["num_routed_experts"]


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(batch, cfg):
    every_token_active(tiny_hidream(seed=3), latent(batch), cfg, prompts(), TOKENS, assert_within(TOL))


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(batch, cfg):
    """A third of the tokens, in random order and different per image."""
    exact_on_a_third_of_the_tokens(tiny_hidream(seed=4), latent(batch), cfg, prompts(), TOKENS)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Joint attention over [image | text] in every block, the text T5 + 2 x Llama tokens long."""
    run = sample_patched(tiny_hidream(seed=0), latent(2), cfg, prompts())
    inner = TINY_HIDREAM["num_attention_heads"] * TINY_HIDREAM["attention_head_dim"]
    per_row = {7 + 2 * 5: 2, 5 + 2 * 4: 2 if cfg > 1 else 0}       # text tokens -> rows of that prompt (batch 2)
    expected = sum(4 * rows * (TOKENS + text) * inner * 2 * 4 for text, rows in per_row.items())
    assert run.kv_planned_bytes == run.kv_peak_bytes == expected


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_hidream(seed=7), {"samples": latent(2)}, prompts(), method, TOKENS)
    assert trace.grid == (HEIGHT // 2, WIDTH // 2)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_hidream(seed=8), {"samples": latent(2)}, prompts(), assert_within(TOL))


def edit_prompts():
    """HiDream-E1: the image to edit (its latent, as ComfyUI's edit nodes give it) beside the latent."""
    return prompts(concat_latent_image=torch.randn(1, 16, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(5)))


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_an_edit_image_runs_on_every_step(batch, cfg):
    """HiDream-E1's edit image beside the latent: each row of tokens is the latent's and then the edit image's. The
    edit image's tokens run on every step; every token active equals the model's own sampling and a third of them
    equal the dense forward (the output the policies read: the latent's grid, then the edit image's tokens)."""
    model = tiny_hidream(seed=10)
    plain = ksample(model, latent(batch), seed=5, steps=3, cfg=cfg, **prompts())
    assert (ksample(model, latent(batch), seed=5, steps=3, cfg=cfg, **edit_prompts()) - plain).abs().max().item() > 1e-4
    # to 4e-6 of the samples' scale: the tokens attend in another order than the model's, which rounds otherwise
    every_token_active(model, latent(batch), cfg, edit_prompts(), TOKENS, assert_within_scale(4e-6))
    exact_on_a_third_of_the_tokens(tiny_hidream(seed=11), latent(batch), cfg, edit_prompts(), TOKENS, extra=TOKENS)


def test_the_policies_see_the_latent_where_it_is():
    """The output the policies read has the latent's tokens first, in the latent's order: the model's own output
    patchified, though the model's rows interleave the latent's and the edit image's tokens."""
    model = tiny_hidream(seed=12)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, 16, HEIGHT, WIDTH, generator=g)
    conditioning = prompt(1, 7, 5)[0]
    kwargs = dict(context=conditioning[0], y=conditioning[1]["pooled_output"],
                  encoder_hidden_states_llama3=conditioning[1]["conditioning_llama3"],
                  image_cond=torch.randn(1, 16, HEIGHT, WIDTH, generator=g))
    dense, sparse, plain, run = dense_sparse_plain(model, x, 0.6, 10, **kwargs)
    assert (dense - plain).abs().max().item() <= TOL and (sparse - plain).abs().max().item() <= TOL
    (stream,) = run.streams.values()
    tokens = plain.view(1, 16, HEIGHT // 2, 2, WIDTH // 2, 2).permute(0, 2, 4, 3, 5, 1).flatten(3).flatten(1, 2)
    assert (stream.last_output[:, :TOKENS] + tokens).abs().max().item() <= TOL      # the model returns minus its output


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_holds_the_edit_image(cfg):
    run = sample_patched(tiny_hidream(seed=0), latent(2), cfg, edit_prompts())
    inner = TINY_HIDREAM["num_attention_heads"] * TINY_HIDREAM["attention_head_dim"]
    per_row = {7 + 2 * 5: 2, 5 + 2 * 4: 2 if cfg > 1 else 0}
    expected = sum(4 * rows * (2 * TOKENS + text) * inner * 2 * 4 for text, rows in per_row.items())
    assert run.kv_planned_bytes == run.kv_peak_bytes == expected
