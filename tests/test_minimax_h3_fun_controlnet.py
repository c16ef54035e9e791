"""MiniMax H3 with newer ComfyUI's Fun ControlNet ("Apply MiniMax H3 Fun ControlNet" with a model of "Load Model
Patch": a tower of a few of the model's blocks that replaces some of its blocks, starts from the sequence entering the
first of them with its control video put at the video's positions, and adds its blocks' outputs to theirs), on a tiny
random-weight MiniMax H3 and a tiny instance of ComfyUI's own MiniMaxH3FunControl (CPU, fp32): every token active ==
the ControlNet alone; a sparse step after a dense one exact on the video's tokens that ran and on the whole audio; the
tower in the form that drops the engine's attention override itself and in the one that does not; a keyframe guide
beside it; a ControlNet that ends halfway; both sampler nodes and both Model Patch nodes end to end, the model and
the patch passed in unchanged. Skipped where the running ComfyUI has no MiniMax H3 Fun ControlNet (0.3.75, 0.33: run
on a local tree with the index's files, docs/COMPATIBILITY.md)."""
import importlib

import pytest
import torch

import comfy.model_patcher
import comfy.ops

if (importlib.util.find_spec("comfy.ldm.minimax") is None
        or importlib.util.find_spec("comfy.ldm.minimax.controlnet") is None):
    pytest.skip("this ComfyUI has no MiniMax H3 Fun ControlNet", allow_module_level=True)
fun_control = importlib.import_module("comfy.ldm.minimax.controlnet")
minimax_nodes = importlib.import_module("comfy_extras.nodes_minimax_h3")
if not hasattr(minimax_nodes, "MiniMaxH3FunControlNetApply"):
    pytest.skip("this ComfyUI has no Apply MiniMax H3 Fun ControlNet", allow_module_level=True)

from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
import av_sampling
from av_sampling import assert_parts_within, outputs
from sdit_testkit import (assert_exact_on_active_tokens, init_weights_, random_active,
                          sample_leaving_a_fun_controlnet_untouched)
from test_minimax_h3 import (AUDIO_VALUES, FRAMES, HEIGHT, PIXELS, TOKENS, TOL, WIDTH, av_latent,
                             guided_and_kept_first_frame, prompts, sample, tiny_h3)

LAYERS = 4
INJECTED = (0, 2)            # the tower's blocks replace the model's blocks 0 and 2 (ComfyUI's: every tenth of 50)


def tiny_model(seed):
    return tiny_h3(seed, num_layers=LAYERS)


