"""Qwen-Image 2.1 (`comfy.ldm.qwen_image21.model.QwenImage21Transformer2DModel`, ComfyUI 0.37 and newer) on tiny
random-weight instances of its real ComfyUI class (CPU, fp32): single-stream blocks over [prompt with references
spliced in | target image] with block-causal attention, the prefix modulated at timestep 0 and kept in the model's
own prefix cache between steps (and without it: every block over the whole sequence); the exactness set of the image
families (a non-square latent, prompts of different lengths), a reference latent spliced into the prompt, the memory
plan, both sampler nodes and both Model Patch nodes. Skipped where the running ComfyUI has no Qwen-Image 2.1."""
import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import build_tiny, text_conditioning
from test_memory_plan import sample_patched
from test_video import (a_reference_runs_on_every_step, assert_within, every_token_active,
                        exact_on_a_third_of_the_tokens, model_patch_nodes_under_ksampler, sampler_node_end_to_end)

if not hasattr(comfy.supported_models, "QwenImage21"):
    pytest.skip("this ComfyUI has no Qwen-Image 2.1", allow_module_level=True)

TOL = 1e-5
HEIGHT, WIDTH = 4, 6                             # a non-square latent, one token per latent pixel: 24 tokens
TOKENS = HEIGHT * WIDTH
# ComfyUI's Qwen-Image 2.1 config, made tiny: 2 blocks of 4 heads of 16, RoPE axes 4 / 6 / 6, a 32-wide text encoder
TINY_QWEN_IMAGE21 = dict(image_model="qwen_image21", in_channels=64, out_channels=64, num_layers=2,
                         attention_head_dim=16, num_attention_heads=4, context_in_dim=32, mlp_ratio=2,
                         axes_dims_rope=(4, 6, 6))
PREFIX_CACHE = {"on": {}, "off": {"device": "off"}}     # the model's own prefix cache (transformer_options)


def tiny_qwen_image21(seed, prefix_cache="on", **config):
    model = build_tiny(comfy.supported_models.QwenImage21, dict(TINY_QWEN_IMAGE21, **config), seed)
    model.model_options.setdefault("transformer_options", {})["qwen_image21_cache"] = PREFIX_CACHE[prefix_cache]
    return model


def latent(batch=1):
    return torch.zeros(batch, 64, HEIGHT, WIDTH)


def prompts():
    """Text tokens; prompts of different lengths run as two streams at cfg > 1."""
    return dict(positive=text_conditioning(1, 7, 32), negative=text_conditioning(2, 5, 32))


def with_reference():
    """A reference latent of another size spliced into the positive prompt after its third token."""
    reference = torch.randn(1, 64, 2, 4, generator=torch.Generator().manual_seed(5))
    return dict(positive=text_conditioning(1, 7, 32, reference_latents=[reference], image_slots=[3]),
                negative=text_conditioning(2, 5, 32))


def test_qwen_image21_is_its_own_adapter():
    assert adapter_for(tiny_qwen_image21(seed=0), "test").names == ("Qwen-Image 2.1",)


@pytest.mark.parametrize("prefix_cache", PREFIX_CACHE)
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(prefix_cache, batch, cfg):
    run = every_token_active(tiny_qwen_image21(3, prefix_cache), latent(batch), cfg, prompts(), TOKENS,
                             assert_within(TOL))
    assert run.grid == (HEIGHT, WIDTH)


@pytest.mark.parametrize("prefix_cache", PREFIX_CACHE)
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(prefix_cache, batch, cfg):
    """A third of the tokens, in random order and different per image."""
    exact_on_a_third_of_the_tokens(tiny_qwen_image21(4, prefix_cache), latent(batch), cfg, prompts(), TOKENS)


@pytest.mark.parametrize("prefix_cache", PREFIX_CACHE)
def test_a_reference_spliced_into_the_prompt(prefix_cache):
    a_reference_runs_on_every_step(tiny_qwen_image21(6, prefix_cache), latent(2), 3.0, prompts(), with_reference(),
                                   TOKENS, 0, assert_within(TOL))


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """The target's keys and values in every block (the prefix's are complete on every step)."""
    run = sample_patched(tiny_qwen_image21(seed=0), latent(2), cfg, prompts())
    width, layers = 4 * 16, 2
    rows = 2 + (2 if cfg > 1 else 0)                            # the positive's and the negative's, batch 2
    assert run.kv_planned_bytes == run.kv_peak_bytes == rows * layers * TOKENS * width * 2 * 4


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_qwen_image21(seed=7), {"samples": latent(2)}, with_reference(),
                                             method, TOKENS)
    assert trace.grid == (HEIGHT, WIDTH)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_qwen_image21(seed=8), {"samples": latent(2)}, prompts(), assert_within(TOL))
