"""Krea 2 (`comfy.ldm.krea2.model.SingleStreamDiT`, newer ComfyUI) on tiny random-weight instances of its real ComfyUI
class (CPU, fp32): a text-fusion transformer over the prompt alone, then single-stream blocks over [text | image |
references] with 3-axis RoPE; the exactness set of the image families (a non-square latent), a reference latent that
takes timestep 0 (`index_timestep_zero`: its tokens always run, modulated apart from a position on), the memory plan,
both sampler nodes and both Model Patch nodes."""
import importlib

import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import build_tiny, text_conditioning
from test_memory_plan import sample_patched
from test_video import (a_reference_runs_on_every_step, assert_within, every_token_active,
                        exact_on_a_third_of_the_tokens, model_patch_nodes_under_ksampler, sampler_node_end_to_end)

if not hasattr(comfy.supported_models, "Krea2"):
    pytest.skip("this ComfyUI has no Krea 2", allow_module_level=True)

comfy_nodes = importlib.import_module("nodes")   # ComfyUI's nodes.py
TOL = 1e-5
HEIGHT, WIDTH = 8, 12                            # a non-square latent (Wan 2.1's VAE: 16 channels, one frame)
TOKENS = (HEIGHT // 2) * (WIDTH // 2)
TXT_LAYERS, TXT_DIM = 3, 16                      # the text encoder's stacked layers and their width
# ComfyUI's detected Krea 2 config (model_detection.py), made tiny: 2 blocks 64 wide, 4 query heads over 2 key/value
# heads of 16 (RoPE axes 4 / 6 / 6)
TINY_KREA2 = dict(image_model="krea2", features=64, tdim=32, txtdim=TXT_DIM, heads=4, kvheads=2, multiplier=2,
                  layers=2, patch=2, channels=16, txtlayers=TXT_LAYERS, txtheads=2, txtkvheads=2)


def tiny_krea2(seed):
    return build_tiny(comfy.supported_models.Krea2, TINY_KREA2, seed)


def latent(batch=1):
    """One frame of Wan 2.1's 5-D latent (ComfyUI gives an empty image latent that frame axis)."""
    return torch.zeros(batch, 16, 1, HEIGHT, WIDTH)


def prompts(**extra):
    """Qwen3-VL's stacked layers per token; prompts of different lengths run as two streams at cfg > 1."""
    return dict(positive=text_conditioning(1, 7, TXT_LAYERS * TXT_DIM, **extra),
                negative=text_conditioning(2, 5, TXT_LAYERS * TXT_DIM, **extra))


def with_reference():
    """A reference latent (ReferenceLatent's conditioning) of another size, modulated with timestep 0."""
    reference = torch.randn(1, 16, 1, 4, 8, generator=torch.Generator().manual_seed(5))
    return prompts(reference_latents=[reference], reference_latents_method="index_timestep_zero")


def test_krea2_is_its_own_adapter():
    assert adapter_for(tiny_krea2(seed=0), "test").names == ("Krea 2",)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(batch, cfg):
    run = every_token_active(tiny_krea2(seed=3), latent(batch), cfg, prompts(), TOKENS, assert_within(TOL))
    assert run.grid == (HEIGHT // 2, WIDTH // 2)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(batch, cfg):
    """A third of the tokens, in random order and different per image."""
    exact_on_a_third_of_the_tokens(tiny_krea2(seed=4), latent(batch), cfg, prompts(), TOKENS)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_a_reference_at_timestep_zero_runs_on_every_step(batch, cfg):
    """Its 2 x 4 tokens follow the image's and run on every step; their timestep-0 modulation starts where they
    start in the gathered sequence."""
    a_reference_runs_on_every_step(tiny_krea2(seed=6), latent(batch), cfg, prompts(), with_reference(), TOKENS, 8,
                                   assert_within(TOL))


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Joint attention over [text | image | references] in every block."""
    run = sample_patched(tiny_krea2(seed=0), latent(2), cfg, with_reference())
    width, layers = TINY_KREA2["features"], TINY_KREA2["layers"]
    per_row = {7: 2, 5: 2 if cfg > 1 else 0}                    # text tokens -> rows of that prompt (batch 2)
    expected = sum(layers * rows * (TOKENS + 8 + text) * width * 2 * 4 for text, rows in per_row.items())
    assert run.kv_planned_bytes == run.kv_peak_bytes == expected


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
@pytest.mark.parametrize("frame_axis", [True, False], ids=["5-D", "empty image latent"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method, frame_axis):
    """Also from an empty 4-D image latent (EmptySD3LatentImage's), which ComfyUI gives the frame axis."""
    samples = latent(2) if frame_axis else latent(2)[:, :, 0]
    _, out, trace, _ = sampler_node_end_to_end(tiny_krea2(seed=7), {"samples": samples}, with_reference(), method,
                                               TOKENS)
    assert trace.grid == (HEIGHT // 2, WIDTH // 2) and out.shape == latent(2).shape


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_krea2(seed=8), {"samples": latent(2)}, prompts(), assert_within(TOL))
