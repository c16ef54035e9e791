"""Lens (`comfy.ldm.lens.model.LensTransformer2DModel`, newer ComfyUI) on tiny random-weight instances of its real
ComfyUI class (CPU, fp32): one token per latent pixel, dual-stream blocks with joint attention over [image | text] and
a mask over the prompt's padding, multi-layer text features; the exactness set of the image families (a non-square
latent, a padded negative prompt), the memory plan, both sampler nodes and both Model Patch nodes."""
import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import build_tiny, text_conditioning
from test_memory_plan import sample_patched
from test_video import (assert_within, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, padding_is_masked, sampler_node_end_to_end)

if not hasattr(comfy.supported_models, "Lens"):
    pytest.skip("this ComfyUI has no Lens", allow_module_level=True)

TOL = 1e-5
HEIGHT, WIDTH = 4, 6                             # a non-square latent (Flux 2's 128 channels): 24 tokens
TOKENS = HEIGHT * WIDTH
LAYERS, ENC = 2, 16                              # the text encoder's selected layers and their width
# ComfyUI's Lens config, made tiny: 2 blocks of 4 heads of 16, RoPE axes 4 / 6 / 6
TINY_LENS = dict(image_model="lens", patch_size=2, in_channels=128, out_channels=32, num_layers=2,
                 attention_head_dim=16, num_attention_heads=4, enc_hidden_dim=ENC, axes_dims_rope=(4, 6, 6),
                 selected_layer_index=(1, 3))


def tiny_lens(seed):
    return build_tiny(comfy.supported_models.Lens, TINY_LENS, seed)


def latent(batch=1):
    return torch.zeros(batch, 128, HEIGHT, WIDTH)


def prompts():
    """Two text layers per token and their mask: the negative's last two tokens are padding; prompts of different
    lengths run as two streams at cfg > 1."""
    padded = torch.ones(1, 5, dtype=torch.long)
    padded[:, -2:] = 0
    return dict(positive=text_conditioning(1, 7, LAYERS * ENC, attention_mask=torch.ones(1, 7, dtype=torch.long)),
                negative=text_conditioning(2, 5, LAYERS * ENC, attention_mask=padded))


def test_lens_is_its_own_adapter():
    assert adapter_for(tiny_lens(seed=0), "test").names == ("Lens",)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(batch, cfg):
    run = every_token_active(tiny_lens(seed=3), latent(batch), cfg, prompts(), TOKENS, assert_within(TOL))
    assert run.grid == (HEIGHT, WIDTH)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(batch, cfg):
    """A third of the tokens, in random order and different per image; the negative prompt's mask fitted to them."""
    exact_on_a_third_of_the_tokens(tiny_lens(seed=4), latent(batch), cfg, prompts(), TOKENS)


def test_the_padded_prompt_runs_with_its_mask():
    """The precondition of the cfg 3 exactness tests: the negative prompt's padding is masked out."""
    padding_is_masked(tiny_lens(seed=5), latent(), prompts())


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Joint attention over [image | text] in every block."""
    run = sample_patched(tiny_lens(seed=0), latent(2), cfg, prompts())
    width, layers = 4 * 16, 2
    per_row = {7: 2, 5: 2 if cfg > 1 else 0}                    # text tokens -> rows of that prompt (batch 2)
    expected = sum(layers * rows * (TOKENS + text) * width * 2 * 4 for text, rows in per_row.items())
    assert run.kv_planned_bytes == run.kv_peak_bytes == expected


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_lens(seed=7), {"samples": latent(2)}, prompts(), method, TOKENS)
    assert trace.grid == (HEIGHT, WIDTH)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_lens(seed=8), {"samples": latent(2)}, prompts(), assert_within(TOL))
