"""Wan SCAIL and SCAIL-2 (`comfy.ldm.wan.model.SCAILWanModel`, `SCAIL2WanModel`: a character animated from reference
images by a pose video, newer ComfyUI's WanSCAILToVideo) on tiny random-weight instances of their real ComfyUI
classes (CPU, fp32): the exactness set of test_video.py with the conditioning WanSCAILToVideo makes (through the node,
with a stand-in VAE): the references' tokens before the video's, the half-size pose video's after them, SCAIL-2's
identity masks and its replacement mode (RoPE shifted per part); the memory plan, both sampler nodes and both Model
Patch nodes end to end. Skipped where the running ComfyUI has no SCAIL (0.3.75)."""
import importlib

import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.families import adapter_for
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from sdit_testkit import (TINY_WAN, StandInWanVAE, assert_exact_on_active_tokens, build_tiny, ksample,
                          text_conditioning)
from test_engine_exactness import dense_sparse_plain
from test_memory_plan import sample_patched
from test_video import (assert_within_scale, dense_then_sparse, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end)

if not hasattr(comfy.supported_models, "WAN21_SCAIL2"):
    pytest.skip("this ComfyUI has no Wan SCAIL-2", allow_module_level=True)
nodes_scail = importlib.import_module("comfy_extras.nodes_scail")

