"""Wan HuMo (`comfy.ldm.wan.model.HumoWanModel`: human-centric video from a prompt, a reference image and audio,
ComfyUI's WanHuMoImageToVideo) on tiny random-weight instances of its real ComfyUI class (CPU, fp32), the 1.7B
layout (the reference image's latent as tokens after the video's) and the 17B one (also a concat image): the
exactness set of test_video.py with the audio (whose 16 tokens per latent frame every token of that frame attends
to, in every block) and the reference frame, as WanHuMoImageToVideo hands them over (silent audio and a blank
reference for the negative prompt), the memory plan, both sampler nodes and both Model Patch nodes end to end,
Skip Layer Guidance skipping the first block."""
import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import TINY_WAN, assert_exact_on_active_tokens, build_tiny, ksample, text_conditioning
from test_memory_plan import sample_patched
from test_video import (assert_within_scale, dense_then_sparse, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end, skip_layer_guidance_skipping_block_0)

FRAMES, HEIGHT, WIDTH = 5, 8, 12                  # an odd frame count, non-square frames
FRAME_TOKENS = (HEIGHT // 2) * (WIDTH // 2)
TOKENS = FRAMES * FRAME_TOKENS
# One forward is exact on the active tokens to 1e-5 (assert_exact_on_active_tokens). Sampled runs compare to 4e-6
# of the largest value (~30 float32 ulps): the audio attention on the running tokens is one attention call over
# every frame's audio tokens with the other frames masked out, where the model's is one call per frame.
assert_sampled_close = assert_within_scale(4e-6)
LAYOUTS = {"1.7B": dict(TINY_WAN, model_type="humo", num_layers=3),
           "17B": dict(TINY_WAN, model_type="humo", num_layers=3, in_dim=36)}


def tiny_humo(seed, layout="1.7B"):
    return build_tiny(comfy.supported_models.WAN21_HuMo, LAYOUTS[layout], seed)


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def humo_prompts(audio=True, reference=True, frames=FRAMES):
    """Prompts of different lengths (two streams at cfg > 1) with what WanHuMoImageToVideo adds: a reference
    image's latent (blank for the negative prompt) and the audio's features per latent frame (silent for the
    negative prompt)."""
    positive, negative = {}, {}
    if reference:
        image = randn(1, 16, 1, HEIGHT, WIDTH, seed=1)
        positive["reference_latents"], negative["reference_latents"] = [image], [torch.zeros_like(image)]
    if audio:
        sound = randn(1, frames, 8, 5, 1280, seed=2)
        positive["audio_embed"], negative["audio_embed"] = sound, torch.zeros_like(sound)
    return dict(positive=text_conditioning(1, 7, **positive), negative=text_conditioning(2, 5, **negative))


PROMPTS = {"audio and reference": lambda: humo_prompts(), "audio only": lambda: humo_prompts(reference=False),
           "reference only": lambda: humo_prompts(audio=False)}
WITH_REFERENCE = ("audio and reference", "reference only")


def test_humo_is_its_own_adapter():
    assert adapter_for(tiny_humo(seed=0), "test").names == ("Wan HuMo",)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_audio_changes_every_frame(layout):
    """The audio matters to this tiny model in every frame, so the exactness tests below fail where a sparse audio
    attention attends to another frame's audio or to none."""
    latent = torch.zeros(1, 16, FRAMES, HEIGHT, WIDTH)
    silent, sound = (ksample(tiny_humo(seed=4, layout=layout), latent, seed=5, steps=3, **humo_prompts(audio=a))
                     for a in (False, True))
    assert (silent - sound).abs().amax(dim=(0, 1, 3, 4)).min().item() > 1e-2


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("prompts", sorted(PROMPTS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(layout, prompts, batch, cfg):
    every_token_active(tiny_humo(seed=3, layout=layout), torch.zeros(batch, 16, FRAMES, HEIGHT, WIDTH), cfg,
                       PROMPTS[prompts](), TOKENS, assert_sampled_close)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("prompts", sorted(PROMPTS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(layout, prompts, batch, cfg):
    """A third of the tokens, in random order and different per image: frames run unequal numbers of tokens
    (and the reference frame, after the video's, all of its own)."""
    exact_on_a_third_of_the_tokens(tiny_humo(seed=4, layout=layout), torch.zeros(batch, 16, FRAMES, HEIGHT, WIDTH), cfg,
                                   PROMPTS[prompts](), TOKENS, extra=FRAME_TOKENS if prompts in WITH_REFERENCE else 0)


def test_a_frame_with_no_running_token_and_one_with_all():
    active = torch.cat([torch.arange(FRAME_TOKENS, 2 * FRAME_TOKENS),
                        torch.arange(3 * FRAME_TOKENS + 2, 3 * FRAME_TOKENS + 5)])
    by_stream = dense_then_sparse(tiny_humo(seed=6), torch.zeros(1, 16, FRAMES, HEIGHT, WIDTH), active[None], 3.0,
                                  humo_prompts())
    assert_exact_on_active_tokens(by_stream, TOKENS, extra=FRAME_TOKENS)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Wan's cache over the video's and the reference frame's tokens: the audio attention needs none."""
    run = sample_patched(tiny_humo(seed=0), torch.zeros(2, 16, FRAMES, HEIGHT, WIDTH), cfg, humo_prompts())
    rows = 2 if cfg == 1.0 else 4                  # batch 2; at cfg 3 the negative prompt's rows too
    assert run.kv_planned_bytes == run.kv_peak_bytes == 3 * rows * (TOKENS + FRAME_TOKENS) * TINY_WAN["dim"] * 2 * 4


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    latent = {"samples": torch.zeros(2, 16, FRAMES, HEIGHT, WIDTH)}
    _, _, trace, _ = sampler_node_end_to_end(tiny_humo(seed=7), latent, humo_prompts(), method, TOKENS)
    assert trace.grid == (FRAMES, HEIGHT // 2, WIDTH // 2)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_humo(seed=8), {"samples": torch.zeros(2, 16, FRAMES, HEIGHT, WIDTH)},
                                     humo_prompts(), assert_sampled_close)


def test_skip_layer_guidance_skipping_the_first_block():
    """In Skip Layer Guidance's perturbed network, which skips block 0, the first audio attention runs before the
    tokens are gathered: the model's own, on the whole video."""
    skip_layer_guidance_skipping_block_0(tiny_humo(seed=9), torch.zeros(1, 16, FRAMES, HEIGHT, WIDTH), humo_prompts(),
                                         TOKENS, assert_sampled_close)
