"""ERNIE-Image (`comfy.ldm.ernie.model.ErnieImageModel`, newer ComfyUI) on tiny random-weight instances of its real
ComfyUI class (CPU, fp32): one token per latent pixel, single-stream blocks over [image | text] whose attention calls
ComfyUI's without `transformer_options` (restated by the adapter on the module's own layers); the exactness set of
the image families (a non-square latent, prompts of different lengths), the check of the restated
attention against the model's own, the memory plan, both sampler nodes and both Model Patch nodes."""
import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import build_tiny, text_conditioning
from test_memory_plan import sample_patched
from test_video import (assert_within, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end)

if not hasattr(comfy.supported_models, "ErnieImage"):
    pytest.skip("this ComfyUI has no ERNIE-Image", allow_module_level=True)

TOL = 1e-5
HEIGHT, WIDTH = 4, 6                             # a non-square latent (Flux 2's 128 channels): 24 tokens
TOKENS = HEIGHT * WIDTH
# ComfyUI's ERNIE-Image config, made tiny: 2 blocks of 4 heads of 16, RoPE axes 4 / 6 / 6, a 32-wide text encoder
TINY_ERNIE = dict(image_model="ernie", hidden_size=64, num_attention_heads=4, num_layers=2, ffn_hidden_size=128,
                  in_channels=128, out_channels=128, patch_size=1, text_in_dim=32, rope_axes_dim=(4, 6, 6))


def tiny_ernie(seed):
    return build_tiny(comfy.supported_models.ErnieImage, TINY_ERNIE, seed)


def latent(batch=1):
    return torch.zeros(batch, 128, HEIGHT, WIDTH)


def prompts():
    """Text tokens; prompts of different lengths run as two streams at cfg > 1."""
    return dict(positive=text_conditioning(1, 7, 32), negative=text_conditioning(2, 5, 32))


def test_ernie_image_is_its_own_adapter():
    assert adapter_for(tiny_ernie(seed=0), "test").names == ("ERNIE-Image",)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(batch, cfg):
    run = every_token_active(tiny_ernie(seed=3), latent(batch), cfg, prompts(), TOKENS, assert_within(TOL))
    assert run.grid == (HEIGHT, WIDTH)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(batch, cfg):
    """A third of the tokens, in random order and different per image."""
    exact_on_a_third_of_the_tokens(tiny_ernie(seed=4), latent(batch), cfg, prompts(), TOKENS)


def test_attention_that_computes_something_else_stops_clearly(monkeypatch):
    """The adapter restates the model's attention; where a ComfyUI's computes otherwise (here: its keys' norm
    changed under it) the first dense forward stops with the error, before any image is sampled wrong."""
    from comfy.ldm.ernie import model as ernie
    original = ernie.ErnieImageAttention.forward

    def changed(self, x, attention_mask=None, image_rotary_emb=None):
        return 2.0 * original(self, x, attention_mask, image_rotary_emb)
    monkeypatch.setattr(ernie.ErnieImageAttention, "forward", changed)
    with pytest.raises(NotImplementedError, match="ErnieImageAttention.forward computes something other"):
        every_token_active(tiny_ernie(seed=6), latent(1), 1.0, prompts(), TOKENS, assert_within(TOL))


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Joint attention over [image | text] in every block."""
    run = sample_patched(tiny_ernie(seed=0), latent(2), cfg, prompts())
    width, layers = 64, 2
    per_row = {7: 2, 5: 2 if cfg > 1 else 0}                    # text tokens -> rows of that prompt (batch 2)
    expected = sum(layers * rows * (TOKENS + text) * width * 2 * 4 for text, rows in per_row.items())
    assert run.kv_planned_bytes == run.kv_peak_bytes == expected


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_ernie(seed=7), {"samples": latent(2)}, prompts(), method, TOKENS)
    assert trace.grid == (HEIGHT, WIDTH)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_ernie(seed=8), {"samples": latent(2)}, prompts(), assert_within(TOL))
