"""Wan 2.2 S2V (`comfy.ldm.wan.model.WanModel_S2V`: speech-to-video from a reference image, audio, a pose video and
the previous chunk's motion frames, ComfyUI's WanSoundImageToVideo) on a tiny random-weight instance of its real
ComfyUI class (CPU, fp32): the exactness set of test_video.py with everything WanSoundImageToVideo hands over
(the negative prompt's silent audio), the memory plan (the reference's and the packed motion frames' tokens),
both sampler nodes and both Model Patch nodes end to end. Where this ComfyUI's S2V keeps its attention from the
K/V cache (0.3.75: its blocks get no transformer_options), the first sparse step stops with a clear error."""
import inspect

import pytest
import torch

import comfy.ldm.wan.model
import comfy.supported_models

from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import TINY_WAN, build_tiny, ras_sample, text_conditioning
from test_memory_plan import sample_patched
from test_ras_sampler import ras_args
from test_video import (assert_within_scale, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end)

FRAMES, HEIGHT, WIDTH = 5, 8, 12                  # an odd frame count, non-square frames
FRAME_TOKENS = (HEIGHT // 2) * (WIDTH // 2)
TOKENS = FRAMES * FRAME_TOKENS
# the reference image's frame, and the motion frames packed at three scales: 24 + 6 + 4 tokens
EXTRA = FRAME_TOKENS + (HEIGHT // 2) * (WIDTH // 2) + (HEIGHT // 4) * (WIDTH // 4) + 4 * (HEIGHT // 8) * (WIDTH // 8)
# Sampled runs with every token active compare to 4e-6 of their scale, as for Animate and HuMo: the audio
# injector runs on a video of zeros but for the running tokens, whose rows of its matrix products round otherwise.
assert_sampled_close = assert_within_scale(4e-6)
# 5 blocks: the audio injector after blocks 0 and 4
TINY_S2V = dict(TINY_WAN, model_type="s2v", num_layers=5)
HANDS_OPTIONS_TO_BLOCKS = "transformer_options=transformer_options" in inspect.getsource(
    comfy.ldm.wan.model.WanModel_S2V.forward_orig)
needs_options = pytest.mark.skipif(not HANDS_OPTIONS_TO_BLOCKS, reason="this ComfyUI's S2V blocks get no "
                                   "transformer_options (the error is tested instead)")


def tiny_s2v(seed):
    return build_tiny(comfy.supported_models.WAN22_S2V, TINY_S2V, seed)


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def s2v_prompts(audio=True, reference=True, motion=True):
    """Prompts of different lengths (two streams at cfg > 1) with what WanSoundImageToVideo adds: the audio's
    features (25 layers, 4 per latent frame; silent for the negative prompt), the reference image's latent, the
    previous chunk's last 19 latent frames and the pose video's latent."""
    values = {"control_video": randn(1, 16, FRAMES, HEIGHT, WIDTH, seed=1)}
    if reference:
        values["reference_latents"] = [randn(1, 16, 1, HEIGHT, WIDTH, seed=2)]
    if motion:
        values["reference_motion"] = randn(1, 16, 19, HEIGHT, WIDTH, seed=3)
    positive, negative = dict(values), dict(values)
    if audio:
        sound = randn(1, 25, 1024, FRAMES * 4, seed=4)
        positive["audio_embed"], negative["audio_embed"] = sound, sound * 0.0
    return dict(positive=text_conditioning(1, 7, **positive), negative=text_conditioning(2, 5, **negative))


PROMPTS = {"everything": (lambda: s2v_prompts(), EXTRA), "audio only": (lambda: s2v_prompts(reference=False, motion=False), 0)}


def test_s2v_is_its_own_adapter():
    assert adapter_for(tiny_s2v(seed=0), "test").names == ("Wan S2V",)


@pytest.mark.skipif(HANDS_OPTIONS_TO_BLOCKS, reason="this ComfyUI's S2V hands its blocks transformer_options")
def test_attention_kept_from_the_cache_stops_the_first_sparse_step():
    with pytest.raises(SDiTInputError, match=r"RAS Sampler: input 'model': on a token-sparse step the model's attention "
                                             r"went past .*does not hand its attention ComfyUI's transformer_options"):
        ras_sample(tiny_s2v(seed=1), latent_image={"samples": torch.zeros(1, 16, FRAMES, HEIGHT, WIDTH)},
                   **dict(ras_args(sample_ratio=0.3, steps=3), **s2v_prompts()))


@needs_options
def test_the_audio_changes_the_output():
    from sdit_testkit import ksample
    latent = torch.zeros(1, 16, FRAMES, HEIGHT, WIDTH)
    silent, sound = (ksample(tiny_s2v(seed=4), latent, seed=5, steps=3, **s2v_prompts(audio=a)) for a in (False, True))
    assert (silent - sound).abs().amax(dim=(0, 1, 3, 4)).min().item() > 1e-2


@needs_options
@pytest.mark.parametrize("prompts", sorted(PROMPTS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(prompts, batch, cfg):
    every_token_active(tiny_s2v(seed=3), torch.zeros(batch, 16, FRAMES, HEIGHT, WIDTH), cfg, PROMPTS[prompts][0](),
                       TOKENS, assert_sampled_close)


@needs_options
@pytest.mark.parametrize("prompts", sorted(PROMPTS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(prompts, batch, cfg):
    make, extra = PROMPTS[prompts]
    exact_on_a_third_of_the_tokens(tiny_s2v(seed=4), torch.zeros(batch, 16, FRAMES, HEIGHT, WIDTH), cfg, make(), TOKENS,
                                   extra=extra)


@needs_options
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Wan's cache over the video's, the reference's and the packed motion frames' tokens."""
    run = sample_patched(tiny_s2v(seed=0), torch.zeros(2, 16, FRAMES, HEIGHT, WIDTH), cfg, s2v_prompts())
    rows = 2 if cfg == 1.0 else 4                  # batch 2; at cfg 3 the negative prompt's rows too
    assert run.kv_planned_bytes == run.kv_peak_bytes == 5 * rows * (TOKENS + EXTRA) * TINY_WAN["dim"] * 2 * 4


@needs_options
@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    latent = {"samples": torch.zeros(2, 16, FRAMES, HEIGHT, WIDTH)}
    _, _, trace, _ = sampler_node_end_to_end(tiny_s2v(seed=7), latent, s2v_prompts(), method, TOKENS)
    assert trace.grid == (FRAMES, HEIGHT // 2, WIDTH // 2)


@needs_options
def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_s2v(seed=8), {"samples": torch.zeros(2, 16, FRAMES, HEIGHT, WIDTH)},
                                     s2v_prompts(), assert_sampled_close)
