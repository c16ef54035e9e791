"""OmniGen2 (`comfy.ldm.omnigen.omnigen2.OmniGen2Transformer2DModel`) and Boogu-Image (`comfy.ldm.boogu.model.
BooguTransformer2DModel`, newer ComfyUI: OmniGen2's network with a dual-stream stage, each block attending over
[instruction | references | image] and then over [references | image]) on tiny random-weight instances of their real
ComfyUI classes (CPU, fp32): Lumina-like refiners (caption alone, image alone, each reference alone) and joint layers
over [caption | references | image] with grouped-query attention (fewer K/V heads than query heads); the exactness set
of the image families (a non-square latent), reference images (their tokens always run, before the image's), the
memory plan, both sampler nodes and both Model Patch nodes. Boogu-Image's cases skip where the running ComfyUI has no
Boogu-Image (0.3.75)."""
import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.comfy_compat import attention_takes_grouped_kv
from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import build_tiny, ksample, text_conditioning
from test_memory_plan import sample_patched
from test_video import (a_reference_runs_on_every_step, assert_within, every_token_active,
                        exact_on_a_third_of_the_tokens, model_patch_nodes_under_ksampler, sampler_node_end_to_end)

TOL = 1e-5
HEIGHT, WIDTH = 8, 12                            # a non-square latent: 4 x 6 tokens
TOKENS = (HEIGHT // 2) * (WIDTH // 2)
# ComfyUI's configs, made tiny: one of each refiner, 2 joint layers (and Boogu-Image's 2 dual-stream blocks), 4 query
# heads of 16 and 2 K/V heads, RoPE axes 4 / 6 / 6, a 32-wide text encoder
TINY = dict(patch_size=2, in_channels=16, hidden_size=64, num_layers=2, num_refiner_layers=1, num_attention_heads=4,
            num_kv_heads=2, multiple_of=16, axes_dim_rope=(4, 6, 6))
MODELS = {"OmniGen2": ("Omnigen2", dict(TINY, image_model="omnigen2", text_feat_dim=32)),
          "Boogu-Image": ("Boogu", dict(TINY, image_model="boogu", num_double_stream_layers=2,
                                        axes_lens=(300, 512, 512), instruction_feat_dim=32))}


def tiny(name, seed):
    config_class, config = MODELS[name]
    if not hasattr(comfy.supported_models, config_class):
        pytest.skip(f"this ComfyUI has no {name}")
    return build_tiny(getattr(comfy.supported_models, config_class), config, seed)


def latent(batch=1):
    return torch.zeros(batch, 16, HEIGHT, WIDTH)


def prompts(**extra):
    """Qwen-VL tokens and their attention mask, which gives the model their count (ComfyUI's OmniGen2 takes unpadded
    prompts: its RoPE covers the counted tokens); prompts of different lengths run as two streams."""
    return dict(positive=text_conditioning(1, 7, attention_mask=torch.ones(1, 7, dtype=torch.long), **extra),
                negative=text_conditioning(2, 5, attention_mask=torch.ones(1, 5, dtype=torch.long), **extra))


def with_references():
    """Two reference latents (ReferenceLatent's conditioning), one of another size: 2 x 4 and 4 x 6 tokens."""
    g = torch.Generator().manual_seed(5)
    return prompts(reference_latents=[torch.randn(1, 16, 4, 8, generator=g), torch.randn(1, 16, HEIGHT, WIDTH,
                                                                                          generator=g)])


REFERENCE_TOKENS = 2 * 4 + TOKENS
each_model = pytest.mark.parametrize("name", sorted(MODELS))


@each_model
def test_each_is_its_own_adapter(name):
    assert adapter_for(tiny(name, seed=0), "test").names == (name,)


@each_model
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(name, batch, cfg):
    run = every_token_active(tiny(name, seed=3), latent(batch), cfg, prompts(), TOKENS, assert_within(TOL))
    assert run.grid == (HEIGHT // 2, WIDTH // 2)


@each_model
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(name, batch, cfg):
    """A third of the tokens, in random order and different per image."""
    exact_on_a_third_of_the_tokens(tiny(name, seed=4), latent(batch), cfg, prompts(), TOKENS)


@each_model
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_reference_images_run_on_every_step(name, batch, cfg):
    """The references' tokens are before the image's and the model cuts them off before the output: the output the
    policies read has the image's tokens alone."""
    a_reference_runs_on_every_step(tiny(name, seed=6), latent(batch), cfg, prompts(), with_references(), TOKENS, 0,
                                   assert_within(TOL))


@each_model
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(name, cfg):
    """The noise refiner's image-only attention, the joint layers' over [caption | references | image] (and each of
    Boogu-Image's dual-stream blocks' two: over [instruction | references | image] and [references | image]), their
    K/V with as many heads as this ComfyUI hands attention (2 grouped, or 4 repeated)."""
    run = sample_patched(tiny(name, seed=0), latent(2), cfg, with_references())
    width = (2 if attention_takes_grouped_kv(comfy.ldm.omnigen.omnigen2.Attention.forward) else 4) * 16
    images = REFERENCE_TOKENS + TOKENS
    dual = 2 if name == "Boogu-Image" else 0
    per_row = {7: 2, 5: 2 if cfg > 1 else 0}                    # text tokens -> rows of that prompt (batch 2)
    expected = sum(rows * (TOKENS + (2 + dual) * (images + text) + dual * images) * width * 2 * 4
                   for text, rows in per_row.items())
    assert run.kv_planned_bytes == run.kv_peak_bytes == expected


@each_model
@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(name, method):
    _, _, trace, _ = sampler_node_end_to_end(tiny(name, seed=7), {"samples": latent(2)}, with_references(), method,
                                             TOKENS)
    assert trace.grid == (HEIGHT // 2, WIDTH // 2)


@each_model
def test_model_patch_nodes_under_ksampler(name):
    model_patch_nodes_under_ksampler(tiny(name, seed=8), {"samples": latent(2)}, with_references(), assert_within(TOL))


def test_the_grouped_kv_probe_reads_this_comfyui():
    """The probe says what the model does: a model whose attention gets fewer K/V heads than query heads."""
    seen = []

    def attention(func, q, k, v, heads, *args, **kwargs):      # (batch, heads, tokens, 16): skip_reshape
        seen.append(k.shape[1])
        return func(q, k, v, heads, *args, **kwargs)
    model = tiny("OmniGen2", seed=10).clone()
    model.model_options["transformer_options"]["optimized_attention_override"] = attention
    ksample(model, latent(), seed=5, steps=1, **prompts())
    assert seen and set(seen) == {2 if attention_takes_grouped_kv(comfy.ldm.omnigen.omnigen2.Attention.forward) else 4}
