"""PixArt-α and PixArt-Σ (`comfy.ldm.pixart.pixartms.PixArtMS`) on tiny random-weight instances of their real ComfyUI
class (CPU, fp32): self-attention over the image's tokens (whose attention calls ComfyUI's without
`transformer_options`, restated by the adapter on the module's own layers), cross-attention to the prompt, an eps
model; the exactness set of the image families (a non-square latent, prompts of different lengths), α's size and
aspect conditioning, the memory plan, both sampler nodes and both Model Patch nodes."""
import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import build_tiny, text_conditioning
from test_memory_plan import sample_patched
from test_video import (assert_within, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end)

TOL = 1e-5
# a non-square latent at patch size 8 (2 for the real models; the model's position embedding needs a latent of at least
# 32 on average): 4 x 6 = 24 tokens
HEIGHT, WIDTH, PATCH = 32, 48, 8
TOKENS = (HEIGHT // PATCH) * (WIDTH // PATCH)
# ComfyUI's PixArt config (model_detection's), made tiny: 2 blocks of 4 heads of 24, a 32-wide T5
TINY_PIXART = dict(patch_size=PATCH, in_channels=4, hidden_size=96, depth=2, num_heads=4, caption_channels=32,
                   model_max_length=16, input_size=16, pe_interpolation=0.25)
VARIANTS = {"PixArt-α": (comfy.supported_models.PixArtAlpha, dict(image_model="pixart_alpha", micro_condition=True)),
            "PixArt-Σ": (comfy.supported_models.PixArtSigma, dict(image_model="pixart_sigma", micro_condition=False))}


def tiny_pixart(variant, seed):
    config_class, extra = VARIANTS[variant]
    return build_tiny(config_class, dict(TINY_PIXART, **extra), seed)


def latent(batch=1):
    return torch.zeros(batch, 4, HEIGHT, WIDTH)


def prompts(variant="PixArt-Σ"):
    """T5 tokens; prompts of different lengths run as two streams at cfg > 1; α's size conditioning (as ComfyUI's
    CLIPTextEncodePixArtAlpha gives it)."""
    size = dict(width=WIDTH * 8, height=HEIGHT * 8) if variant == "PixArt-α" else {}
    return dict(positive=text_conditioning(1, 7, 32, **size), negative=text_conditioning(2, 5, 32, **size))


@pytest.mark.parametrize("variant", VARIANTS)
def test_pixart_is_its_own_adapter(variant):
    assert adapter_for(tiny_pixart(variant, seed=0), "test").names == ("PixArt-α", "PixArt-Σ")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(variant, batch, cfg):
    run = every_token_active(tiny_pixart(variant, seed=3), latent(batch), cfg, prompts(variant), TOKENS,
                             assert_within(TOL))
    assert run.grid == (HEIGHT // PATCH, WIDTH // PATCH)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(variant, batch, cfg):
    """A third of the tokens, in random order and different per image."""
    exact_on_a_third_of_the_tokens(tiny_pixart(variant, seed=4), latent(batch), cfg, prompts(variant), TOKENS)


def test_attention_that_computes_something_else_stops_clearly(monkeypatch):
    """The adapter restates the model's self-attention; where a ComfyUI's computes otherwise the first dense forward
    stops with the error, before any image is sampled wrong."""
    from comfy.ldm.pixart import blocks
    original = blocks.AttentionKVCompress.forward

    def changed(self, x, mask=None, HW=None, block_id=None):
        return original(self, x.flip(1), mask, HW, block_id).flip(1) * 0.5
    monkeypatch.setattr(blocks.AttentionKVCompress, "forward", changed)
    with pytest.raises(NotImplementedError, match="AttentionKVCompress.forward computes something other"):
        every_token_active(tiny_pixart("PixArt-Σ", seed=6), latent(1), 1.0, prompts(), TOKENS, assert_within(TOL))


def test_key_value_compression_is_not_supported():
    model = tiny_pixart("PixArt-Σ", seed=0)
    model.model.diffusion_model.blocks[1].attn.sr_ratio = 2
    with pytest.raises(ValueError, match="PixArt with key/value compression"):
        adapter_for(model, "test")


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Self-attention over the image's tokens alone in every block (the prompt enters by cross-attention)."""
    run = sample_patched(tiny_pixart("PixArt-Σ", seed=0), latent(2), cfg, prompts())
    width, layers = 96, 2
    rows = 2 + (2 if cfg > 1 else 0)                            # the positive's and the negative's, batch 2
    assert run.kv_planned_bytes == run.kv_peak_bytes == rows * layers * TOKENS * width * 2 * 4


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_pixart("PixArt-α", seed=7), {"samples": latent(2)},
                                             prompts("PixArt-α"), method, TOKENS)
    assert trace.grid == (HEIGHT // PATCH, WIDTH // PATCH)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_pixart("PixArt-Σ", seed=8), {"samples": latent(2)}, prompts(),
                                     assert_within(TOL))
