"""Qwen-Image 2.1 with newer ComfyUI's Fun ControlNet ("Apply Qwen Image 2.1 Fun ControlNet" with a model of "Load Model
Patch": a tower of the model's own block kind that replaces every other block, starts from the sequence entering the
first of them with its control image put at the target's positions, and adds its blocks' outputs to theirs), on a tiny
random-weight Qwen-Image 2.1 and a tiny instance of ComfyUI's own QwenImage21FunControl (CPU, fp32): every token
active == the ControlNet alone (with it the model keeps no prefix cache); a sparse step after a dense one exact on the
tokens that ran, the tower on them too (batch 2 with CFG, other tokens per image); inpainting; the K/V cache with the
tower's layers as planned; a ControlNet that ends halfway, and one that starts after the last dense step (its tower
then whole); another node's attention backend under ours; both sampler nodes and both Model Patch nodes end to end,
the model and the patch passed in unchanged. Skipped where the running ComfyUI has no Qwen-Image
2.1 Fun ControlNet (0.3.75, 0.33: run on a local tree with the index's files, docs/COMPATIBILITY.md)."""
import importlib

import pytest
import torch

import comfy.model_patcher
import comfy.ops
import comfy.supported_models

if not hasattr(comfy.supported_models, "QwenImage21"):
    pytest.skip("this ComfyUI has no Qwen-Image 2.1", allow_module_level=True)
qwen_nodes = importlib.import_module("comfy_extras.nodes_qwen")
qwen21 = importlib.import_module("comfy.ldm.qwen_image21.model")
if not (hasattr(qwen_nodes, "QwenImage21FunControlNetApply") and hasattr(qwen21, "QwenImage21FunControl")):
    pytest.skip("this ComfyUI has no Qwen-Image 2.1 Fun ControlNet", allow_module_level=True)

from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from sdit_testkit import init_weights_, ksample, sample_leaving_a_fun_controlnet_untouched
from test_qwen_image21 import HEIGHT, TOKENS, TOL, WIDTH, latent, prompts, tiny_qwen_image21
from test_video import (a_patch_runs_with_every_token_active, assert_within, every_token_active,
                        exact_on_a_third_of_the_tokens, model_patch_nodes_under_ksampler, sampler_node_end_to_end)

LAYERS = 4                  # the tower's 2 blocks replace blocks 0 and 2 (ComfyUI's: 16 beside 32, every other one)


def tiny_model(seed):
    return tiny_qwen_image21(seed, num_layers=LAYERS)


