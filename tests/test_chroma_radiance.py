"""Chroma Radiance (`comfy.ldm.chroma_radiance.model.ChromaRadiance`: Chroma in pixel space) on tiny random-weight
instances of its real ComfyUI class (CPU, fp32): one token per pixel patch, Chroma's blocks over [text | image], then
the NeRF head decoding each patch from its hidden state and its own pixels, with the per-pixel linear head (tiled and
not), the 3x3 convolution head and, where ComfyUI has it, the x0-predicting variant; the exactness set of the image
families (a non-square image, prompts of different lengths: two streams), the memory plan, both sampler nodes and
both Model Patch nodes."""
import dataclasses

import pytest
import torch

import comfy.latent_formats
import comfy.ldm.chroma_radiance.model
import comfy.supported_models

from comfyui_sdit.nodes.comfy_compat import complete_params
from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import build_tiny, chroma_conditioning, ras_sample
from test_engine_exactness import dense_sparse_plain
from test_memory_plan import sample_patched
from test_ras_sampler import ras_args
from test_video import (assert_within, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end)

TOL = 1e-5
PATCH, ROWS, COLS = 4, 4, 6                      # a non-square 16 x 24 pixel image: 24 patches (16 px for the real one)
TOKENS = ROWS * COLS
PARAMS = {f.name for f in dataclasses.fields(comfy.ldm.chroma_radiance.model.ChromaRadianceParams)}
# ComfyUI's Chroma Radiance config (model_detection's), made tiny: Chroma's of the other tests at patch 4, a NeRF head
# of 2 blocks 16 wide
TINY_RADIANCE = dict(image_model="chroma_radiance", in_channels=3, out_channels=3, context_in_dim=32, hidden_size=64,
                     mlp_ratio=2.0, num_heads=4, depth=2, depth_single_blocks=2, axes_dim=[4, 6, 6], theta=10000,
                     patch_size=PATCH, qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=64, n_layers=2,
                     nerf_hidden_size=16, nerf_mlp_ratio=2, nerf_depth=2, nerf_max_freqs=4, nerf_tile_size=0,
                     nerf_final_head_type="linear", nerf_embedder_dtype=None, use_x0=False,
                     use_sequential_txt_ids=False)
VARIANTS = {"linear": {}, "linear, tiled": dict(nerf_tile_size=8), "conv": dict(nerf_final_head_type="conv")}
if "use_x0" in PARAMS:
    VARIANTS["x0"] = dict(use_x0=True, use_sequential_txt_ids=True)


def tiny_radiance(variant, seed):
    config = {k: v for k, v in dict(TINY_RADIANCE, **VARIANTS[variant]).items() if k in PARAMS or k == "image_model"}
    config = complete_params(comfy.ldm.chroma_radiance.model.ChromaRadianceParams, config)
    model = build_tiny(comfy.supported_models.ChromaRadiance, config, seed)
    if config.get("use_x0"):        # the x0 checkpoints carry this marker; ComfyUI's loader registers it from them
        model.model.diffusion_model.register_buffer("__x0__", torch.tensor([]))
    return model


def image(batch=1):
    return torch.zeros(batch, 3, ROWS * PATCH, COLS * PATCH)


def prompts():
    """Prompts of different lengths: ComfyUI runs them as separate calls (two streams) at cfg > 1."""
    return dict(positive=chroma_conditioning(1, 7), negative=chroma_conditioning(2, 5))


def test_chroma_radiance_is_its_own_adapter():
    assert adapter_for(tiny_radiance("linear", seed=0), "test").names == ("Chroma Radiance",)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(variant, batch, cfg):
    run = every_token_active(tiny_radiance(variant, seed=3), image(batch), cfg, prompts(), TOKENS, assert_within(TOL))
    assert run.grid == (ROWS, COLS)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(variant, batch, cfg):
    """A third of the patches, in random order and different per image. The 3x3 head reads one pixel into each
    neighbour, from the skipped patches' features as last computed: here (the same input twice) those of the dense
    forward, so the running patches are exact up to their borders."""
    exact_on_a_third_of_the_tokens(tiny_radiance(variant, seed=4), image(batch), cfg, prompts(), TOKENS)


def test_controlnet_residuals_are_gathered():
    """Chroma's ControlNet residuals (per double and single block, over every token) follow the running tokens."""
    model = tiny_radiance("linear", seed=9)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, ROWS * PATCH, COLS * PATCH, generator=g)
    control = {"input": [0.1 * torch.randn(1, TOKENS, 64, generator=g), None],
               "output": [0.1 * torch.randn(1, TOKENS, 64, generator=g)]}
    cond = prompts()["positive"][0]
    kwargs = dict(context=cond[0], guidance=torch.tensor([0.0]), control=control)
    dense, sparse, plain, run = dense_sparse_plain(model, x, 0.6, TOKENS // 3, patch_size=PATCH, **kwargs)
    assert (dense - plain).abs().max().item() <= TOL and (sparse - plain).abs().max().item() <= TOL
    assert run.evals[1].calls[0].attention_image_rows == [TOKENS // 3] * 4
    without = model.model.diffusion_model(x, torch.full((1,), 0.6), transformer_options={}, **dict(kwargs, control=None))
    assert (without - plain).abs().max().item() > 1e-3, "the residuals count"


def test_an_image_off_the_patch_grid_is_refused_in_pixels():
    """A pixel-space model: the error names the image size the patch needs, not eight times it (where the latent format
    says how many pixels a latent pixel covers: ComfyUI 0.3.75's does not)."""
    says = hasattr(comfy.latent_formats.LatentFormat, "spacial_downscale_ratio")
    pixels = 4 if says else 32
    with pytest.raises(SDiTInputError, match=rf"RAS Sampler: input 'latent_image'.*multiple of {pixels} pixels"):
        ras_sample(tiny_radiance("linear", seed=0), latent_image={"samples": torch.zeros(1, 3, 18, 24)},
                   **dict(ras_args(), **prompts()))


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Chroma's joint attention over [text | image] in its 2 double and 2 single blocks."""
    run = sample_patched(tiny_radiance("linear", seed=0), image(2), cfg, prompts())
    width, layers = 64, 4
    per_row = {7: 2, 5: 2 if cfg > 1 else 0}                    # text tokens -> rows of that prompt (batch 2)
    expected = sum(layers * rows * (TOKENS + text) * width * 2 * 4 for text, rows in per_row.items())
    assert run.kv_planned_bytes == run.kv_peak_bytes == expected


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_radiance("conv", seed=7), {"samples": image(2)}, prompts(), method,
                                             TOKENS)
    assert trace.grid == (ROWS, COLS)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_radiance("linear", seed=8), {"samples": image(2)}, prompts(),
                                     assert_within(TOL))
