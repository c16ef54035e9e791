"""Wan with ComfyUI's Uni3C ControlNet ("Apply Wan Uni3C ControlNet" with a Uni3C model of "Load Model Patch": a
transformer of its own over the latent's tokens and the camera's render video, whose blocks' outputs are added to the
video's tokens after the model's first blocks), on a tiny random-weight Wan 2.1 and a tiny instance of ComfyUI's own
WanUni3CControlnet (CPU, fp32): every token active == the ControlNet alone; a sparse step after a dense one exact on
the tokens that ran (batch 2 with CFG, other tokens per video), image-to-video too; a ControlNet that ends halfway; both sampler nodes and
both Model Patch nodes end to end. Skipped where the running ComfyUI has no Uni3C ControlNet (0.3.75)."""
import importlib

import pytest
import torch

import comfy.model_patcher
import comfy.ops

from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import StandInWanVAE, assert_exact_on_active_tokens, init_weights_, random_active, tiny_wan
from test_video import (FRAMES, HEIGHT, TOKENS, WIDTH, a_patch_runs_with_every_token_active, assert_within, conds,
                        dense_then_sparse, every_token_active, model_patch_nodes_under_ksampler,
                        sampler_node_end_to_end, video_latent)

model_patch_nodes = importlib.import_module("comfy_extras.nodes_model_patch")
if not hasattr(model_patch_nodes, "WanUni3CControlnetApply"):
    pytest.skip("this ComfyUI has no Uni3C ControlNet", allow_module_level=True)
uni3c = importlib.import_module("comfy.ldm.wan.uni3c")

TOL = 1e-5


class StandInUni3CVAE(StandInWanVAE):
    """Wan 2.1's VAE as the Uni3C patch uses it: also its compression factors."""

    def temporal_compression_decode(self):
        return 4

    def spacial_compression_encode(self):
        return 8


def uni3c_net(seed: int):
    """ComfyUI's Uni3C ControlNet for the tiny Wan (dim 64), two blocks, as "Load Model Patch" gives it."""
    net = uni3c.WanUni3CControlnet(in_channels=36, conv_out_dim=64, dim=32, ffn_dim=64, num_heads=2, num_layers=2,
                                   time_embed_dim=64, out_proj_dim=64, add_channels=7, mid_channels=16,
                                   operations=comfy.ops.disable_weight_init)
    init_weights_(net, seed)
    return comfy.model_patcher.ModelPatcher(net, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def render_video():
    """The camera's render video, one frame per pixel frame of the latent."""
    return torch.rand((FRAMES - 1) * 4 + 1, HEIGHT * 8, WIDTH * 8, 3, generator=torch.Generator().manual_seed(5))


def with_uni3c(model, end_percent=1.0):
    with torch.no_grad():           # as ComfyUI runs its nodes
        return model_patch_nodes.WanUni3CControlnetApply().apply_patch(model, uni3c_net(11), StandInUni3CVAE(),
                                                                       render_video(), 1.0, 0.0, end_percent)[0]


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_the_controlnet_alone(batch, cfg):
    model = tiny_wan(seed=3)
    a_patch_runs_with_every_token_active(model, with_uni3c(model), video_latent(batch), cfg, conds(), TOKENS,
                                         assert_within(TOL))


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(batch, cfg):
    """A third of the tokens, in random order and other ones per video."""
    active = random_active(batch, TOKENS, TOKENS // 3, seed=1)
    by_stream = dense_then_sparse(with_uni3c(tiny_wan(seed=4)), video_latent(batch), active, cfg, conds())
    assert_exact_on_active_tokens(by_stream, TOKENS)


def test_image_to_video():
    """Wan 2.1 I2V (the start image's latent and mask concatenated to the model's input: the ControlNet reads the noise
    latent and the mask, its first 20 channels): a third of the tokens exact."""
    from sdit_testkit import tiny_wan_i2v
    from test_video import i2v_conds
    active = random_active(2, TOKENS, TOKENS // 3, seed=2)
    by_stream = dense_then_sparse(with_uni3c(tiny_wan_i2v(seed=9)), video_latent(2), active, 3.0, i2v_conds())
    assert_exact_on_active_tokens(by_stream, TOKENS)


def test_a_controlnet_that_ends_halfway():
    """After its end percent the patch adds nothing: every token active still equals it alone."""
    controlled = with_uni3c(tiny_wan(seed=5), end_percent=0.5)
    every_token_active(controlled, video_latent(2), 3.0, conds(), TOKENS, assert_within(TOL))


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end(method):
    sampler_node_end_to_end(with_uni3c(tiny_wan(seed=6)), {"samples": video_latent(2)}, conds(), method, TOKENS)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(with_uni3c(tiny_wan(seed=7)), {"samples": video_latent(1)}, conds(),
                                     assert_within(TOL))


def test_the_wan_variants_still_refuse_it():
    """Only plain Wan's adapter runs the patch token-sparse; the variants' (VACE, Animate, ...) are untested with it."""
    from comfyui_sdit.nodes.families import FAMILIES
    wan = adapter_for(tiny_wan(seed=8), "test")
    variants = [f for f in FAMILIES if isinstance(f, type(wan)) and type(f) is not type(wan)]
    assert "WanUni3CCnetPatch" in wan.handled_patches and len(variants) >= 7
    assert all("WanUni3CCnetPatch" not in f.handled_patches for f in variants)
