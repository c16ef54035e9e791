"""JoyImage (`comfy.ldm.joyimage.model.JoyImageTransformer3DModel`, newer ComfyUI) on tiny random-weight instances of
its real ComfyUI class (CPU, fp32): a 3-D patch embedding of one frame of Wan 2.1's latent, double-stream blocks with
joint attention over [image | text]; the exactness set of the image families (a non-square latent), a reference
latent for editing (its tokens always run), the memory plan, both sampler nodes and both Model Patch nodes, Skip Layer
Guidance skipping the first block (samples) and the last (refused clearly)."""
import importlib

import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import build_tiny, ksample, ras_model_patch, text_conditioning
from test_memory_plan import sample_patched
from test_video import (a_reference_runs_on_every_step, assert_within, every_token_active,
                        exact_on_a_third_of_the_tokens, model_patch_nodes_under_ksampler, sampler_node_end_to_end,
                        skip_layer_guidance_skipping_block_0)

if not hasattr(comfy.supported_models, "JoyImage"):
    pytest.skip("this ComfyUI has no JoyImage", allow_module_level=True)

TOL = 1e-5
HEIGHT, WIDTH = 8, 12                            # a non-square latent (one frame of Wan 2.1's 16 channels)
TOKENS = (HEIGHT // 2) * (WIDTH // 2)
# ComfyUI's JoyImage config, made tiny: 2 blocks of 2 heads of 128 (its model type sets RoPE over 16 / 56 / 56)
TINY_JOYIMAGE = dict(image_model="joyimage", patch_size=[1, 2, 2], in_channels=16, hidden_size=256,
                     num_attention_heads=2, text_dim=32, mlp_width_ratio=2.0, num_layers=2)


def tiny_joyimage(seed):
    return build_tiny(comfy.supported_models.JoyImage, TINY_JOYIMAGE, seed)


def latent(batch=1):
    return torch.zeros(batch, 16, 1, HEIGHT, WIDTH)


def prompts(**extra):
    """Text tokens; prompts of different lengths run as two streams at cfg > 1."""
    return dict(positive=text_conditioning(1, 7, 32, **extra), negative=text_conditioning(2, 5, 32, **extra))


def with_reference():
    """An image to edit (ReferenceLatent's conditioning) of another size: its 2 x 4 tokens follow the image's."""
    return prompts(reference_latents=[torch.randn(1, 16, 1, 4, 8, generator=torch.Generator().manual_seed(5))])


def test_joyimage_is_its_own_adapter():
    assert adapter_for(tiny_joyimage(seed=0), "test").names == ("JoyImage",)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(batch, cfg):
    run = every_token_active(tiny_joyimage(seed=3), latent(batch), cfg, prompts(), TOKENS, assert_within(TOL))
    assert run.grid == (HEIGHT // 2, WIDTH // 2)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(batch, cfg):
    """A third of the tokens, in random order and different per image."""
    exact_on_a_third_of_the_tokens(tiny_joyimage(seed=4), latent(batch), cfg, prompts(), TOKENS)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_a_reference_runs_on_every_step(batch, cfg):
    # the model keeps the image's rows before its output layer: the references' tokens never reach the output
    a_reference_runs_on_every_step(tiny_joyimage(seed=6), latent(batch), cfg, prompts(), with_reference(), TOKENS, 0,
                                   assert_within(TOL))


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Joint attention over [image | reference | text] in every block."""
    run = sample_patched(tiny_joyimage(seed=0), latent(2), cfg, with_reference())
    width, layers = TINY_JOYIMAGE["hidden_size"], TINY_JOYIMAGE["num_layers"]
    per_row = {7: 2, 5: 2 if cfg > 1 else 0}                    # text tokens -> rows of that prompt (batch 2)
    expected = sum(layers * rows * (TOKENS + 8 + text) * width * 2 * 4 for text, rows in per_row.items())
    assert run.kv_planned_bytes == run.kv_peak_bytes == expected


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_joyimage(seed=7), {"samples": latent(2)}, with_reference(), method,
                                             TOKENS)
    assert trace.grid == (HEIGHT // 2, WIDTH // 2)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_joyimage(seed=8), {"samples": latent(2)}, prompts(), assert_within(TOL))


def test_skip_layer_guidance_on_the_first_block_samples_and_on_the_last_is_refused_clearly():
    model = tiny_joyimage(seed=9)
    skip_layer_guidance_skipping_block_0(model, latent(), prompts(), TOKENS, assert_within(TOL))
    slg = importlib.import_module("comfy_extras.nodes_slg")
    skipping_last = slg.SkipLayerGuidanceDiT.execute(model, 3.0, 0.0, 1.0, "1", "", 0.0)[0]
    patched = ras_model_patch(skipping_last, 0.3, 1, "", 0.1, "std", False)[0]
    with pytest.raises(NotImplementedError, match="last block"):
        ksample(patched, latent(), seed=5, steps=4, cfg=3.0, **prompts())
