"""Wan VACE (`comfy.ldm.wan.model.VaceWanModel`: Wan guided by control videos, ComfyUI's WanVaceToVideo) on a
tiny random-weight instance of its real ComfyUI class (CPU, fp32): the exactness set of test_video.py with one
and two control videos (each its own stack of VACE blocks, whose hints are added to the video's tokens), a
reference image's extra leading frame, the memory plan (a K/V cache per VACE block and control video), both
sampler nodes and both Model Patch nodes end to end, context windows (where ComfyUI cuts the control videos
per window)."""

import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.families import adapter_for
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from sdit_testkit import TINY_WAN, assert_exact_on_active_tokens, build_tiny, ksample, random_active, text_conditioning
from test_memory_plan import sample_patched
from test_video import (assert_within, dense_then_sparse, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end, skip_layer_guidance_skipping_block_0)

TOL = 1e-5
FRAMES, HEIGHT, WIDTH = 5, 8, 12                  # an odd frame count, non-square frames
TOKENS = FRAMES * (HEIGHT // 2) * (WIDTH // 2)
# 4 Wan blocks, a VACE block after blocks 0 and 2; a control video is 16 + 16 latent channels (the frames to
# keep and to repaint) and a 64-channel mask (an 8x8 pixel mask per latent pixel)
TINY_VACE = dict(TINY_WAN, model_type="vace", num_layers=4, vace_layers=2, vace_in_dim=96)


def tiny_vace(seed):
    return build_tiny(comfy.supported_models.WAN21_Vace, TINY_VACE, seed)


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def control(seed, frames=FRAMES):
    """One control video as WanVaceToVideo hands it over: its latent and its mask."""
    mask = (randn(1, 64, frames, HEIGHT, WIDTH, seed=seed + 1) > 0).float()
    return randn(1, 32, frames, HEIGHT, WIDTH, seed=seed), mask


def vace_prompts(controls=1, strengths=None, frames=FRAMES):
    """Prompts of different lengths (two streams at cfg > 1), each with `controls` control videos (as chained
    WanVaceToVideo nodes append them)."""
    videos = [control(10 * i, frames) for i in range(controls)]
    values = dict(vace_frames=[v for v, _ in videos], vace_mask=[m for _, m in videos],
                  vace_strength=list(strengths or [1.0] * controls))
    return dict(positive=text_conditioning(1, 7, **values), negative=text_conditioning(2, 5, **values))


PROMPTS = {"one control video": lambda: vace_prompts(1),
           "two control videos": lambda: vace_prompts(2, strengths=[0.7, 1.3]),
           "no control video": lambda: dict(positive=text_conditioning(1, 7), negative=text_conditioning(2, 5))}


def test_vace_is_its_own_adapter():
    model = tiny_vace(seed=0)
    assert adapter_for(model, "test").names == ("Wan VACE",)
    assert len(model.model.diffusion_model.vace_blocks) == 2


@pytest.mark.parametrize("prompts", sorted(PROMPTS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(prompts, batch, cfg):
    every_token_active(tiny_vace(seed=3), torch.zeros(batch, 16, FRAMES, HEIGHT, WIDTH), cfg, PROMPTS[prompts](), TOKENS,
                       assert_within(TOL))


@pytest.mark.parametrize("prompts", sorted(PROMPTS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(prompts, batch, cfg):
    exact_on_a_third_of_the_tokens(tiny_vace(seed=4), torch.zeros(batch, 16, FRAMES, HEIGHT, WIDTH), cfg,
                                   PROMPTS[prompts](), TOKENS)


def test_the_hints_change_the_output():
    """The control videos matter to this tiny model (its VACE blocks' hints are not zero), so the exactness
    tests above fail where a sparse forward skips them or adds them to other tokens."""
    latent = torch.zeros(1, 16, FRAMES, HEIGHT, WIDTH)
    hints_off, hints_on = (ksample(tiny_vace(seed=4), latent, seed=5, steps=3, **vace_prompts(2, strengths=s))
                           for s in ([0.0, 0.0], [0.7, 1.3]))
    assert (hints_off - hints_on).abs().max().item() > 1e-2


@pytest.mark.parametrize("prompts", ["one control video", "two control videos"])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(prompts, cfg):
    """A K/V cache per VACE block and control video, beside Wan's blocks'."""
    run = sample_patched(tiny_vace(seed=0), torch.zeros(2, 16, FRAMES, HEIGHT, WIDTH), cfg, PROMPTS[prompts]())
    assert run.kv_planned_bytes == run.kv_peak_bytes > 0
    wan_blocks, vace_blocks = 4, 2 * (2 if prompts == "two control videos" else 1)
    rows = 2 if cfg == 1.0 else 4                  # batch 2; at cfg 3 the negative prompt's rows too
    assert run.kv_peak_bytes == (wan_blocks + vace_blocks) * rows * TOKENS * TINY_VACE["dim"] * 2 * 4


def test_a_reference_image_frame_before_the_video_samples():
    """WanVaceToVideo with a reference image puts its latent before the video's frames (in the latent and in
    every control video): one more frame of tokens, sampled like the others and trimmed afterwards."""
    frames = FRAMES + 1
    active = random_active(2, frames * (HEIGHT // 2) * (WIDTH // 2), TOKENS // 3, seed=2)
    by_stream = dense_then_sparse(tiny_vace(seed=5), torch.zeros(2, 16, frames, HEIGHT, WIDTH), active, 3.0,
                                  vace_prompts(1, frames=frames))
    assert_exact_on_active_tokens(by_stream, frames * (HEIGHT // 2) * (WIDTH // 2))


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    latent = {"samples": torch.zeros(2, 16, FRAMES, HEIGHT, WIDTH)}
    _, _, trace, _ = sampler_node_end_to_end(tiny_vace(seed=7), latent, vace_prompts(2, strengths=[0.7, 1.3]), method,
                                             TOKENS)
    assert trace.grid == (FRAMES, HEIGHT // 2, WIDTH // 2)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_vace(seed=8), {"samples": torch.zeros(2, 16, FRAMES, HEIGHT, WIDTH)},
                                     vace_prompts(2, strengths=[0.7, 1.3]), assert_within(TOL))


def test_skip_layer_guidance_skipping_the_first_block():
    """In Skip Layer Guidance's perturbed network, which skips Wan's block 0, the first VACE block runs before the
    video's tokens are gathered (on the whole video); the next one gathers the control videos' tokens."""
    skip_layer_guidance_skipping_block_0(tiny_vace(seed=9), torch.zeros(1, 16, FRAMES, HEIGHT, WIDTH),
                                         vace_prompts(2, strengths=[0.7, 1.3]), TOKENS, assert_within(TOL))


def windowed(seed):
    """Tiny VACE in ComfyUI's context windows of 3 frames over 7, where the handler cuts each window's frames out
    of the control videos too (newer ComfyUI; older ones hand every window the whole control video)."""
    import inspect
    import comfy.context_windows
    from test_video_windows import with_windows
    if "vace_context" not in inspect.getsource(comfy.context_windows):
        pytest.skip("this ComfyUI's context windows do not cut the control videos")
    return with_windows(tiny_vace(seed))


WINDOWED_FRAMES = 7


def test_every_token_active_in_windows_equals_plain_windowed_sampling():
    model = windowed(seed=3)
    latent = torch.zeros(1, 16, WINDOWED_FRAMES, HEIGHT, WIDTH)
    prompts = vace_prompts(2, strengths=[0.7, 1.3], frames=WINDOWED_FRAMES)
    reference = ksample(model, latent, seed=5, steps=4, cfg=3.0, **prompts)
    tokens = WINDOWED_FRAMES * (HEIGHT // 2) * (WIDTH // 2)
    policy = FixedPlanPolicy([None] + [torch.arange(tokens)[None]] * 3)
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    assert (ksample(patched, latent, seed=5, steps=4, cfg=3.0, **prompts) - reference).abs().max().item() <= TOL
    run = slot.last_run
    assert len({c.stream[-1] for e in run.evals for c in e.calls}) >= 3
    assert all(not c.dense for e in run.evals[1:] for c in e.calls)          # every window ran sparse
    assert run.kv_planned_bytes == run.kv_peak_bytes                         # per window, VACE blocks included


def test_a_sparse_window_forward_matches_the_dense_one_on_the_tokens_it_ran():
    from comfyui_sdit.sdit_core.frame_windows import window_tokens
    from comfyui_sdit.sdit_core.tokens import index_to_mask
    frame_tokens = (HEIGHT // 2) * (WIDTH // 2)
    tokens = WINDOWED_FRAMES * frame_tokens
    active = random_active(1, tokens, tokens // 3, seed=1)
    by_stream = dense_then_sparse(windowed(seed=4), torch.zeros(1, 16, WINDOWED_FRAMES, HEIGHT, WIDTH), active, 3.0,
                                  vace_prompts(1, frames=WINDOWED_FRAMES))
    assert len(by_stream) >= 3
    for stream, ((dense, _), (sparse, computed)) in by_stream.items():
        planned = index_to_mask(active, tokens)[:, window_tokens(stream[-1], frame_tokens)]
        ran = index_to_mask(computed, planned.shape[1])
        assert bool(ran[planned.expand_as(ran)].all())
        assert (sparse - dense).abs().amax(dim=-1)[ran].max().item() <= TOL
        assert torch.equal(sparse[~ran], dense[~ran])
