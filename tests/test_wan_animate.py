"""Wan 2.2 Animate (`comfy.ldm.wan.model_animate.AnimateWanModel`: a character driven by a pose video and a face
video, ComfyUI's WanAnimateToVideo) on a tiny random-weight instance of its real ComfyUI class (CPU, fp32): the
exactness set of test_video.py with the pose latent and the face video (whose motion tokens every token of a
frame attends to in a face block after every fifth block), the negative prompt's blank face as WanAnimateToVideo
hands it over, the memory plan, both sampler nodes and both Model Patch nodes end to end, Skip Layer Guidance
skipping the first block.

The face video is encoded frame by frame by a StyleGAN-like motion encoder at 512x512 pixels (25M weights,
about 1.7 s a frame on a 2-core CPU) before any token runs; the pack leaves it alone. The tests replace its
`get_motion` by a cheap projection (an object patch on the tiny model), so each frame still gets motion of its
own, and keep the face encoder and the face blocks, which the pack does touch."""
import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import TINY_WAN, assert_exact_on_active_tokens, build_tiny, ksample, random_active, text_conditioning
from test_memory_plan import sample_patched
from test_video import (assert_within_scale, dense_then_sparse, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end, skip_layer_guidance_skipping_block_0)

# One forward is exact on the active tokens to 1e-5 (assert_exact_on_active_tokens). Sampled runs compare to 4e-6
# of the largest value (~30 float32 ulps; the outputs here reach 10-15): a face block on the running tokens is one
# attention call over every frame's motion tokens with the other frames masked out, where the model's is one call
# per frame, which rounds otherwise.
assert_sampled_close = assert_within_scale(4e-6)
FRAMES, HEIGHT, WIDTH = 5, 8, 12                  # an odd frame count (the reference image's frame first), non-square
TOKENS = FRAMES * (HEIGHT // 2) * (WIDTH // 2)
# 10 blocks: face blocks after blocks 0 and 5; 36 input channels (noise, then the reference image and its mask)
TINY_ANIMATE = dict(TINY_WAN, model_type="animate", num_layers=10, in_dim=36)


def tiny_animate(seed):
    model = build_tiny(comfy.supported_models.WAN22_Animate, TINY_ANIMATE, seed)
    projection = torch.randn(3 * 4 * 4, 512, generator=torch.Generator().manual_seed(seed + 100))

    def get_motion(images):                        # (frames, 3, h, w) -> (frames, 512): motion of each frame's own
        return torch.nn.functional.adaptive_avg_pool2d(images, 4).flatten(1) @ projection.to(images)
    model.add_object_patch("diffusion_model.motion_encoder.get_motion", get_motion)
    return model


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def animate_prompts(face=True, pose=True, frames=FRAMES):
    """Prompts of different lengths (two streams at cfg > 1) with what WanAnimateToVideo adds: the pose video's
    latent (one frame fewer: the reference image's frame has none) and the face video's pixels in [-1, 1], blank
    (-1) for the negative prompt."""
    values = {}
    if pose:
        values["pose_video_latent"] = randn(1, 16, frames - 1, HEIGHT, WIDTH, seed=1)
    positive, negative = dict(values), dict(values)
    if face:
        pixels = randn(1, 3, 4 * (frames - 1) + 1, 16, 16, seed=2).clamp(-1, 1)
        positive["face_video_pixels"], negative["face_video_pixels"] = pixels, pixels * 0.0 - 1.0
    return dict(positive=text_conditioning(1, 7, **positive), negative=text_conditioning(2, 5, **negative))


PROMPTS = {"face and pose": lambda: animate_prompts(),
           "pose only": lambda: animate_prompts(face=False)}


def test_animate_is_its_own_adapter():
    model = tiny_animate(seed=0)
    assert adapter_for(model, "test").names == ("Wan 2.2 Animate",)
    assert len(model.model.diffusion_model.face_adapter.fuser_blocks) == 2


def test_the_face_changes_every_frame_differently():
    """The face video matters to this tiny model, and its motion differs from frame to frame, so the exactness
    tests below fail where a sparse face block attends to another frame's motion or to none."""
    latent = torch.zeros(1, 16, FRAMES, HEIGHT, WIDTH)
    no_face, face = (ksample(tiny_animate(seed=4), latent, seed=5, steps=3, **animate_prompts(face=f))
                     for f in (False, True))
    assert (no_face - face).abs().amax(dim=(0, 1, 3, 4)).min().item() > 1e-2      # every frame moves
    model = tiny_animate(seed=4)
    model.patch_model()                            # the object patches on: the cheap motion encoder
    try:
        _, vectors = model.model.diffusion_model.after_patch_embedding(
            torch.zeros(1, 64, FRAMES, 4, 6), None, animate_prompts()["positive"][0][1]["face_video_pixels"])
    finally:
        model.unpatch_model()
    assert all((vectors[0, i] - vectors[0, i + 1]).abs().max() > 1e-3 for i in range(FRAMES - 1))


@pytest.mark.parametrize("prompts", sorted(PROMPTS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(prompts, batch, cfg):
    every_token_active(tiny_animate(seed=3), torch.zeros(batch, 16, FRAMES, HEIGHT, WIDTH), cfg, PROMPTS[prompts](),
                       TOKENS, assert_sampled_close)


@pytest.mark.parametrize("prompts", sorted(PROMPTS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(prompts, batch, cfg):
    """A third of the tokens, in random order and different per image: frames run unequal numbers of tokens."""
    exact_on_a_third_of_the_tokens(tiny_animate(seed=4), torch.zeros(batch, 16, FRAMES, HEIGHT, WIDTH), cfg,
                                   PROMPTS[prompts](), TOKENS)


def test_a_frame_with_no_running_token_and_one_with_all():
    frame = (HEIGHT // 2) * (WIDTH // 2)
    active = torch.cat([torch.arange(frame, 2 * frame), torch.arange(3 * frame + 2, 3 * frame + 5)])[None]
    by_stream = dense_then_sparse(tiny_animate(seed=6), torch.zeros(1, 16, FRAMES, HEIGHT, WIDTH), active, 3.0,
                                  animate_prompts())
    assert_exact_on_active_tokens(by_stream, TOKENS)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Wan's cache: the face blocks attend to the motion tokens, which need none."""
    run = sample_patched(tiny_animate(seed=0), torch.zeros(2, 16, FRAMES, HEIGHT, WIDTH), cfg, animate_prompts())
    rows = 2 if cfg == 1.0 else 4                  # batch 2; at cfg 3 the negative prompt's rows too
    assert run.kv_planned_bytes == run.kv_peak_bytes == 10 * rows * TOKENS * TINY_ANIMATE["dim"] * 2 * 4


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    latent = {"samples": torch.zeros(2, 16, FRAMES, HEIGHT, WIDTH)}
    _, _, trace, _ = sampler_node_end_to_end(tiny_animate(seed=7), latent, animate_prompts(), method, TOKENS)
    assert trace.grid == (FRAMES, HEIGHT // 2, WIDTH // 2)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_animate(seed=8), {"samples": torch.zeros(2, 16, FRAMES, HEIGHT, WIDTH)},
                                     animate_prompts(), assert_sampled_close)


def test_skip_layer_guidance_skipping_the_first_block():
    """In Skip Layer Guidance's perturbed network, which skips block 0, the first face block runs before the tokens
    are gathered: the model's own face block, on the whole video."""
    skip_layer_guidance_skipping_block_0(tiny_animate(seed=9), torch.zeros(1, 16, FRAMES, HEIGHT, WIDTH),
                                         animate_prompts(), TOKENS, assert_sampled_close)


WINDOWED_FRAMES = 7


def test_a_sparse_window_forward_matches_the_dense_one_on_the_tokens_it_ran():
    """In ComfyUI's context windows (3 frames over 7) each window's face blocks attend to the motion of the
    window's own frames (as the model takes it: ComfyUI hands every window the face video from its start)."""
    from comfyui_sdit.sdit_core.frame_windows import window_tokens
    from comfyui_sdit.sdit_core.tokens import index_to_mask
    from test_video_windows import with_windows
    frame_tokens = (HEIGHT // 2) * (WIDTH // 2)
    tokens = WINDOWED_FRAMES * frame_tokens
    active = random_active(1, tokens, tokens // 3, seed=1)
    model, latent, prompts = (with_windows(tiny_animate(seed=4)), torch.zeros(1, 16, WINDOWED_FRAMES, HEIGHT, WIDTH),
                              animate_prompts(frames=WINDOWED_FRAMES))
    try:
        ksample(model, latent, steps=1, **prompts)
    except RuntimeError as error:         # ComfyUI 0.3.75 cuts the latent per window but not Animate's concat image
        pytest.skip(f"this ComfyUI cannot sample Wan Animate in context windows, with or without the pack: {error}")
    by_stream = dense_then_sparse(model, latent, active, 3.0, prompts)
    assert len(by_stream) >= 3
    for stream, ((dense, _), (sparse, computed)) in by_stream.items():
        planned = index_to_mask(active, tokens)[:, window_tokens(stream[-1], frame_tokens)]
        ran = index_to_mask(computed, planned.shape[1])
        assert bool(ran[planned.expand_as(ran)].all())
        assert (sparse - dense).abs().amax(dim=-1)[ran].max().item() <= 1e-5
        assert torch.equal(sparse[~ran], dense[~ran])
