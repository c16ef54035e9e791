"""Cosmos 1.0 (`comfy.ldm.cosmos.model.GeneralDIT`: Text2World and Video2World) on tiny random-weight instances of its
real ComfyUI class (CPU, fp32), configured as ComfyUI's loader configures the 7B model (blocks over a (frames, rows,
cols, batch, channels) grid, learned position embeddings added before every block, AdaLN-LoRA): the exactness set of
test_video.py (an odd frame count, non-square frames), Video2World with a given first frame, the memory plan, both
sampler nodes and both Model Patch nodes, and a block layout ComfyUI never configures refused clearly."""
import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import build_tiny, ras_sample, text_conditioning
from test_memory_plan import sample_patched
from test_ras_sampler import ras_args
from test_video import (a_given_first_frame_is_kept, assert_within, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end)

TOL = 1e-5
FRAMES, HEIGHT, WIDTH = 3, 8, 12                 # an odd frame count, non-square frames
TOKENS = FRAMES * (HEIGHT // 2) * (WIDTH // 2)
CONTEXT = 32
# ComfyUI's detected Cosmos 1.0 7B config (model_detection.py), made tiny
TINY_COSMOS1 = dict(image_model="cosmos", max_img_h=240, max_img_w=240, max_frames=128, in_channels=16,
                    out_channels=16, patch_spatial=2, patch_temporal=1, model_channels=64, block_config="FA-CA-MLP",
                    concat_padding_mask=True, pos_emb_cls="rope3d", pos_emb_learnable=False,
                    pos_emb_interpolation="crop", block_x_format="THWBD", affline_emb_norm=True, use_adaln_lora=True,
                    adaln_lora_dim=16, num_blocks=2, num_heads=4, crossattn_emb_channels=CONTEXT,
                    extra_per_block_abs_pos_emb=True, extra_per_block_abs_pos_emb_type="learnable",
                    rope_h_extrapolation_ratio=1.0, rope_w_extrapolation_ratio=1.0, rope_t_extrapolation_ratio=2.0)


def tiny_cosmos1(seed, image_to_video=False, **config):
    """Text2World, or Video2World (the latent's mask of given frames concatenated as a channel)."""
    model_config = comfy.supported_models.CosmosI2V if image_to_video else comfy.supported_models.CosmosT2V
    return build_tiny(model_config, dict(TINY_COSMOS1, in_channels=17 if image_to_video else 16, **config), seed)


def latent(batch=1):
    return torch.zeros(batch, 16, FRAMES, HEIGHT, WIDTH)


def prompts():
    """Prompts of different lengths: ComfyUI runs them as two streams at cfg > 1."""
    return dict(positive=text_conditioning(1, 7, CONTEXT), negative=text_conditioning(2, 5, CONTEXT))


def test_cosmos1_is_its_own_adapter():
    assert adapter_for(tiny_cosmos1(seed=0), "test").names == ("Cosmos 1.0",)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(batch, cfg):
    run = every_token_active(tiny_cosmos1(seed=3), latent(batch), cfg, prompts(), TOKENS, assert_within(TOL))
    assert run.grid == (FRAMES, HEIGHT // 2, WIDTH // 2)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(batch, cfg):
    """A third of the tokens, in random order and different per video."""
    exact_on_a_third_of_the_tokens(tiny_cosmos1(seed=4), latent(batch), cfg, prompts(), TOKENS)


def test_video_to_world_keeps_its_given_first_frame():
    """What CosmosImageToVideoLatent hands the sampler for a start image: its latent in frame 0 and a noise mask
    that keeps that frame (its inverse concatenated to the model's input). Every token through the sparse path ==
    KSampler; the given frame never runs on a sparse step and is kept."""
    samples = torch.randn(1, 16, FRAMES, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(1, 1, FRAMES, HEIGHT, WIDTH)
    mask[:, :, 0] = 0.0
    a_given_first_frame_is_kept(tiny_cosmos1(seed=6, image_to_video=True), {"samples": samples, "noise_mask": mask},
                                prompts(), TOKENS, cfg=3.0)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Self-attention over the video's tokens alone: one layer per block."""
    run = sample_patched(tiny_cosmos1(seed=0), latent(2), cfg, prompts())
    rows = 2 if cfg == 1.0 else 4                  # batch 2; at cfg 3 the negative prompt's rows too
    layers = TINY_COSMOS1["num_blocks"]
    assert run.kv_planned_bytes == run.kv_peak_bytes == layers * rows * TOKENS * TINY_COSMOS1["model_channels"] * 2 * 4


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_cosmos1(seed=7), {"samples": latent(2)}, prompts(), method, TOKENS)
    assert trace.grid == (FRAMES, HEIGHT // 2, WIDTH // 2)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_cosmos1(seed=9), {"samples": latent(2)}, prompts(), assert_within(TOL))


def test_a_block_layout_comfyui_never_configures_is_refused():
    model = tiny_cosmos1(seed=0, block_x_format="BTHWD")
    with pytest.raises(SDiTInputError, match="RAS Sampler: input 'model'.*BTHWD layout"):
        ras_sample(model, latent_image={"samples": latent()}, **ras_args(steps=3, **prompts()))
