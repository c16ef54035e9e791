"""Qwen-Image with ComfyUI's own ControlNets of Apply ControlNet (its hint encoded by the VAE) run on the tokens the model
runs (nodes/sparse_controlnet.py), on a tiny random-weight Qwen-Image and tiny instances of ComfyUI's two networks (CPU,
fp32): the InstantX ControlNet (`QwenImageControlNetModel`, a Qwen-Image of a few blocks) and newer ComfyUI's Fun
ControlNet (`QwenImageFunControlNetModel` under `QwenFunControlNet`, which runs the model's own embedders). Every token
active == the ControlNet run whole by ComfyUI; a sparse step after a dense one exact on the tokens that ran with the
ControlNet's own forward on those tokens only (batch 2 with CFG, other tokens per image); the K/V cache as planned and
a ControlNet that ends halfway dropped; the ControlNet passed in untouched and freed at once when dropped; both sampler
nodes end to end."""
import importlib

import pytest
import torch

import comfy.controlnet
import comfy.latent_formats
import comfy.model_management
import comfy.ops

from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from sdit_testkit import (TINY_QWEN_IMAGE, assert_exact_on_active_tokens, init_weights_, ksample, random_active,
                          text_conditioning, tiny_qwen_image)
from test_flux_controlnet import (controlnet_passed_in_is_untouched, dense_then_sparse,
                                  dropped_controlnet_is_freed_at_once, side_calls)
from test_qwen_image_controlnet import HEIGHT, INNER_DIM, TOKENS, WIDTH, StandInQwenImageVAE, latent
from test_video import assert_within, every_token_active, sampler_node_end_to_end

qwen_controlnet = pytest.importorskip("comfy.ldm.qwen_image.controlnet")
comfy_nodes = importlib.import_module("nodes")   # ComfyUI's nodes.py
TOL = 1e-5
TEXT = 7
FUN_BLOCKS = 2


def instantx_controlnet(seed: int):
    """ComfyUI's QwenImageControlNetModel for the tiny Qwen-Image (2 blocks), as its loader wraps one."""
    config = {name: value for name, value in TINY_QWEN_IMAGE.items() if name != "image_model"}
    network = qwen_controlnet.QwenImageControlNetModel(operations=comfy.ops.disable_weight_init, **config)
    init_weights_(network, seed)
    return comfy.controlnet.ControlNet(network, compression_ratio=1, latent_format=comfy.latent_formats.Wan21(),
                                       load_device=comfy.model_management.get_torch_device(), extra_conds=[])


def fun_controlnet(seed: int):
    """ComfyUI's QwenImageFunControlNetModel for the tiny Qwen-Image (2 control blocks injected at its 2 blocks; the
    33-channel hint features of the real checkpoints), as load_controlnet_qwen_fun wraps one."""
    heads, head_dim = TINY_QWEN_IMAGE["num_attention_heads"], TINY_QWEN_IMAGE["attention_head_dim"]
    network = qwen_controlnet.QwenImageFunControlNetModel(
        control_in_features=33 * 4, inner_dim=heads * head_dim, num_attention_heads=heads, attention_head_dim=head_dim,
        num_control_blocks=FUN_BLOCKS, main_model_double=TINY_QWEN_IMAGE["num_layers"], injection_layers=(0, 1),
        operations=comfy.ops.disable_weight_init)
    init_weights_(network, seed)
    return comfy.controlnet.QwenFunControlNet(network, compression_ratio=1, latent_format=comfy.latent_formats.Wan21(),
                                              concat_mask=False, load_device=comfy.model_management.get_torch_device(),
                                              extra_conds=[])


HAS_FUN = hasattr(qwen_controlnet, "QwenImageFunControlNetModel") and hasattr(comfy.controlnet, "QwenFunControlNet")
# each network and its K/V cache layers beside the model's
NETWORKS = {"instantx": (instantx_controlnet, TINY_QWEN_IMAGE["num_layers"]),
            "fun": (fun_controlnet, FUN_BLOCKS)}
KINDS = [pytest.param("instantx"),
         pytest.param("fun", marks=pytest.mark.skipif(not HAS_FUN, reason="this ComfyUI has no Qwen-Image Fun ControlNet"))]


def prompts(kind: str = "instantx", seed: int = 5, end_percent: float = 1.0, control=None) -> dict:
    image = torch.rand(1, HEIGHT * 8, WIDTH * 8, 3, generator=torch.Generator().manual_seed(6))
    positive, negative = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(
        text_conditioning(1, TEXT), text_conditioning(2, TEXT), control or NETWORKS[kind][0](seed), image, 0.8, 0.0,
        end_percent, vae=StandInQwenImageVAE())
    return dict(positive=positive, negative=negative)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_every_token_active_equals_the_controlnet_run_whole(kind, batch, cfg):
    run = every_token_active(tiny_qwen_image(seed=3), latent(batch), cfg, prompts(kind), TOKENS, assert_within(TOL))
    assert [c.dense for c in side_calls(run, 0)] == [True]
    assert all(not c.dense and c.image_tokens == TOKENS for e in range(1, 4) for c in side_calls(run, e))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_a_sparse_step_after_a_dense_one_is_exact_and_the_controlnet_runs_those_tokens(kind, batch, cfg):
    active = random_active(batch, TOKENS, TOKENS // 3, seed=1)
    by_stream, run = dense_then_sparse(tiny_qwen_image(seed=4), latent(batch), active, cfg, prompts(kind, seed=7))
    assert_exact_on_active_tokens(by_stream, TOKENS)
    rows = 2 * batch if cfg > 1 else batch
    assert [(c.dense, c.rows, c.image_tokens) for c in side_calls(run, 1)] == [(False, rows, TOKENS // 3)]


@pytest.mark.parametrize("kind", KINDS)
def test_the_cache_is_as_planned_and_a_controlnet_that_ends_halfway_is_dropped(kind):
    policy = FixedPlanPolicy([None] + [random_active(2, TOKENS, TOKENS // 3, seed=3)] * 3)
    patched, slot = apply_token_sparse(tiny_qwen_image(seed=5), lambda run: policy, node="test")
    ksample(patched, latent(2), seed=5, steps=4, cfg=3.0, **prompts(kind, seed=8, end_percent=0.5))
    run = slot.last_run
    layers = TINY_QWEN_IMAGE["num_layers"] + NETWORKS[kind][1]
    assert run.kv_planned_bytes == run.kv_peak_bytes == 4 * layers * (TEXT + TOKENS) * INNER_DIM * 2 * 4
    assert [len(side_calls(run, e)) for e in range(4)] == [1, 1, 1, 0]


@pytest.mark.parametrize("kind", KINDS)
def test_the_controlnet_passed_in_is_untouched(kind):
    """The Fun ControlNet's base model, set by ComfyUI before sampling, is gone from it afterwards too."""
    conds = prompts(kind, seed=12)
    controlnet_passed_in_is_untouched(tiny_qwen_image(seed=9), latent(2), conds, TOKENS)
    assert "base_model" not in conds["positive"][0][1]["control"].extra_args


@pytest.mark.parametrize("kind", KINDS)
def test_a_dropped_controlnet_is_freed_at_once(kind):
    dropped_controlnet_is_freed_at_once(tiny_qwen_image(seed=15), latent(2), lambda: prompts(kind, seed=16), TOKENS)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end(kind, method):
    sampler_node_end_to_end(tiny_qwen_image(seed=6), {"samples": latent(2)}, prompts(kind, seed=9), method, TOKENS)
