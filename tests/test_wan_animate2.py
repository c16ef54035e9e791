"""Wan Animate 2 (`comfy.ldm.wan.model_animate2.WanAnimate2Model`, newer ComfyUI: a character in a reference image
driven by a pose video, WanAnimate2ToVideo) on a tiny random-weight instance of its real ComfyUI class (CPU, fp32):
the exactness set of test_video.py with the pose branch (a sequence of its own beside the video's, whose keys and
values each frame's queries attend to beside the whole video's), the pose window, the reference and pose strengths,
ComfyUI's WanAnimate2ToVideo and WanAnimate2Cache nodes, the memory plan, both sampler nodes and both Model Patch
nodes end to end, Skip Layer Guidance skipping the first block. Skipped where ComfyUI has no Wan Animate 2."""
import importlib

import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import (TINY_WAN, StandInWanVAE, assert_exact_on_active_tokens, build_tiny, ksample,
                          text_conditioning)
from test_memory_plan import sample_patched
from test_video import (assert_within_scale, dense_then_sparse, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end, skip_layer_guidance_skipping_block_0)

pytestmark = pytest.mark.skipif(not hasattr(comfy.supported_models, "WAN_Animate2"),
                                reason="this ComfyUI has no Wan Animate 2")

# Sampled runs compare to 4e-6 of the largest value (~30 float32 ulps): on the running tokens each frame's attention
# is one call over that frame's running queries, where the model's covers the frame's every query.
assert_sampled_close = assert_within_scale(4e-6)
FRAMES, HEIGHT, WIDTH = 5, 8, 12           # the reference slot and 4 video frames (odd), non-square
FRAME_TOKENS = (HEIGHT // 2) * (WIDTH // 2)
TOKENS = FRAMES * FRAME_TOKENS
TINY_ANIMATE2 = dict(TINY_WAN, model_type="animate2", in_dim=36, num_layers=3)


def tiny_animate2(seed):
    return build_tiny(comfy.supported_models.WAN_Animate2, TINY_ANIMATE2, seed)


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def animate2_prompts(pose=True, **values):
    """Prompts of different lengths (two streams at cfg > 1) with what WanAnimate2ToVideo adds: the reference image in
    the concatenated channels (its frame known, the rest not), and the pose video's latent (one frame fewer: the
    reference slot has none), on both prompts."""
    concat = randn(1, 16, FRAMES, HEIGHT, WIDTH, seed=3)
    mask = torch.ones(1, 1, FRAMES, HEIGHT, WIDTH)
    mask[:, :, 0] = 0.0
    values = dict(values, concat_latent_image=concat, concat_mask=mask)
    if pose:
        values["pose_video_latent"] = randn(1, 16, FRAMES - 1, HEIGHT, WIDTH, seed=1)
    return dict(positive=text_conditioning(1, 7, **values), negative=text_conditioning(2, 5, **values))


PROMPTS = {"pose": lambda: animate2_prompts(),
           "pose windowed out": lambda: animate2_prompts(pose=False),
           "strengths": lambda: animate2_prompts(pose_strength=1.7, reference_strength=0.5)}


def video(batch):
    return torch.zeros(batch, 16, FRAMES, HEIGHT, WIDTH)


def test_animate2_is_its_own_adapter():
    assert adapter_for(tiny_animate2(seed=0), "test").names == ("Wan Animate 2",)


def test_the_pose_and_the_strengths_change_every_frame():
    """The pose video and both strengths matter to this tiny model in every frame (the reference strength also in
    the reference slot's), so the exactness tests below fail where a sparse frame attends to another pose frame, to
    none, or scales other values."""
    model = tiny_animate2(seed=4)
    outputs = {name: ksample(model, video(1), seed=5, steps=3, **PROMPTS[name]()) for name in PROMPTS}
    for a, b in (("pose", "pose windowed out"), ("pose", "strengths")):
        assert (outputs[a] - outputs[b]).abs().amax(dim=(0, 1, 3, 4)).min().item() > 1e-3, (a, b)


@pytest.mark.parametrize("prompts", sorted(PROMPTS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(prompts, batch, cfg):
    every_token_active(tiny_animate2(seed=3), video(batch), cfg, PROMPTS[prompts](), TOKENS, assert_sampled_close)


@pytest.mark.parametrize("prompts", sorted(PROMPTS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(prompts, batch, cfg):
    """A third of the tokens, in random order and different per image: frames run unequal numbers of tokens."""
    exact_on_a_third_of_the_tokens(tiny_animate2(seed=4), video(batch), cfg, PROMPTS[prompts](), TOKENS)


def test_frames_with_no_running_token_with_all_and_unequal_between_rows():
    """Row 0 runs none of frame 0 and all of frame 1, row 1 the other way round; both a few of frame 3: each frame's
    queries are padded to the row with most."""
    frame = FRAME_TOKENS
    active = torch.stack([torch.cat([torch.arange(frame, 2 * frame), torch.arange(3 * frame + 2, 3 * frame + 5)]),
                          torch.cat([torch.arange(frame), torch.arange(3 * frame + 7, 3 * frame + 10)])])
    by_stream = dense_then_sparse(tiny_animate2(seed=6), video(2), active, 3.0, animate2_prompts())
    assert_exact_on_active_tokens(by_stream, TOKENS)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Wan's cache, the video's tokens alone: the pose branch runs whole and keeps none."""
    run = sample_patched(tiny_animate2(seed=0), video(2), cfg, animate2_prompts())
    rows = 2 if cfg == 1.0 else 4                  # batch 2; at cfg 3 the negative prompt's rows too
    assert run.kv_planned_bytes == run.kv_peak_bytes == 3 * rows * TOKENS * TINY_ANIMATE2["dim"] * 2 * 4


def comfyui_nodes_prompts(pose_start_percent=0.0):
    """WanAnimate2ToVideo's conditioning (a stand-in VAE): the reference image, a pose video, both strengths, the
    pose influence from `pose_start_percent` on."""
    nodes_wan = importlib.import_module("comfy_extras.nodes_wan")
    pixels = (randn(17, 8 * HEIGHT, 8 * WIDTH, 3, seed=7).clamp(-1, 1) + 1) / 2
    positive, negative, latent, trim, _, _ = nodes_wan.WanAnimate2ToVideo.execute(
        text_conditioning(1, 7), text_conditioning(2, 5), StandInWanVAE(), 8 * WIDTH, 8 * HEIGHT, 13, 1, 0,
        reference_image=pixels[:1], pose_video=pixels, pose_strength=1.3, reference_image_strength=0.8,
        pose_start_percent=pose_start_percent)
    assert trim == 1 and latent["samples"].shape == (1, 16, FRAMES, HEIGHT, WIDTH)
    return dict(positive=positive, negative=negative)


def test_comfyui_nodes_every_token_and_a_third_exact():
    """Through ComfyUI's WanAnimate2ToVideo every token through the sparse path equals unpatched sampling, and a
    third of them is exact."""
    prompts = comfyui_nodes_prompts()
    every_token_active(tiny_animate2(seed=8), video(1), 3.0, prompts, TOKENS, assert_sampled_close)
    exact_on_a_third_of_the_tokens(tiny_animate2(seed=8), video(1), 3.0, prompts, TOKENS)


def test_the_pose_window_hands_over_with_a_dense_step():
    """WanAnimate2ToVideo's pose window from 0.4: the first steps run without the pose branch (ComfyUI's complement
    conditioning), then with it, another network (its conditions differ), whose caches start with a dense step.
    Every token through the sparse path equals unpatched sampling."""
    prompts = comfyui_nodes_prompts(pose_start_percent=0.4)
    run = every_token_active(tiny_animate2(seed=8), video(1), 3.0, prompts, TOKENS, assert_sampled_close,
                             dense=[True, False, True, False])
    assert len({call.stream for e in run.evals for call in e.calls}) == 4     # 2 prompts, without and with the pose


def test_pose_branch_cache_node():
    """ComfyUI's WanAnimate2Cache keeps the pose branch's block inputs between steps (the K/V come from them): every
    token through the sparse path equals the cached model's own sampling, and a third of them is exact on a step
    that reads the cache."""
    nodes_wan = importlib.import_module("comfy_extras.nodes_wan")
    model = nodes_wan.WanAnimate2Cache.execute(tiny_animate2(seed=9), "cpu")[0]
    prompts = comfyui_nodes_prompts()
    reference = ksample(model, video(1), seed=5, steps=4, cfg=3.0, **prompts)
    assert (reference - ksample(tiny_animate2(seed=9), video(1), seed=5, steps=4, cfg=3.0, **prompts)).abs().max() \
        <= 4e-6 * reference.abs().max(), "the cache is exact: what follows compares with it"
    every_token_active(model, video(1), 3.0, prompts, TOKENS, assert_sampled_close)
    exact_on_a_third_of_the_tokens(model, video(1), 3.0, prompts, TOKENS)


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    latent = {"samples": video(2)}
    _, _, trace, _ = sampler_node_end_to_end(tiny_animate2(seed=7), latent, animate2_prompts(), method, TOKENS)
    assert trace.grid == (FRAMES, HEIGHT // 2, WIDTH // 2)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_animate2(seed=8), {"samples": video(2)}, animate2_prompts(),
                                     assert_sampled_close)


def test_skip_layer_guidance_skipping_the_first_block():
    """Skip Layer Guidance replaces block 0 (the model then runs the block through `forward_gen` inside the
    replacement, or not at all): the perturbed network gathers the tokens at block 1, after a pose block ran."""
    skip_layer_guidance_skipping_block_0(tiny_animate2(seed=9), video(1), animate2_prompts(), TOKENS,
                                         assert_sampled_close)