FRAMES, HEIGHT, WIDTH = 5, 8, 12                  # an odd frame count, non-square frames (latent pixels)
FRAME_TOKENS = (HEIGHT // 2) * (WIDTH // 2)
TOKENS = FRAMES * FRAME_TOKENS
POSE_TOKENS = FRAMES * (HEIGHT // 4) * (WIDTH // 4)      # the pose video at half the size
# Sampled runs compare to 4e-6 of the largest value (~30 float32 ulps): the references' and the pose's tokens sit
# elsewhere in the sparse sequence (after the running ones), which rounds otherwise.
assert_sampled_close = assert_within_scale(4e-6)
VERSIONS = {"SCAIL": comfy.supported_models.WAN21_SCAIL, "SCAIL-2": comfy.supported_models.WAN21_SCAIL2}


def tiny_scail(seed, version="SCAIL-2"):
    return build_tiny(VERSIONS[version], dict(TINY_WAN, model_type="scail2" if version == "SCAIL-2" else "scail",
                                              in_dim=20, num_layers=3), seed)


def pixels(frames, height, width, seed, colours=False):
    images = torch.rand(frames, height, width, 3, generator=torch.Generator().manual_seed(seed))
    return (images > 0.5).float() if colours else images


def scail_prompts(references=2, pose=True, masks=True, replacement=False, batch=1, pose_end=1.0):
    """Prompts of different lengths (two streams at cfg > 1) through WanSCAILToVideo: `references` reference
    images (the first the primary one), the pose video, SCAIL-2's identity masks of both (colour images)."""
    height, width, length = HEIGHT * 8, WIDTH * 8, (FRAMES - 1) * 4 + 1
    extra = {}
    if references:
        extra["reference_image"] = pixels(references, height, width, seed=1)
        if masks:
            extra["reference_image_mask"] = pixels(references, height, width, seed=2, colours=True)
    if pose:
        extra["pose_video"] = pixels(length, height, width, seed=3)
        if masks:
            extra["pose_video_mask"] = pixels(length, height // 2, width // 2, seed=4, colours=True)
    out = nodes_scail.WanSCAILToVideo.execute(
        positive=text_conditioning(1, 7), negative=text_conditioning(2, 5), vae=StandInWanVAE(), width=width,
        height=height, length=length, batch_size=batch, pose_strength=1.0, pose_start=0.0, pose_end=pose_end,
        video_frame_offset=0, previous_frame_count=5, replacement_mode=replacement, **extra)
    positive, negative, latent = tuple(out.result)[:3]
    return dict(positive=positive, negative=negative), latent


PROMPTS = {"two references, pose, masks": dict(), "one reference and pose": dict(references=1, masks=False),
           "pose only": dict(references=0, masks=False), "replacement mode": dict(replacement=True)}


def extra_tokens(references=2, pose=True, **_) -> int:
    return references * FRAME_TOKENS + (POSE_TOKENS if pose else 0)


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_scail_is_its_own_adapter(version):
    assert adapter_for(tiny_scail(seed=0, version=version), "test").names == ("Wan SCAIL",)


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_the_references_and_the_pose_change_every_frame(version):
    """The preconditions: this tiny model's output, in every frame, depends on the references and on the pose video
    (so the tests below fail where their tokens are dropped or misplaced)."""
    model = tiny_scail(seed=4, version=version)
    prompts, latent = scail_prompts(masks=version == "SCAIL-2")
    plain = ksample(model, latent["samples"], seed=5, steps=3, **prompts)
    for without in (dict(references=0), dict(pose=False)):
        other, _ = scail_prompts(**dict(dict(masks=False), **without))
        changed = (ksample(model, latent["samples"], seed=5, steps=3, **other) - plain).abs().amax(dim=(0, 1, 3, 4))
        assert changed.min().item() > 1e-3


def version_of(prompts: str) -> str:
    return "SCAIL" if prompts == "one reference and pose" else "SCAIL-2"


@pytest.mark.parametrize("prompts", sorted(PROMPTS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(prompts, batch, cfg):
    conditioning, latent = scail_prompts(batch=batch, **PROMPTS[prompts])
    run = every_token_active(tiny_scail(seed=3, version=version_of(prompts)), latent["samples"], cfg, conditioning,
                             TOKENS, assert_sampled_close)
    assert run.grid == (FRAMES, HEIGHT // 2, WIDTH // 2)


@pytest.mark.parametrize("prompts", sorted(PROMPTS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(prompts, batch, cfg):
    """A third of the tokens, in random order and different per image; the references' and the pose's tokens run
    on every step (the references' are before the video's in the model's sequence, the pose's after them)."""
    conditioning, latent = scail_prompts(batch=batch, **PROMPTS[prompts])
    exact_on_a_third_of_the_tokens(tiny_scail(seed=4, version=version_of(prompts)), latent["samples"], cfg,
                                   conditioning, TOKENS, extra=extra_tokens(**PROMPTS[prompts]))


@pytest.mark.parametrize("replacement", [False, True])
def test_the_policies_see_the_video_where_the_latent_has_it(replacement):
    """One dense and one sparse forward on the model's own inputs equal the model's; the output the policies read
    (the head's, before the model cuts the references and the pose off) has the video's tokens first, in the
    latent's order, though the references' lead the model's sequence."""
    model = tiny_scail(seed=15)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, 20, FRAMES, HEIGHT, WIDTH, generator=g)
    kwargs = dict(context=torch.randn(1, 7, 32, generator=g), ref_mask_flag=not replacement,
                  reference_latent=torch.randn(1, 20, 2, HEIGHT, WIDTH, generator=g),
                  pose_latents=torch.randn(1, 20, FRAMES, HEIGHT // 2, WIDTH // 2, generator=g))
    dense, sparse, plain, run = dense_sparse_plain(model, x, 0.6, 20, **kwargs)
    assert (dense - plain).abs().max().item() <= 1e-5 and (sparse - plain).abs().max().item() <= 1e-5
    assert run.evals[1].calls[0].attention_image_rows == [20 + extra_tokens()] * 3
    (stream,) = run.streams.values()
    tokens = plain.view(1, 16, FRAMES, 1, HEIGHT // 2, 2, WIDTH // 2, 2).permute(0, 2, 4, 6, 3, 5, 7, 1).flatten(4)
    assert (stream.last_output[:, :TOKENS] - tokens.flatten(1, 3)).abs().max().item() <= 1e-5


def test_a_frame_with_no_running_token_and_one_with_all():
    active = torch.cat([torch.arange(FRAME_TOKENS, 2 * FRAME_TOKENS),
                        torch.arange(3 * FRAME_TOKENS + 2, 3 * FRAME_TOKENS + 5)])
    conditioning, latent = scail_prompts()
    by_stream = dense_then_sparse(tiny_scail(seed=6), latent["samples"], active[None], 3.0, conditioning)
    assert_exact_on_active_tokens(by_stream, TOKENS, extra=extra_tokens())


def test_a_pose_for_part_of_the_run():
    """WanSCAILToVideo's pose_end < 1: each prompt becomes an entry with the pose (until then) and one without it
    (after), sequences of other lengths: the one without starts dense where it begins (a stream of its own, whose K/V
    cache is complete), and with every token active the run equals KSampler."""
    conditioning, latent = scail_prompts(pose_end=0.5)
    assert len(conditioning["positive"]) == 2
    model = tiny_scail(seed=9)
    reference = ksample(model, latent["samples"], seed=5, steps=4, **conditioning)
    policy = FixedPlanPolicy([None] + [torch.arange(TOKENS)[None]] * 3)
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    assert_sampled_close(ksample(patched, latent["samples"], seed=5, steps=4, **conditioning), reference)
    assert [e.dense for e in slot.last_run.evals] == [True, False, False, True]      # the switch: the last step


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Wan's cache over the video's, the references' and the pose's tokens."""
    conditioning, latent = scail_prompts(batch=2)
    run = sample_patched(tiny_scail(seed=0), latent["samples"], cfg, conditioning)
    rows = 2 if cfg == 1.0 else 4                  # batch 2; at cfg 3 the negative prompt's rows too
    assert run.kv_planned_bytes == run.kv_peak_bytes == 3 * rows * (TOKENS + extra_tokens()) * TINY_WAN["dim"] * 2 * 4


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    conditioning, latent = scail_prompts(batch=2)
    _, _, trace, _ = sampler_node_end_to_end(tiny_scail(seed=7), latent, conditioning, method, TOKENS)
    assert trace.grid == (FRAMES, HEIGHT // 2, WIDTH // 2)


def test_model_patch_nodes_under_ksampler():
    conditioning, latent = scail_prompts(batch=2)
    model_patch_nodes_under_ksampler(tiny_scail(seed=8), latent, conditioning, assert_sampled_close)
