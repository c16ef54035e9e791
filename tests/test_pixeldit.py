"""PixelDiT (`comfy.ldm.pixeldit.model.PixDiT_T2I`, newer ComfyUI) on tiny random-weight instances of its real class
(CPU, fp32): pixel space, one token per pixel patch; MMDiT blocks over [text | patches], then pixel blocks (each patch's
pixels compressed into a token that attends across the patches, expanded back); the exactness set of the image families
(a non-square image, prompts of different lengths: two streams) with batch 1, the memory plan, both sampler nodes and
both Model Patch nodes, and a batch of several images refused clearly."""
import importlib

import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.families import adapter_for
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from sdit_testkit import build_tiny, ksample, random_active, ras_sample, text_conditioning
from test_memory_plan import sample_patched
from test_ras_sampler import ras_args
from test_video import (assert_within, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("comfy.ldm.pixeldit") is None,
                                reason="this ComfyUI has no PixelDiT")
TOL = 1e-5
PATCH, ROWS, COLS = 4, 4, 6                      # a non-square 16 x 24 pixel image: 24 patches (16 px for the real one)
TOKENS = ROWS * COLS
# PixDiT_T2I's config (ComfyUI detects it by class defaults), made tiny: 2 MMDiT blocks 64 wide, 2 pixel blocks whose
# pixels are 8 wide and attend across the patches 32 wide; prompts of at most 8 tokens (longer ones cut)
TINY_PIXELDIT = dict(image_model="pixeldit_t2i", num_groups=4, hidden_size=64, pixel_hidden_size=8,
                     pixel_attn_hidden_size=32, pixel_num_groups=4, patch_depth=2, pixel_depth=2, patch_size=PATCH,
                     txt_embed_dim=32, txt_max_length=8)


def tiny_pixeldit(seed):
    return build_tiny(comfy.supported_models.PixelDiTT2I, TINY_PIXELDIT, seed)


def image(batch=1):
    return torch.zeros(batch, 3, ROWS * PATCH, COLS * PATCH)


def prompts():
    """Prompts of different lengths, one longer than the model reads (cut to 8 tokens): two streams at cfg > 1."""
    return dict(positive=text_conditioning(1, 11, 32), negative=text_conditioning(2, 5, 32))


def test_pixeldit_is_its_own_adapter():
    assert adapter_for(tiny_pixeldit(seed=0), "test").names == ("PixelDiT",)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_all_tokens_active_equals_unpatched(cfg):
    run = every_token_active(tiny_pixeldit(seed=3), image(), cfg, prompts(), TOKENS, assert_within(TOL))
    assert run.grid == (ROWS, COLS)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_dense_then_sparse_matches_dense_on_active_tokens(cfg):
    """A third of the patches, in random order: the MMDiT blocks' and the pixel blocks' attention both read the others'
    keys and values from the K/V cache."""
    exact_on_a_third_of_the_tokens(tiny_pixeldit(seed=4), image(), cfg, prompts(), TOKENS)


def test_a_batch_of_images_running_other_patches_is_refused_clearly():
    """By the sampler nodes before sampling; under a Model Patch node at the first sparse step."""
    with pytest.raises(SDiTInputError, match=r"RAS Sampler: input 'latent_image'.*batch size 1"):
        ras_sample(tiny_pixeldit(seed=7), latent_image={"samples": image(2)}, **ras_args(**prompts()))
    policy = FixedPlanPolicy([None, random_active(2, TOKENS, TOKENS // 3, seed=1)])
    patched, _ = apply_token_sparse(tiny_pixeldit(seed=7), lambda run: policy, node="test")
    with pytest.raises(NotImplementedError, match="batch size 1"):
        ksample(patched, image(2), steps=3, cfg=3.0, **prompts())


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """The MMDiT blocks' joint attention over [text (cut to 8 tokens) | patches], the pixel blocks' over the patches."""
    run = sample_patched(tiny_pixeldit(seed=0), image(), cfg, prompts())
    c = TINY_PIXELDIT
    per_stream = [(c["txt_max_length"] + TOKENS) * c["hidden_size"] * c["patch_depth"]
                  + TOKENS * c["pixel_attn_hidden_size"] * c["pixel_depth"]]
    if cfg > 1:
        per_stream.append((5 + TOKENS) * c["hidden_size"] * c["patch_depth"]
                          + TOKENS * c["pixel_attn_hidden_size"] * c["pixel_depth"])
    assert run.kv_planned_bytes == run.kv_peak_bytes == sum(per_stream) * 2 * 4


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_pixeldit(seed=8), {"samples": image()}, prompts(), method, TOKENS)
    assert trace.grid == (ROWS, COLS) and trace.batch == 1


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_pixeldit(seed=9), {"samples": image()}, prompts(), assert_within(TOL))