def fun_controlnet(seed: int):
    """ComfyUI's Fun ControlNet for the tiny model, as "Load Model Patch" gives it."""
    net = fun_control.MiniMaxH3FunControl(control_in_dim=49, injection_layers=INJECTED, hidden_size=64,
                                          num_attention_heads=4, attention_head_dim=16, ffn_hidden_size=128,
                                          time_embed_dim=32, operations=comfy.ops.disable_weight_init)
    init_weights_(net, seed)
    net.requires_grad_(False)                       # as loaded weights are (the tower's RoPE runs in place)
    return comfy.model_patcher.ModelPatcher(net, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


class StandInVideoVAE:
    """MiniMax H3's video VAE as the patch uses it: 16x spatial compression, 17k + 5 frames to 5k + 2 latent frames, a
    latent that follows the pixels (pooled, then a fixed random mix of the colours into 24 channels)."""
    mix = torch.randn(24, 3, generator=torch.Generator().manual_seed(8))

    def spacial_compression_encode(self):
        return 16

    def encode(self, pixels):
        frames = 2 if pixels.shape[0] <= 5 else (pixels.shape[0] - 5) // 17 * 5 + 2
        pooled = torch.nn.functional.adaptive_avg_pool3d(pixels.movedim(-1, 0)[None],
                                                         (frames, pixels.shape[1] // 16, pixels.shape[2] // 16))
        return torch.einsum("oc,bcthw->bothw", self.mix, pooled)


def control_video():
    return torch.rand(PIXELS["length"], PIXELS["height"], PIXELS["width"], 3, generator=torch.Generator().manual_seed(6))


def with_fun_controlnet(model, end_percent=1.0, inpainting=False):
    mask = None
    if inpainting:                                  # regenerate the left half, behind the source video
        mask = torch.zeros(PIXELS["length"], PIXELS["height"], PIXELS["width"])
        mask[..., : PIXELS["width"] // 2] = 1.0
    with torch.no_grad():                           # as ComfyUI runs its nodes
        return outputs(minimax_nodes.MiniMaxH3FunControlNetApply.execute(
            model, fun_controlnet(11), StandInVideoVAE(), 1.0, 0.0, end_percent, control_video=control_video(),
            mask=mask, source_video=control_video().flip(0) if inpainting else None))[0]


@pytest.fixture(params=["drops the override", "keeps the override"])
def tower_form(request, monkeypatch):
    """Newer ComfyUI's tower drops an attention override from the options it runs its blocks with (Comfy-Org
    9b7fcfe); an earlier form (comfyanonymous 39caae7, read) runs them with the options as they come."""
    if request.param == "keeps the override":
        def step(self, index, c, t_emb, mod_segments, rope_freqs, transformer_options):
            block = self.control_blocks[index]
            c = fun_control.DiTBlock.forward(block, c, t_emb, mod_segments, rope_freqs,
                                             transformer_options=transformer_options)
            return c, block.after_proj(c)
        monkeypatch.setattr(fun_control.MiniMaxH3FunControl, "step", step)
    return request.param


def every_token_active(model, latent, cfg, conditioning=None):
    """Every video token through the sparse path after a dense first step: the video and the audio as the model with
    the ControlNet alone."""
    reference = sample(model, latent, cfg, conditioning=conditioning)
    policy = FixedPlanPolicy([None] + [torch.arange(TOKENS)[None]] * 3)
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    assert_parts_within(sample(patched, latent, cfg, conditioning=conditioning), reference, TOL)
    assert [e.dense for e in slot.last_run.evals] == [True, False, False, False]
    return reference


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_all_tokens_active_equals_the_controlnet_alone(cfg, tower_form):
    model = tiny_model(seed=3)
    controlled = every_token_active(with_fun_controlnet(model), av_latent(), cfg)
    plain = sample(model, av_latent(), cfg)
    assert (controlled[0] - plain[0]).abs().max().item() > 1e-3, "the ControlNet changes the video"


@pytest.mark.parametrize("inpainting", [False, True])
def test_dense_then_sparse_matches_dense_on_active_tokens_and_the_whole_audio(inpainting, tower_form):
    """A third of the video tokens (random order): they equal the dense forward's, and so does all of the audio."""
    by_stream, (dense, sparse) = av_sampling.dense_then_sparse(
        with_fun_controlnet(tiny_model(seed=4), inpainting=inpainting), av_latent(),
        random_active(1, TOKENS, TOKENS // 3, seed=1), 3.0, prompts(), AUDIO_VALUES)
    assert len(by_stream) == 2
    assert_exact_on_active_tokens(by_stream, TOKENS, tol=TOL)
    assert dense.abs().max().item() > 0.1 and (sparse - dense).abs().max().item() <= TOL


def test_beside_a_keyframe_guide():
    """The keyframe's rows get no control (zero rows where the layout has conditions): exact as without it."""
    conditioning, latent = guided_and_kept_first_frame()
    model = with_fun_controlnet(tiny_model(seed=6))
    every_token_active(model, latent, 3.0, conditioning)
    by_stream, (dense, sparse) = av_sampling.dense_then_sparse(model, latent, random_active(1, TOKENS, TOKENS // 3,
                                                                                            seed=2),
                                                               3.0, conditioning, AUDIO_VALUES)
    assert_exact_on_active_tokens(by_stream, TOKENS, tol=TOL)
    assert (sparse - dense).abs().max().item() <= TOL


def test_a_controlnet_that_ends_halfway():
    """After its end percent the patch passes the blocks by: every token active still equals it alone."""
    model = tiny_model(seed=5)
    halfway = every_token_active(with_fun_controlnet(model, end_percent=0.5), av_latent(), 3.0)
    whole = sample(with_fun_controlnet(model), av_latent(), 3.0)
    assert (halfway[0] - whole[0]).abs().max().item() > 1e-4, "it ends halfway"


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_and_the_patch_untouched(method):
    model = with_fun_controlnet(tiny_model(seed=9))
    sample_leaving_a_fun_controlnet_untouched(model, ("double_block", 0), lambda: av_sampling.sampler_node_end_to_end(
        model, av_latent(), prompts(), method, (FRAMES, HEIGHT, WIDTH), TOKENS))


def test_model_patch_nodes_under_ksampler():
    av_sampling.model_patch_nodes_under_ksampler(with_fun_controlnet(tiny_model(seed=10)), av_latent(), prompts(), TOL)


def test_an_attention_backend_under_ours_computes_the_towers_attention_as_without_the_pack(tower_form):
    """Another node's attention override under ours (ComfyUI's "Model Attention Backend", a SageAttention node)
    computes the tower's attention where the tower runs overrides, as without the pack: it sees as many calls."""
    from test_neighbours import attention_backend_like

    def with_backend(calls):
        model = with_fun_controlnet(tiny_model(seed=12)).clone()
        model.model_options["transformer_options"]["optimized_attention_override"] = attention_backend_like(calls)
        return model
    alone, under_ours = [], []
    reference = sample(with_backend(alone), av_latent(), 3.0)
    policy = FixedPlanPolicy([None] + [torch.arange(TOKENS)[None]] * 3)
    patched, _ = apply_token_sparse(with_backend(under_ours), lambda run: policy, node="test")
    assert_parts_within(sample(patched, av_latent(), 3.0), reference, TOL)
    assert len(under_ours) == len(alone) > 0
