"""Mochi (`comfy.ldm.genmo.joint_model.asymm_models_joint.AsymmDiTJoint`) on tiny random-weight instances of its real
ComfyUI class (CPU, fp32): joint attention over [video | text] with hidden sizes of their own and 3-D RoPE on the
video; the exactness set of test_video.py (an odd frame count, non-square frames, a padded prompt the model crops),
the memory plan, both sampler nodes and both Model Patch nodes."""
import importlib

import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import build_tiny, text_conditioning
from test_memory_plan import sample_patched
from test_video import (assert_within, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end,
                        skip_layer_guidance_skipping_block_0)

nodes_mochi = importlib.import_module("comfy_extras.nodes_mochi")
TOL = 1e-5
FRAMES, HEIGHT, WIDTH = 5, 8, 12                 # 25 frames of 96 x 64 pixels: an odd frame count, non-square
TOKENS = FRAMES * (HEIGHT // 2) * (WIDTH // 2)
# ComfyUI's detected Mochi config (model_detection.py), made tiny: the video 64 wide, the text 32 (the class insists
# on the real video MLP's width, 12,288)
TINY_MOCHI = dict(image_model="mochi_preview", depth=2, patch_size=2, num_heads=4, hidden_size_x=64, hidden_size_y=32,
                  mlp_ratio_x=12288 / 64, mlp_ratio_y=4.0, learn_sigma=False, in_channels=12, qk_norm=True, qkv_bias=False,
                  out_bias=True, attn_drop=0.0, patch_embed_bias=True, posenc_preserve_area=True,
                  timestep_mlp_bias=True, attend_to_padding=False, timestep_scale=1000.0, use_t5=True,
                  t5_feat_dim=32, t5_token_length=256)


def tiny_mochi(seed):
    return build_tiny(comfy.supported_models.GenmoMochi, TINY_MOCHI, seed)


def latent(batch=1):
    out = nodes_mochi.EmptyMochiLatentVideo.execute(width=WIDTH * 8, height=HEIGHT * 8, length=(FRAMES - 1) * 6 + 1,
                                                    batch_size=batch)
    return (out.result if hasattr(out, "result") else out)[0]["samples"]


def prompts():
    """T5 tokens and their mask: the negative's last token is padding, which the model crops (`num_tokens`); prompts
    of different lengths run as two streams."""
    padded = torch.ones(1, 5, dtype=torch.long)
    padded[:, -1] = 0
    return dict(positive=text_conditioning(1, 7, 32, attention_mask=torch.ones(1, 7, dtype=torch.long)),
                negative=text_conditioning(2, 5, 32, attention_mask=padded))


def test_mochi_is_its_own_adapter():
    assert adapter_for(tiny_mochi(seed=0), "test").names == ("Mochi",)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(batch, cfg):
    run = every_token_active(tiny_mochi(seed=3), latent(batch), cfg, prompts(), TOKENS, assert_within(TOL))
    assert run.grid == (FRAMES, HEIGHT // 2, WIDTH // 2)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(batch, cfg):
    """A third of the tokens, in random order and different per video."""
    exact_on_a_third_of_the_tokens(tiny_mochi(seed=4), latent(batch), cfg, prompts(), TOKENS)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Joint attention over the video and the prompt's unpadded tokens (7 for the positive, 4 of the negative's 5)."""
    run = sample_patched(tiny_mochi(seed=0), latent(batch=2), cfg, prompts())
    width = TINY_MOCHI["hidden_size_x"]
    per_row = TINY_MOCHI["depth"] * 2 * width * 4
    expected = 2 * (TOKENS + 7) * per_row + (0 if cfg == 1.0 else 2 * (TOKENS + 4) * per_row)
    assert run.kv_planned_bytes == run.kv_peak_bytes == expected


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_mochi(seed=9), {"samples": latent(2)}, prompts(), method, TOKENS)
    assert trace.grid == (FRAMES, HEIGHT // 2, WIDTH // 2)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_mochi(seed=10), {"samples": latent(2)}, prompts(), assert_within(TOL))


def test_skip_layer_guidance_skipping_block_0():
    skip_layer_guidance_skipping_block_0(tiny_mochi(seed=11), latent(), prompts(), TOKENS, assert_within(TOL))