def fun_controlnet(seed: int):
    """ComfyUI's Fun ControlNet for the tiny model, as "Load Model Patch" gives it: 64 control channels, the keep
    mask and 64 inpainting channels per target token."""
    net = qwen21.QwenImage21FunControl(num_blocks=2, control_in_dim=129, inner_dim=64, attention_head_dim=16,
                                       mlp_ratio=2, operations=comfy.ops.disable_weight_init)
    init_weights_(net, seed)
    net.requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(net, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


class StandInVAE:
    """Qwen-Image 2.1's VAE as the patch uses it: 16x spatial compression to 64 channels (pooled pixels, a fixed
    random mix of the colours)."""
    mix = torch.randn(64, 3, generator=torch.Generator().manual_seed(8))

    def spacial_compression_encode(self):
        return 16

    def encode(self, pixels):
        pooled = torch.nn.functional.avg_pool2d(pixels.movedim(-1, 1), 16)
        return torch.einsum("oc,bchw->bohw", self.mix, pooled)


def picture(seed):
    return torch.rand(1, HEIGHT * 16, WIDTH * 16, 3, generator=torch.Generator().manual_seed(seed))


def with_fun_controlnet(model, end_percent=1.0, inpainting=False, start_percent=0.0):
    mask = None
    if inpainting:                                  # regenerate the left half of the picture
        mask = torch.zeros(1, HEIGHT * 16, WIDTH * 16)
        mask[..., : WIDTH * 8] = 1.0
    with torch.no_grad():                           # as ComfyUI runs its nodes
        out = qwen_nodes.QwenImage21FunControlNetApply.execute(
            model, fun_controlnet(11), StandInVAE(), 1.0, start_percent, end_percent, control_image=picture(6),
            inpaint_image=picture(7) if inpainting else None, mask=mask)
    return out.result[0] if hasattr(out, "result") else out[0]


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_the_controlnet_alone(batch, cfg):
    model = tiny_model(seed=3)
    a_patch_runs_with_every_token_active(model, with_fun_controlnet(model), latent(batch), cfg, prompts(), TOKENS,
                                         assert_within(TOL))


@pytest.mark.parametrize("inpainting", [False, True])
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(batch, cfg, inpainting):
    """A third of the tokens, in random order and other ones per image."""
    exact_on_a_third_of_the_tokens(with_fun_controlnet(tiny_model(seed=4), inpainting=inpainting), latent(batch), cfg,
                                   prompts(), TOKENS)


def test_a_controlnet_that_ends_halfway():
    """After its end percent the patch passes the blocks by: every token active still equals it alone."""
    model = tiny_model(seed=5)
    run = every_token_active(with_fun_controlnet(model, end_percent=0.5), latent(2), 3.0, prompts(), TOKENS,
                             assert_within(TOL))
    assert run.grid == (HEIGHT, WIDTH)
    halfway = ksample(with_fun_controlnet(model, end_percent=0.5), latent(2), seed=5, steps=4, cfg=3.0, **prompts())
    whole = ksample(with_fun_controlnet(model), latent(2), seed=5, steps=4, cfg=3.0, **prompts())
    assert (halfway - whole).abs().max().item() > 1e-4, "it ends halfway"


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Per stream, the model's blocks' and the tower's blocks' layers over the target's tokens: the tower ran on the
    running tokens through K/V cache layers of its own."""
    from test_memory_plan import sample_patched
    run = sample_patched(with_fun_controlnet(tiny_model(seed=0)), latent(2), cfg, prompts())
    width, layers = 4 * 16, LAYERS + 2              # the model's blocks and the tower's two
    rows = 2 + (2 if cfg > 1 else 0)                # the positive's and the negative's, batch 2
    assert run.kv_planned_bytes == run.kv_peak_bytes == rows * layers * TOKENS * width * 2 * 4


def test_a_controlnet_that_starts_after_the_last_dense_step():
    """From its start percent on the tower has no K/V cache of its own (no dense forward stored one): it runs whole
    beside the sparse blocks, every token active still equals it alone."""
    model = tiny_model(seed=7)
    late = with_fun_controlnet(model, start_percent=0.5)
    every_token_active(late, latent(2), 3.0, prompts(), TOKENS, assert_within(TOL))
    whole = ksample(with_fun_controlnet(model), latent(2), seed=5, steps=4, cfg=3.0, **prompts())
    assert (ksample(late, latent(2), seed=5, steps=4, cfg=3.0, **prompts()) - whole).abs().max().item() > 1e-4


def test_an_attention_backend_under_ours_computes_the_towers_attention_as_without_the_pack():
    """Another node's attention override under ours (ComfyUI's "Model Attention Backend", a SageAttention node)
    computes the tower's attention as without the pack: it sees as many calls."""
    from test_neighbours import attention_backend_like

    def with_backend(calls):
        model = with_fun_controlnet(tiny_model(seed=12)).clone()
        model.model_options["transformer_options"]["optimized_attention_override"] = attention_backend_like(calls)
        return model
    alone, under_ours = [], []
    reference = ksample(with_backend(alone), latent(2), seed=5, steps=4, cfg=3.0, **prompts())
    policy = FixedPlanPolicy([None] + [torch.arange(TOKENS).expand(2, -1)] * 3)
    patched, _ = apply_token_sparse(with_backend(under_ours), lambda run: policy, node="test")
    assert_within(TOL)(ksample(patched, latent(2), seed=5, steps=4, cfg=3.0, **prompts()), reference)
    assert len(under_ours) == len(alone) > 0


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_and_the_patch_untouched(method):
    model = with_fun_controlnet(tiny_model(seed=9))
    sample_leaving_a_fun_controlnet_untouched(model, ("single_block", 0), lambda: sampler_node_end_to_end(
        model, {"samples": latent(2)}, prompts(), method, TOKENS))


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(with_fun_controlnet(tiny_model(seed=10)), {"samples": latent(1)}, prompts(),
                                     assert_within(TOL))


def test_a_model_that_hands_its_block_replacements_too_little_gets_a_clear_error():
    """A Qwen-Image 2.1 of a form older than ComfyUI's Fun ControlNet (comfy 0.37's, read in the index: its block
    replacements get the sequence, RoPE and options only) cannot run the ControlNet's tower: a clear error naming the
    node, not a KeyError inside the patch."""
    from types import SimpleNamespace
    from comfyui_sdit.nodes.families.qwen_image21_fun_controlnet import TowerOnRunningTokens
    patch = SimpleNamespace(control_patch=SimpleNamespace(active=True), block_index=0, previous=None)
    stand_in = TowerOnRunningTokens(None, patch, patch.control_patch, None)
    with pytest.raises(NotImplementedError, match=r"Apply Qwen Image 2.1 Fun ControlNet.*mod, attn_fn, prefix_len"):
        stand_in({"img": torch.zeros(1, 3, 8), "pe": None, "transformer_options": {}}, {"original_block": None})

