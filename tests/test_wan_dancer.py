"""WanDancer (`comfy.ldm.wan.model_wandancer.WanDancerModel`: a dance video to music from a start image, newer
ComfyUI's WanDancerVideo) on tiny random-weight instances of its real ComfyUI class (CPU, fp32): the exactness set of
test_video.py with the conditioning WanDancerVideo makes (through the node, with a stand-in VAE and music features as
WanDancerEncodeAudio hands them over): the start image by channels, CLIP-vision tokens, the music (eight tokens a
latent frame, added by an injector after some blocks) at 30 fps and at another rate (a head of its own); the memory
plan, both sampler nodes and both Model Patch nodes end to end; a reference image's latent (`ref_conv`) with music
refused. Skipped where the running ComfyUI has no WanDancer (0.3.75)."""
import importlib
import types

import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import (TINY_WAN, StandInWanVAE, assert_exact_on_active_tokens, build_tiny, ksample,
                          ras_model_patch, ras_sample, text_conditioning)
from test_memory_plan import sample_patched
from test_ras_sampler import ras_args
from test_video import (assert_within_scale, dense_then_sparse, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end)

if not hasattr(comfy.supported_models, "WAN22_WanDancer"):
    pytest.skip("this ComfyUI has no WanDancer", allow_module_level=True)
nodes_wandancer = importlib.import_module("comfy_extras.nodes_wandancer")
comfy_nodes = importlib.import_module("nodes")   # ComfyUI's nodes.py

