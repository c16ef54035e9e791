"""Ideogram 4 (`comfy.ldm.ideogram4.model.Ideogram4Transformer2DModel`, newer ComfyUI) on tiny random-weight instances
of its real ComfyUI class (CPU, fp32): one token per latent pixel, single-stream blocks over [text | image] with
Qwen3-VL's interleaved 3-axis RoPE and a block-diagonal mask that keeps the prompt's padding apart; the exactness set
of the image families (a non-square latent, a padded negative prompt), the memory plan, both sampler nodes and both
Model Patch nodes."""

import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import build_tiny, text_conditioning
from test_memory_plan import sample_patched
from test_video import (assert_within, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, padding_is_masked, sampler_node_end_to_end)

if not hasattr(comfy.supported_models, "Ideogram4"):
    pytest.skip("this ComfyUI has no Ideogram 4", allow_module_level=True)

TOL = 1e-5
HEIGHT, WIDTH = 4, 6                             # a non-square latent (Flux 2's packed 128 channels): 24 tokens
TOKENS = HEIGHT * WIDTH
LLM = 48                                         # the text features' width (53,248 for the real model)
# The real model's config comes from its model type (unet_extra_config); made tiny here: 2 blocks of 4 heads of 16
TINY_IDEOGRAM4 = dict(image_model="ideogram4", in_channels=128, num_layers=2, num_attention_heads=4,
                      attention_head_dim=16, intermediate_size=128, adaln_dim=32, llm_features_dim=LLM,
                      rope_theta=10000, mrope_section=[4, 2, 2], norm_eps=1e-5)


class TinyIdeogram4(comfy.supported_models.Ideogram4):
    unet_extra_config = {}          # ComfyUI's would set the real sizes over the tiny ones


def tiny_ideogram4(seed):
    return build_tiny(TinyIdeogram4, TINY_IDEOGRAM4, seed)


def latent(batch=1):
    return torch.zeros(batch, 128, HEIGHT, WIDTH)


def prompts():
    """Qwen3-VL features with their mask: the negative's last two tokens are padding (the model keeps them in the
    sequence, masked apart), so the positive runs without a mask and the negative with one; prompts of different
    lengths run as two streams at cfg > 1."""
    padded = torch.ones(1, 5, dtype=torch.long)
    padded[:, -2:] = 0
    return dict(positive=text_conditioning(1, 7, LLM, attention_mask=torch.ones(1, 7, dtype=torch.long)),
                negative=text_conditioning(2, 5, LLM, attention_mask=padded))


def test_ideogram4_is_its_own_adapter():
    assert adapter_for(tiny_ideogram4(seed=0), "test").names == ("Ideogram 4",)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(batch, cfg):
    run = every_token_active(tiny_ideogram4(seed=3), latent(batch), cfg, prompts(), TOKENS, assert_within(TOL))
    assert run.grid == (HEIGHT, WIDTH)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(batch, cfg):
    """A third of the tokens, in random order and different per image; the negative prompt's mask fitted to them."""
    exact_on_a_third_of_the_tokens(tiny_ideogram4(seed=4), latent(batch), cfg, prompts(), TOKENS)


def test_the_padded_prompt_runs_with_its_mask():
    """The precondition of the cfg 3 exactness tests: the negative prompt's padding is masked apart (the model builds
    a mask over the whole sequence, which the engine fits to the running queries)."""
    padding_is_masked(tiny_ideogram4(seed=5), latent(), prompts())


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Joint attention over [text | image] in every block."""
    run = sample_patched(tiny_ideogram4(seed=0), latent(2), cfg, prompts())
    width, layers = TINY_IDEOGRAM4["num_attention_heads"] * TINY_IDEOGRAM4["attention_head_dim"], 2
    per_row = {7: 2, 5: 2 if cfg > 1 else 0}                    # text tokens -> rows of that prompt (batch 2)
    expected = sum(layers * rows * (TOKENS + text) * width * 2 * 4 for text, rows in per_row.items())
    assert run.kv_planned_bytes == run.kv_peak_bytes == expected


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_ideogram4(seed=7), {"samples": latent(2)}, prompts(), method, TOKENS)
    assert trace.grid == (HEIGHT, WIDTH)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_ideogram4(seed=8), {"samples": latent(2)}, prompts(), assert_within(TOL))
