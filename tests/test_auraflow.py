"""AuraFlow (`comfy.ldm.aura.mmdit.MMDiT`, the network of Pony Diffusion V7) on tiny random-weight instances of its real
ComfyUI class (CPU, fp32): register tokens before the text, double blocks with joint attention over [registers + text
| image], single blocks over their concatenation, a learned position embedding per token; the exactness set of the
image families (a non-square latent), the memory plan, both sampler nodes and both Model Patch nodes, Skip Layer
Guidance skipping the first double block, and a model whose double blocks are all replaced (the first single block
gathers)."""

import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import build_tiny, text_conditioning
from test_memory_plan import sample_patched
from test_video import (assert_within, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end,
                        skip_layer_guidance_skipping_block_0)

TOL = 1e-5
HEIGHT, WIDTH = 8, 12                            # a non-square latent (SDXL's VAE: 4 channels)
TOKENS = (HEIGHT // 2) * (WIDTH // 2)
REGISTERS = 8
# ComfyUI's detected AuraFlow config (model_detection.py), made tiny: 2 double and 2 single blocks, a 16 x 16 grid of
# learned positions
TINY_AURAFLOW = dict(in_channels=4, out_channels=4, patch_size=2, dim=64, n_layers=4, n_double_layers=2, n_heads=4,
                     global_conddim=64, cond_seq_dim=32, max_seq=16 * 16)


def tiny_auraflow(seed):
    return build_tiny(comfy.supported_models.AuraFlow, TINY_AURAFLOW, seed)


def latent(batch=1):
    return torch.zeros(batch, 4, HEIGHT, WIDTH)


def prompts():
    """T5 tokens; prompts of different lengths run as two streams at cfg > 1."""
    return dict(positive=text_conditioning(1, 7, 32), negative=text_conditioning(2, 5, 32))


def test_auraflow_is_its_own_adapter():
    assert adapter_for(tiny_auraflow(seed=0), "test").names == ("AuraFlow",)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(batch, cfg):
    run = every_token_active(tiny_auraflow(seed=3), latent(batch), cfg, prompts(), TOKENS, assert_within(TOL))
    assert run.grid == (HEIGHT // 2, WIDTH // 2)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(batch, cfg):
    """A third of the tokens, in random order and different per image."""
    exact_on_a_third_of_the_tokens(tiny_auraflow(seed=4), latent(batch), cfg, prompts(), TOKENS)


def skipping_every_double_block(model):
    """Another node replacing every double block by the identity: the first single block gathers the tokens."""
    m = model.clone()
    for i in range(TINY_AURAFLOW["n_double_layers"]):
        m.set_model_patch_replace(lambda args, extra: {"img": args["img"], "txt": args["txt"]}, "dit", "double_block",
                                  i)
    return m


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_the_first_single_block_gathers_where_every_double_block_is_replaced(cfg):
    model = skipping_every_double_block(tiny_auraflow(seed=5))
    every_token_active(model, latent(), cfg, prompts(), TOKENS, assert_within(TOL))
    exact_on_a_third_of_the_tokens(model, latent(), cfg, prompts(), TOKENS)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Joint attention over [registers + text | image] in every block."""
    run = sample_patched(tiny_auraflow(seed=0), latent(2), cfg, prompts())
    dim, layers = TINY_AURAFLOW["dim"], TINY_AURAFLOW["n_layers"]
    per_row = {7: 2, 5: 2 if cfg > 1 else 0}                    # text tokens -> rows of that prompt (batch 2)
    expected = sum(layers * rows * (TOKENS + REGISTERS + text) * dim * 2 * 4 for text, rows in per_row.items())
    assert run.kv_planned_bytes == run.kv_peak_bytes == expected


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_auraflow(seed=7), {"samples": latent(2)}, prompts(), method, TOKENS)
    assert trace.grid == (HEIGHT // 2, WIDTH // 2)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_auraflow(seed=8), {"samples": latent(2)}, prompts(), assert_within(TOL))


def test_skip_layer_guidance_skipping_block_0():
    skip_layer_guidance_skipping_block_0(tiny_auraflow(seed=9), latent(), prompts(), TOKENS, assert_within(TOL))