FRAMES, HEIGHT, WIDTH = 5, 8, 12                  # an odd frame count, non-square frames (latent pixels)
FRAME_TOKENS = (HEIGHT // 2) * (WIDTH // 2)       # 24: three tokens to each of a frame's eight music tokens
TOKENS = FRAMES * FRAME_TOKENS
# Sampled runs compare to 4e-6 of the largest value (~30 float32 ulps): the injector runs on a video of zeros but
# for the running tokens, and its result for them is taken out again, which rounds otherwise.
assert_sampled_close = assert_within_scale(4e-6)
TINY_DANCER = dict(TINY_WAN, model_type="wandancer", in_dim=36, num_layers=3, audio_inject_layers=[0, 2])


def tiny_dancer(seed, reference=False):
    return build_tiny(comfy.supported_models.WAN22_WanDancer,
                      dict(TINY_DANCER, in_dim_ref_conv=16) if reference else TINY_DANCER, seed)


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def dancer_prompts(music=True, fps=30.0, **more):
    """Prompts of different lengths (two streams at cfg > 1) through WanDancerVideo: a start image, its CLIP-vision
    tokens and the music's features (35 a frame, as WanDancerEncodeAudio computes them, at `fps`)."""
    length = (FRAMES - 1) * 4 + 1
    vision = types.SimpleNamespace(penultimate_hidden_states=randn(1, 257, 1280, seed=1))
    audio = {"audio_feature": randn(1, 3 * length, 35, seed=2), "fps": fps, "audio_inject_scale": 1.0}
    out = nodes_wandancer.WanDancerVideo.execute(
        positive=text_conditioning(1, 7, **more), negative=text_conditioning(2, 5, **more), vae=StandInWanVAE(),
        width=WIDTH * 8, height=HEIGHT * 8, length=length, start_image=torch.rand(1, HEIGHT * 8, WIDTH * 8, 3),
        clip_vision_output=vision, audio_encoder_output=audio if music else None)
    positive, negative = tuple(out.result)[:2]
    return dict(positive=positive, negative=negative)


PROMPTS = {"music at 30 fps": lambda: dancer_prompts(), "music at 15 fps": lambda: dancer_prompts(fps=15.0),
           "no music": lambda: dancer_prompts(music=False)}


def latent(batch=1):
    return torch.zeros(batch, 16, FRAMES, HEIGHT, WIDTH)


def test_wandancer_is_its_own_adapter():
    assert adapter_for(tiny_dancer(seed=0), "test").names == ("WanDancer",)


@pytest.mark.parametrize("fps", [30.0, 15.0])
def test_the_music_changes_every_frame(fps):
    """The music matters to this tiny model in every frame (so the tests below fail where the injector adds another
    token's music or none), and another frame rate takes the other head."""
    model = tiny_dancer(seed=4)
    silent = ksample(model, latent(), seed=5, steps=3, **dancer_prompts(music=False))
    music = ksample(model, latent(), seed=5, steps=3, **dancer_prompts(fps=fps))
    assert (silent - music).abs().amax(dim=(0, 1, 3, 4)).min().item() > 1e-3
    if fps != 30.0:
        at_30 = ksample(model, latent(), seed=5, steps=3, **dancer_prompts())
        assert (music - at_30).abs().max().item() > 1e-3


@pytest.mark.parametrize("prompts", sorted(PROMPTS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(prompts, batch, cfg):
    run = every_token_active(tiny_dancer(seed=3), latent(batch), cfg, PROMPTS[prompts](), TOKENS, assert_sampled_close)
    assert run.grid == (FRAMES, HEIGHT // 2, WIDTH // 2)


@pytest.mark.parametrize("prompts", sorted(PROMPTS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(prompts, batch, cfg):
    exact_on_a_third_of_the_tokens(tiny_dancer(seed=4), latent(batch), cfg, PROMPTS[prompts](), TOKENS)


def test_a_frame_with_no_running_token_and_one_with_all():
    active = torch.cat([torch.arange(FRAME_TOKENS, 2 * FRAME_TOKENS),
                        torch.arange(3 * FRAME_TOKENS + 2, 3 * FRAME_TOKENS + 5)])
    by_stream = dense_then_sparse(tiny_dancer(seed=6), latent(), active[None], 3.0, dancer_prompts())
    assert_exact_on_active_tokens(by_stream, TOKENS)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Wan's cache over the video's tokens: the music's injector needs none."""
    run = sample_patched(tiny_dancer(seed=0), latent(2), cfg, dancer_prompts())
    rows = 2 if cfg == 1.0 else 4                  # batch 2; at cfg 3 the negative prompt's rows too
    assert run.kv_planned_bytes == run.kv_peak_bytes == 3 * rows * TOKENS * TINY_WAN["dim"] * 2 * 4


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_dancer(seed=7), {"samples": latent(2)}, dancer_prompts(), method,
                                             TOKENS)
    assert trace.grid == (FRAMES, HEIGHT // 2, WIDTH // 2)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_dancer(seed=8), {"samples": latent(2)}, dancer_prompts(fps=15.0),
                                     assert_sampled_close)


def test_a_reference_image_with_music_is_refused():
    """With music the model's injector takes the reference's tokens for the video's first ones: the sampler nodes
    name the input before anything is sampled; under KSampler a Model Patch node's first forward stops."""
    prompts = dancer_prompts(reference_latents=[randn(1, 16, 1, HEIGHT, WIDTH, seed=3)])
    model = tiny_dancer(seed=11, reference=True)
    with pytest.raises(SDiTInputError, match=r"RAS Sampler: input 'positive': WanDancer with a reference image"):
        ras_sample(model, latent_image={"samples": latent()}, **dict(ras_args(steps=2), **prompts))
    patched = ras_model_patch(model, 0.5, 1, "", 0.1, "std", False)[0]
    with pytest.raises(NotImplementedError, match="WanDancer with a reference image"):
        comfy_nodes.KSampler().sample(patched, 4, 2, 1.0, "euler", "simple", prompts["positive"], prompts["negative"],
                                      {"samples": latent()})
    # a model without ref_conv ignores the reference: sampled
    out, _ = ras_sample(tiny_dancer(seed=11), latent_image={"samples": latent()}, **dict(ras_args(steps=2), **prompts))
    assert torch.isfinite(out["samples"]).all()
