"""Mage-Flow (`comfy.ldm.mage_flow.model.MageFlowTransformer2DModel`, newer ComfyUI) on tiny random-weight instances of
its real ComfyUI class (CPU, fp32): Qwen-Image's double-stream blocks at one token per latent pixel, unrotated text;
the exactness set of the image families (a non-square latent), a reference latent (its tokens always run), the
memory plan, both sampler nodes and both Model Patch nodes."""
import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import build_tiny, text_conditioning
from test_memory_plan import sample_patched
from test_video import (a_reference_runs_on_every_step, assert_within, every_token_active,
                        exact_on_a_third_of_the_tokens, model_patch_nodes_under_ksampler, sampler_node_end_to_end)

if not hasattr(comfy.supported_models, "MageFlow"):
    pytest.skip("this ComfyUI has no Mage-Flow", allow_module_level=True)

TOL = 1e-5
HEIGHT, WIDTH = 4, 6                             # a non-square latent (Flux 2's 128 channels): 24 tokens
TOKENS = HEIGHT * WIDTH
# ComfyUI's Mage-Flow config, made tiny: 2 blocks of 4 heads of 16, RoPE axes 4 / 6 / 6, a 32-wide text encoder
TINY_MAGE_FLOW = dict(image_model="mage_flow", in_channels=128, out_channels=128, num_layers=2, attention_head_dim=16,
                      num_attention_heads=4, joint_attention_dim=32, axes_dims_rope=(4, 6, 6))


def tiny_mage_flow(seed):
    return build_tiny(comfy.supported_models.MageFlow, TINY_MAGE_FLOW, seed)


def latent(batch=1):
    return torch.zeros(batch, 128, HEIGHT, WIDTH)


def prompts(**extra):
    """Text tokens; prompts of different lengths run as two streams at cfg > 1."""
    return dict(positive=text_conditioning(1, 7, 32, **extra), negative=text_conditioning(2, 5, 32, **extra))


def with_reference():
    """A reference latent (ReferenceLatent's conditioning) of another size: its 2 x 4 tokens follow the image's."""
    return prompts(reference_latents=[torch.randn(1, 128, 2, 4, generator=torch.Generator().manual_seed(5))])


def test_mage_flow_is_its_own_adapter():
    assert adapter_for(tiny_mage_flow(seed=0), "test").names == ("Mage-Flow",)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(batch, cfg):
    run = every_token_active(tiny_mage_flow(seed=3), latent(batch), cfg, prompts(), TOKENS, assert_within(TOL))
    assert run.grid == (HEIGHT, WIDTH)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(batch, cfg):
    """A third of the tokens, in random order and different per image."""
    exact_on_a_third_of_the_tokens(tiny_mage_flow(seed=4), latent(batch), cfg, prompts(), TOKENS)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_a_reference_runs_on_every_step(batch, cfg):
    a_reference_runs_on_every_step(tiny_mage_flow(seed=6), latent(batch), cfg, prompts(), with_reference(), TOKENS,
                                   8, assert_within(TOL))


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Joint attention over [text | image | reference] in every block."""
    run = sample_patched(tiny_mage_flow(seed=0), latent(2), cfg, with_reference())
    width, layers = 4 * 16, 2
    per_row = {7: 2, 5: 2 if cfg > 1 else 0}                    # text tokens -> rows of that prompt (batch 2)
    expected = sum(layers * rows * (TOKENS + 8 + text) * width * 2 * 4 for text, rows in per_row.items())
    assert run.kv_planned_bytes == run.kv_peak_bytes == expected


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_mage_flow(seed=7), {"samples": latent(2)}, with_reference(), method,
                                             TOKENS)
    assert trace.grid == (HEIGHT, WIDTH)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_mage_flow(seed=8), {"samples": latent(2)}, prompts(), assert_within(TOL))
