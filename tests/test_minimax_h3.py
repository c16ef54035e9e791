"""MiniMax H3 (`comfy.ldm.minimax.model.MiniMaxH3Model`, newer ComfyUI) on tiny random-weight instances of its real
class (CPU, fp32): video and audio sampled together as one latent of two parts (ComfyUI's NestedTensor, made by its own
EmptyMiniMaxH3LatentAV node), one packed sequence [text | keyframes | audio | video]; the video's tokens sparse, the
audio's always running and attending to every video token's keys through the K/V cache. The exactness set of
test_video.py (an odd frame count, non-square frames) on both parts, a keyframe guide (MiniMaxH3AddGuide, image and
audio) and a reference image with a kept frame (a noise mask: per-token timesteps), the memory plan, both sampler nodes
and both Model Patch nodes, and a batch of two refused clearly."""
import importlib

import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.families import adapter_for
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
import av_sampling
from av_sampling import assert_parts_within, outputs
from sdit_testkit import assert_exact_on_active_tokens, build_tiny, random_active, ras_sample, text_conditioning
from test_ras_sampler import ras_args

pytestmark = pytest.mark.skipif(importlib.util.find_spec("comfy.ldm.minimax") is None,
                                reason="this ComfyUI has no MiniMax H3")
node_helpers = importlib.import_module("node_helpers")
TOL = 2e-5
# 22 frames of 192 x 128 pixels: 7 latent frames (an odd count) of 8 x 12 latent pixels, 2 x 2 patches: 4 x 6 tokens
PIXELS = dict(width=192, height=128, length=22)
FRAMES, HEIGHT, WIDTH = 7, 4, 6
TOKENS = FRAMES * HEIGHT * WIDTH
AUDIO_FRAMES = 37                                # 22 frames at 24 fps, 40 audio latent frames a second
AUDIO_VALUES = 32 * 2 * AUDIO_FRAMES             # (batch, 32 channels, stereo, frames)
# ComfyUI's MiniMax H3 config, made tiny: the text comes at the hidden size (its refiner passed by), RoPE of 3 axes x 2
# frequencies fits the 16-wide heads
TINY_H3 = dict(image_model="minimax_h3", hidden_size=64, num_layers=2, token_refiner_num_layers=1,
               num_attention_heads=4, attention_head_dim=16, ffn_hidden_size=128, text_dim=32, timestep_input_dim=32,
               time_embed_hidden_size=64, time_embed_dim=32, rope_inv_freq_len=2)


def tiny_h3(seed, **config):
    model = build_tiny(comfy.supported_models.MiniMaxH3, dict(TINY_H3, **config), seed)
    with torch.no_grad():                        # a buffer ComfyUI leaves for the checkpoint to fill
        model.model.diffusion_model.rope.inv_freq.copy_(torch.tensor([1.0, 0.3]))
    return model


def av_latent():
    return outputs(importlib.import_module("comfy_extras.nodes_minimax_h3").EmptyMiniMaxH3LatentAV.execute(**PIXELS))[0]


def prompts():
    """Text at the model's hidden size; prompts of different lengths (and payloads) run as two streams."""
    return dict(positive=text_conditioning(1, 7, 64), negative=text_conditioning(2, 5, 64))


def sample(model, latent: dict, cfg, steps=4, seed=5, conditioning=None):
    """ComfyUI's sampling over the video and audio latent: (video, audio)."""
    return av_sampling.sample(model, latent, cfg, conditioning or prompts(), steps, seed)


def test_minimax_h3_is_its_own_adapter():
    assert adapter_for(tiny_h3(seed=0), "test").names == ("MiniMax H3",)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_all_tokens_active_equals_unpatched(cfg):
    """Every video token through the sparse path after a dense first step: the video and the audio as without the
    pack."""
    model, latent = tiny_h3(seed=3), av_latent()
    reference = sample(model, latent, cfg)
    policy = FixedPlanPolicy([None] + [torch.arange(TOKENS)[None]] * 3)
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    assert_parts_within(sample(patched, latent, cfg), reference, TOL)
    assert [e.dense for e in slot.last_run.evals] == [True, False, False, False]
    assert slot.last_run.grid == (FRAMES, HEIGHT, WIDTH)


