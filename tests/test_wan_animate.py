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
import importlib

import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.families import adapter_for
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from sdit_testkit import (TINY_WAN, assert_exact_on_active_tokens, build_tiny, ksample, random_active, ras_model_patch,
                          sdit_model_patch, text_conditioning)
from test_memory_plan import sample_patched
from test_sdit_sampler import defaults as sdit_defaults
from test_video import SDIT_END_TO_END, dense_then_sparse, sampler_node_end_to_end

comfy_nodes = importlib.import_module("nodes")   # ComfyUI's nodes.py
# One forward is exact on the active tokens to 1e-5 (assert_exact_on_active_tokens). Sampled runs compare to 4e-6
# of the largest value (~30 float32 ulps; the outputs here reach 10-15): a face block on the running tokens is one
# attention call over every frame's motion tokens with the other frames masked out, where the model's is one call
# per frame, which rounds otherwise.
SAMPLED_REL_TOL = 4e-6


def assert_sampled_close(out, reference):
    assert (out - reference).abs().max().item() <= SAMPLED_REL_TOL * reference.abs().max().item()
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
    model = tiny_animate(seed=3)
    latent = torch.zeros(batch, 16, FRAMES, HEIGHT, WIDTH)
    reference = ksample(model, latent, seed=5, steps=4, cfg=cfg, **PROMPTS[prompts]())
    policy = FixedPlanPolicy([None] + [torch.arange(TOKENS).expand(batch, -1)] * 3)
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    assert_sampled_close(ksample(patched, latent, seed=5, steps=4, cfg=cfg, **PROMPTS[prompts]()), reference)
    assert [e.dense for e in slot.last_run.evals] == [True, False, False, False]


@pytest.mark.parametrize("prompts", sorted(PROMPTS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(prompts, batch, cfg):
    """A third of the tokens, in random order and different per image: frames run unequal numbers of tokens."""
    active = random_active(batch, TOKENS, TOKENS // 3, seed=1)
    by_stream = dense_then_sparse(tiny_animate(seed=4), torch.zeros(batch, 16, FRAMES, HEIGHT, WIDTH), active, cfg,
                                  PROMPTS[prompts]())
    assert len(by_stream) == (2 if cfg > 1 else 1)
    assert_exact_on_active_tokens(by_stream, TOKENS)


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
    """RAS Model Patch at ratio 1 under a plain KSampler is the Animate model's own output; the Model Patch
    nodes at a lower ratio sample."""
    model = tiny_animate(seed=8)
    latent = {"samples": torch.zeros(2, 16, FRAMES, HEIGHT, WIDTH)}
    prompts = animate_prompts()

    def sample(m):
        return comfy_nodes.KSampler().sample(m, 4, 5, 2.0, "euler", "simple", prompts["positive"],
                                             prompts["negative"], latent)[0]["samples"]
    reference = sample(model)
    assert_sampled_close(sample(ras_model_patch(model, 1.0, 1, "", 0.1, "std", False)[0]), reference)
    values = sdit_defaults(**SDIT_END_TO_END)
    for patched in (ras_model_patch(model, 0.3, 1, "", 0.1, "std", False)[0], sdit_model_patch(model, **values)[0]):
        out = sample(patched)
        assert torch.isfinite(out).all() and (out - reference).abs().max().item() > 1e-4
    assert torch.equal(sample(model), reference), "the model passed in is unchanged"


def test_skip_layer_guidance_skipping_the_first_block():
    """Skip Layer Guidance skipping block 0: in its perturbed network the first face block runs before the tokens
    are gathered (the model's own face block, on the whole video) and block 1 gathers them. Every token active it
    equals Skip Layer Guidance alone; with a third of them all three networks run sparse."""
    slg = importlib.import_module("comfy_extras.nodes_slg")
    model = slg.SkipLayerGuidanceDiT.execute(tiny_animate(seed=9), 3.0, 0.0, 1.0, "0", "", 0.0)[0]
    latent = torch.zeros(1, 16, FRAMES, HEIGHT, WIDTH)
    prompts = animate_prompts()
    reference = ksample(model, latent, seed=5, steps=4, cfg=3.0, **prompts)
    for active in (torch.arange(TOKENS)[None], random_active(1, TOKENS, TOKENS // 3, seed=3)):
        policy = FixedPlanPolicy([None] + [active] * 3)
        patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
        out = ksample(patched, latent, seed=5, steps=4, cfg=3.0, **prompts)
        streams = {c.stream for e in slot.last_run.evals[1:] for c in e.calls if not c.dense}
        assert len(streams) == 3
        assert torch.isfinite(out).all()
        if active.shape[1] == TOKENS:
            assert_sampled_close(out, reference)


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