def dense_then_sparse(model, latent: dict, active, cfg, conditioning=None):
    """A dense and then a sparse forward: the video's token outputs by stream and the audio's part of both outputs."""
    return av_sampling.dense_then_sparse(model, latent, active, cfg, conditioning or prompts(), AUDIO_VALUES)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_dense_then_sparse_matches_dense_on_active_tokens_and_the_whole_audio(cfg):
    """A third of the video tokens (random order): they equal the dense forward's, and so does all of the audio, whose
    queries saw every video token's keys (the others' from the cache)."""
    by_stream, audio = dense_then_sparse(tiny_h3(seed=4), av_latent(), random_active(1, TOKENS, TOKENS // 3, seed=1),
                                         cfg)
    assert len(by_stream) == (2 if cfg > 1 else 1)
    assert_exact_on_active_tokens(by_stream, TOKENS, tol=TOL)
    dense, sparse = audio
    assert dense.abs().max().item() > 0.1
    assert (sparse - dense).abs().max().item() <= TOL


class StandInVAE:
    """MiniMax H3's video VAE as MiniMaxH3AddGuide uses it: a latent of the right shape for the pixels it encodes
    (random, fixed by their size)."""

    def encode(self, pixels):
        generator = torch.Generator().manual_seed(pixels.shape[0] * 7 + pixels.shape[1])
        return torch.randn(1, 24, 1, pixels.shape[1] // 16, pixels.shape[2] // 16, generator=generator)


class StandInAudioVAE:
    """Its audio VAE: its sample rate and a latent of the right shape (40 latent frames a second)."""
    audio_sample_rate = 32000

    def encode(self, waveform):
        return torch.randn(1, 32, 2, waveform.shape[1] // 800, generator=torch.Generator().manual_seed(3))


def guided_and_kept_first_frame():
    """MiniMaxH3AddGuide anchors an image and a sound at frame 0 and a reference image rides along (as
    MiniMaxH3ReferenceToVideo gives it, whose text encoder a test cannot load): their rows go before the audio and
    always run; a noise mask keeps the video's first latent frame (its tokens at a timestep of their own: per-token
    modulation rows) and leaves the whole audio free."""
    latent = av_latent()
    guide = importlib.import_module("comfy_extras.nodes_minimax_h3").MiniMaxH3AddGuide
    sound = {"waveform": torch.randn(1, 2, 32000 // 4, generator=torch.Generator().manual_seed(2)),
             "sample_rate": 32000}
    picture = torch.rand(1, PIXELS["height"], PIXELS["width"], 3, generator=torch.Generator().manual_seed(4))
    conditioning = prompts()
    conditioning["positive"] = outputs(guide.execute(conditioning["positive"], latent, 0, vae=StandInVAE(),
                                                     audio_vae=StandInAudioVAE(), image=picture, audio=sound))[0]
    reference = {"kind": "image", "latent_h": 4, "latent_w": 4, "latent": StandInVAE().encode(picture[:, :64, :64])}
    conditioning["positive"] = node_helpers.conditioning_set_values(conditioning["positive"],
                                                                    {"minimax_refs": [reference]})
    video, audio = latent["samples"].unbind()
    video_mask = torch.ones_like(video)
    video_mask[:, :, 0] = 0.0
    latent = dict(latent, noise_mask=type(latent["samples"])((video_mask, torch.ones_like(audio))))
    return conditioning, latent


def test_a_keyframe_guide_and_a_kept_frame():
    """The keyframe's rows run every step; the kept frame's tokens carry their own modulation rows, gathered with them:
    every token through the sparse path equals the unpatched run, a third of them are exact and so is the audio; the
    RAS Sampler never computes the kept frame and keeps it."""
    model = tiny_h3(seed=6)
    conditioning, latent = guided_and_kept_first_frame()
    reference = sample(model, latent, 3.0, conditioning=conditioning)
    assert (reference[0] - sample(model, latent, 3.0)[0]).abs().max().item() > 1e-3, "the guide changes the video"
    policy = FixedPlanPolicy([None] + [torch.arange(TOKENS)[None]] * 3)
    patched, _ = apply_token_sparse(model, lambda run: policy, node="test")
    assert_parts_within(sample(patched, latent, 3.0, conditioning=conditioning), reference, TOL)
    by_stream, audio = dense_then_sparse(model, latent, random_active(1, TOKENS, TOKENS // 3, seed=2), 3.0,
                                         conditioning)
    assert_exact_on_active_tokens(by_stream, TOKENS, tol=TOL)
    assert (audio[1] - audio[0]).abs().max().item() <= TOL
    out, trace = ras_sample(model, latent_image=latent, **ras_args(steps=4, cfg=3.0, sample_ratio=0.4, reset_steps="",
                                                                    **conditioning))
    sparse = [s for s in trace.steps if not s.dense]
    assert sparse and not any(s.active[:, 0].any() for s in sparse), "the kept frame is never computed"
    video = out["samples"].unbind()[0]
    assert (video[:, :, 0] - reference[0][:, :, 0]).abs().max().item() <= TOL, "the frame is kept"


@pytest.mark.parametrize("cfg,guided", [(1.0, False), (3.0, True)])
def test_planned_cache_is_what_the_streams_hold(cfg, guided):
    """Per block, the joint attention's keys and values of the whole sequence: text, the keyframe's and the reference's
    rows, the audio and every video token, as the model lays it out (the plan counts the audio from the latent's
    parts)."""
    conditioning, latent = guided_and_kept_first_frame() if guided else (prompts(), av_latent())
    policy = FixedPlanPolicy([None, torch.arange(8)[None]])
    patched, slot = apply_token_sparse(tiny_h3(seed=0), lambda run: policy, node="test")
    sample(patched, latent, cfg, steps=2, conditioning=conditioning)
    run = slot.last_run
    # the keyframe: an image's latent frame and 10 frames of stereo sound; the reference: a 64 x 64 image
    conditions = HEIGHT * WIDTH + 2 * 10 + 2 * 2 if guided else 0
    streams = [7 + conditions] + ([5] if cfg > 1 else [])
    width = TINY_H3["num_attention_heads"] * TINY_H3["attention_head_dim"]
    expected = sum(TINY_H3["num_layers"] * (text + 2 * AUDIO_FRAMES + TOKENS) * width * 2 * 4 for text in streams)
    assert run.kv_planned_bytes == run.kv_peak_bytes == expected


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    av_sampling.sampler_node_end_to_end(tiny_h3(seed=9), av_latent(), prompts(), method, (FRAMES, HEIGHT, WIDTH), TOKENS)


def test_model_patch_nodes_under_ksampler():
    av_sampling.model_patch_nodes_under_ksampler(tiny_h3(seed=10), av_latent(), prompts(), TOL)


def test_a_batch_of_two_is_refused_before_sampling():
    """The model samples one video at a time: a batch of two is refused by the sampler nodes before sampling."""
    latent = av_latent()
    latent = dict(latent, samples=type(latent["samples"])([part.repeat(2, *[1] * (part.ndim - 1))
                                                           for part in latent["samples"].unbind()]))
    with pytest.raises(SDiTInputError, match="RAS Sampler: input 'latent_image'.*one video at a time"):
        ras_sample(tiny_h3(seed=0), latent_image=latent, **ras_args(steps=3, **prompts()))


class MiniMaxH3FunControlBlockPatch:
    """Stands in for newer ComfyUI's MiniMax H3 Fun ControlNet block patch (test_minimax_h3_fun_controlnet.py runs the
    real one where ComfyUI has it), which "Apply MiniMax H3 Fun ControlNet" puts on some blocks as a block replacement:
    what its tower computes over the whole packed sequence is added to the block's output by position (here a fixed
    row per position)."""

    def __call__(self, args, extra):
        out = extra["original_block"](args)
        rows, width = args["mod_segments"][-1][1], out["img"].shape[-1]       # the whole sequence's length
        position = torch.arange(rows, dtype=out["img"].dtype)[:, None]
        out["img"].add_(0.3 * torch.sin(0.37 * position + 0.11 * torch.arange(width, dtype=out["img"].dtype)))
        return out


def with_block_patch_stand_in(model):
    model = model.clone()
    model.set_model_patch_replace(MiniMaxH3FunControlBlockPatch(), "dit", "double_block", 1)
    return model


def test_the_fun_controlnets_block_patch_adds_to_every_token_by_position():
    """The block replacement gets every video token's row and its addition is kept for the running ones: every token
    active equals the model with it alone, a third of the tokens (and the whole audio) are exact."""
    model = tiny_h3(seed=0)
    controlled = with_block_patch_stand_in(model)
    reference = sample(controlled, av_latent(), 3.0)
    assert (reference[0] - sample(model, av_latent(), 3.0)[0]).abs().max().item() > 1e-3
    policy = FixedPlanPolicy([None] + [torch.arange(TOKENS)[None]] * 3)
    patched, _ = apply_token_sparse(controlled, lambda run: policy, node="test")
    assert_parts_within(sample(patched, av_latent(), 3.0), reference, TOL)
    by_stream, (dense, sparse) = dense_then_sparse(controlled, av_latent(), random_active(1, TOKENS, TOKENS // 3,
                                                                                          seed=3), 3.0)
    assert_exact_on_active_tokens(by_stream, TOKENS, tol=TOL)
    assert (sparse - dense).abs().max().item() <= TOL
