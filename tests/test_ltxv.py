"""LTX-Video (`comfy.ldm.lightricks.model.LTXVModel`) on tiny random-weight instances of its real ComfyUI class (CPU,
fp32): self-attention over the video tokens (one latent voxel each) with 3-D RoPE, cross-attention to the text, a
per-token output; the exactness set of test_video.py (an odd frame count, non-square frames), image-to-video and a
keyframe guide through ComfyUI's own LTXVImgToVideo / LTXVAddGuide nodes (tokens with their own timestep: a noise
mask), the memory plan, both sampler nodes and both Model Patch nodes, and the guides it cannot follow refused."""
import contextlib
import importlib
import inspect
import unittest.mock

import pytest
import torch

import comfy.ldm.lightricks.model
import comfy.supported_models

from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.families import adapter_for
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from sdit_testkit import (assert_exact_on_active_tokens, build_tiny, random_active, ras_model_patch, ras_sample,
                          text_conditioning)
from test_memory_plan import sample_patched
from test_ras_sampler import ras_args
from test_video import (assert_within, dense_then_sparse, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end,
                        skip_layer_guidance_skipping_block_0)

comfy_nodes = importlib.import_module("nodes")   # ComfyUI's nodes.py
nodes_lt = importlib.import_module("comfy_extras.nodes_lt")
TOL = 1e-5
FRAMES, HEIGHT, WIDTH = 5, 4, 6                  # 33 frames of 128 x 192 pixels: an odd frame count, non-square
PIXELS = dict(width=WIDTH * 32, height=HEIGHT * 32, length=(FRAMES - 1) * 8 + 1)
TOKENS = FRAMES * HEIGHT * WIDTH                 # patch 1: a token per latent voxel
# ComfyUI's detected LTX-Video config (model_detection.py), made tiny: the text is projected to the hidden size
TINY_LTXV = dict(image_model="ltxv", in_channels=128, num_layers=2, attention_head_dim=16, num_attention_heads=4,
                 cross_attention_dim=64, caption_channels=32)


def tiny_ltxv(seed):
    return build_tiny(comfy.supported_models.LTXV, TINY_LTXV, seed)


def latent(batch=1):
    return comfy_nodes_output(nodes_lt.EmptyLTXVLatentVideo.execute(batch_size=batch, **PIXELS))[0]["samples"]


def comfy_nodes_output(output):
    """A node's outputs as a tuple (newer nodes return a NodeOutput)."""
    return tuple(output.result) if hasattr(output, "result") else tuple(output)


def prompts(**extra):
    """T5 tokens and their attention mask (the negative's last token is padding); prompts of different lengths run
    as two streams."""
    padded = torch.ones(1, 5, dtype=torch.long)
    padded[:, -1] = 0
    return dict(positive=text_conditioning(1, 7, 32, attention_mask=torch.ones(1, 7, dtype=torch.long), **extra),
                negative=text_conditioning(2, 5, 32, attention_mask=padded, **extra))


class StandInVAE:
    """LTX-Video's VAE as LTXVImgToVideo and LTXVAddGuide use it: its scale factors and a latent of the right shape
    for the pixels it encodes (random, fixed by the pixel count)."""
    downscale_index_formula = (8, 32, 32)

    def encode(self, pixels):
        frames = (pixels.shape[0] - 1) // 8 + 1
        generator = torch.Generator().manual_seed(pixels.shape[0] * 7 + pixels.shape[1])
        return torch.randn(1, 128, frames, pixels.shape[1] // 32, pixels.shape[2] // 32, generator=generator)


def image(frames=1):
    return torch.rand(frames, PIXELS["height"], PIXELS["width"], 3, generator=torch.Generator().manual_seed(4))


def image_to_video(batch=1):
    """LTXVImgToVideo: the start image's latent in frame 0, which a noise mask of 0 keeps (its tokens' timestep 0)."""
    positive, negative, out = comfy_nodes_output(nodes_lt.LTXVImgToVideo.execute(
        vae=StandInVAE(), image=image(), batch_size=batch, strength=1.0, **prompts(), **PIXELS))
    return dict(positive=positive, negative=negative), out


def with_guide(batch=1, strength=1.0, **more):
    """LTXVAddGuide with an end frame: its latent follows the video's frames (a noise mask of 1 - strength) and its
    tokens take the frame's positions (keyframe_idxs)."""
    arguments = dict(vae=StandInVAE(), latent={"samples": latent(batch)}, image=image(), frame_idx=-1,
                     strength=strength, **prompts(), **more)
    positive, negative, out = comfy_nodes_output(nodes_lt.LTXVAddGuide.execute(**arguments))
    return dict(positive=positive, negative=negative), out


def test_ltxv_is_its_own_adapter():
    assert adapter_for(tiny_ltxv(seed=0), "test").names == ("LTX-Video",)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(batch, cfg):
    run = every_token_active(tiny_ltxv(seed=3), latent(batch), cfg, prompts(), TOKENS, assert_within(TOL))
    assert run.grid == (FRAMES, HEIGHT, WIDTH)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(batch, cfg):
    """A third of the tokens, in random order and different per video."""
    exact_on_a_third_of_the_tokens(tiny_ltxv(seed=4), latent(batch), cfg, prompts(), TOKENS)


def every_token_through_the_sparse_path(model, conditioning, latent_dict, cfg, tokens):
    """KSampler over a latent with its noise mask, with and without every token sent through the sparse path."""
    def sample(m):
        return comfy_nodes.KSampler().sample(m, 5, 4, cfg, "euler", "simple", conditioning["positive"],
                                             conditioning["negative"], latent_dict)[0]["samples"]
    batch = latent_dict["samples"].shape[0]
    policy = FixedPlanPolicy([None] + [torch.arange(tokens).expand(batch, -1)] * 3)
    assert (sample(apply_token_sparse(model, lambda run: policy, node="test")[0]) - sample(model)).abs().max() <= TOL
    return sample(model)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_image_to_video_tokens_with_their_own_timestep(batch, cfg):
    """The noise mask gives the start frame's tokens timestep 0 (the modulation is per token, gathered with them):
    every token through the sparse path and a third of them are exact; the RAS Sampler never picks the start frame
    and keeps it."""
    model = tiny_ltxv(seed=6)
    conditioning, latent_dict = image_to_video(batch)
    mask = latent_dict["noise_mask"]
    assert mask.shape == (batch, 1, FRAMES, 1, 1) and not mask[:, :, 0].any() and mask[:, :, 1:].all()
    reference = every_token_through_the_sparse_path(model, conditioning, latent_dict, cfg, TOKENS)
    active = random_active(batch, TOKENS, TOKENS // 3, seed=1)
    by_stream = dense_then_sparse(model, latent_dict["samples"], active, cfg, conditioning,
                                  noise_mask=mask.expand(-1, -1, -1, HEIGHT, WIDTH))
    assert_exact_on_active_tokens(by_stream, TOKENS)
    out, trace = ras_sample(model, latent_image=latent_dict, **ras_args(steps=4, cfg=cfg, sample_ratio=0.4,
                                                                          reset_steps="", **conditioning))
    sparse = [s for s in trace.steps if not s.dense]
    assert sparse and torch.isfinite(out["samples"]).all()
    assert not any(s.active[:, 0].any() for s in sparse), "the start frame is never computed on sparse steps"
    assert (out["samples"][:, :, 0] - reference[:, :, 0]).abs().max() <= TOL, "the start frame is kept"


def test_a_keyframe_guide_runs_and_is_kept():
    """LTXVAddGuide's end frame follows the video's frames in the latent, with its own positions (keyframe_idxs,
    RoPE gathered with the tokens) and timestep 0: exact with every token and with a third of them, never picked by
    the RAS Sampler, kept."""
    model = tiny_ltxv(seed=7)
    conditioning, latent_dict = with_guide()
    samples, mask = latent_dict["samples"], latent_dict["noise_mask"]
    tokens = samples.shape[2] * HEIGHT * WIDTH
    assert samples.shape[2] == FRAMES + 1 and not mask[:, :, -1].any()
    reference = every_token_through_the_sparse_path(model, conditioning, latent_dict, 3.0, tokens)
    active = random_active(1, tokens, tokens // 3, seed=2)
    by_stream = dense_then_sparse(model, samples, active, 3.0, conditioning,
                                  noise_mask=mask.expand(-1, -1, -1, HEIGHT, WIDTH))
    assert_exact_on_active_tokens(by_stream, tokens)
    out, trace = ras_sample(model, latent_image=latent_dict, **ras_args(steps=4, cfg=3.0, sample_ratio=0.4,
                                                                          reset_steps="", **conditioning))
    sparse = [s for s in trace.steps if not s.dense]
    assert sparse and not any(s.active[:, -1].any() for s in sparse), "the guide frame is never computed"
    assert (out["samples"][:, :, -1] - reference[:, :, -1]).abs().max() <= TOL, "the guide frame is kept"


GUIDE_OPTIONS = inspect.signature(nodes_lt.LTXVAddGuide.execute).parameters
NEWER_GUIDES = pytest.mark.skipif("iclora_parameters" not in GUIDE_OPTIONS,
                                  reason="this ComfyUI's guides neither scale attention nor filter tokens")


@contextlib.contextmanager
def guide_masks_built():
    """The list of self-attention masks the model builds for its blocks while the context is open (LTX-2's too)."""
    import comfy.ldm.lightricks.model as ltx
    masks, build = [], ltx.LTXVModel._build_guide_self_attention_mask

    def spy(self, *args, **kwargs):
        masks.append(build(self, *args, **kwargs))
        return masks[-1]
    with unittest.mock.patch.object(ltx.LTXVModel, "_build_guide_self_attention_mask", spy):
        yield masks


@NEWER_GUIDES
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_a_guide_of_strength_below_one_scales_attention_exactly(cfg):
    """Newer ComfyUI: a guide of strength 0.5 scales the attention to and from its tokens by position (a guide
    attention mask, up to three attention calls a layer); the self-attention is restated around the engine. Its
    frame's noise mask of 0.5 lets tokens of it be picked: with every token, and with a third of them (guide tokens
    among them), exact; the RAS Sampler samples it."""
    import comfy.ldm.lightricks.model as ltx
    model = tiny_ltxv(seed=8)
    conditioning, latent_dict = with_guide(strength=0.5)
    samples, mask = latent_dict["samples"], latent_dict["noise_mask"]
    tokens = samples.shape[2] * HEIGHT * WIDTH
    with guide_masks_built() as masks:
        every_token_through_the_sparse_path(model, conditioning, latent_dict, cfg, tokens)
    assert masks and all(isinstance(m, ltx.GuideAttentionMask) for m in masks), "the model scales the guide's attention"
    active = random_active(1, tokens, tokens // 3, seed=2)
    assert (active >= FRAMES * HEIGHT * WIDTH).any(), "guide tokens among the running ones"
    by_stream = dense_then_sparse(model, samples, active, cfg, conditioning,
                                  noise_mask=mask.expand(-1, -1, -1, HEIGHT, WIDTH))
    assert_exact_on_active_tokens(by_stream, tokens)
    out, trace = ras_sample(model, latent_image=latent_dict, **ras_args(steps=4, cfg=cfg, sample_ratio=0.4,
                                                                          reset_steps="", **conditioning))
    assert any(not s.dense for s in trace.steps) and torch.isfinite(out["samples"]).all()
    patched = ras_model_patch(model, 0.4, 1, "", 0.1, "std", False)[0]
    under_ksampler = comfy_nodes.KSampler().sample(patched, 5, 6, cfg, "euler", "simple", conditioning["positive"],
                                                   conditioning["negative"], latent_dict)[0]["samples"]
    assert torch.isfinite(under_ksampler).all()


@NEWER_GUIDES
def test_a_changed_guide_attention_stops_with_a_clear_error():
    """The restated self-attention is checked against the model's own on the first dense forward: a ComfyUI whose
    guide attention computes otherwise (here: its gate doubled) stops instead of sampling a wrong video."""
    import comfy.ldm.lightricks.model as ltx
    conditioning, latent_dict = with_guide(strength=0.5)
    original = ltx.CrossAttention.forward

    def otherwise(self, *args, **kwargs):
        return 2.0 * original(self, *args, **kwargs)
    with unittest.mock.patch.object(ltx.CrossAttention, "forward", otherwise):
        with pytest.raises(Exception, match="computes something other than"):
            ras_sample(tiny_ltxv(seed=9), latent_image=latent_dict, **ras_args(steps=4, **conditioning))


@NEWER_GUIDES
def test_a_guide_the_model_filters_is_refused_clearly():
    """Newer ComfyUI: an IC-LoRA reference at reduced resolution is dilated and the model filters its empty tokens
    out. The sampler nodes refuse it before sampling, a Model Patch node under KSampler at the first sparse forward."""
    conditioning, latent_dict = with_guide(iclora_parameters={"reference_downscale_factor": 2})
    model = tiny_ltxv(seed=8)
    with pytest.raises(SDiTInputError, match=r"RAS Sampler: input 'positive'.*filters"):
        ras_sample(model, latent_image=latent_dict, **ras_args(steps=4, **conditioning))
    patched = ras_model_patch(model, 0.3, 1, "", 0.1, "std", False)[0]
    with pytest.raises(Exception, match="filters"):
        comfy_nodes.KSampler().sample(patched, 5, 4, 1.0, "euler", "simple", conditioning["positive"],
                                      conditioning["negative"], latent_dict)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Self-attention over the video tokens alone."""
    run = sample_patched(tiny_ltxv(seed=0), latent(batch=2), cfg, prompts())
    rows = 2 if cfg == 1.0 else 4
    inner = TINY_LTXV["attention_head_dim"] * TINY_LTXV["num_attention_heads"]
    assert run.kv_planned_bytes == run.kv_peak_bytes == TINY_LTXV["num_layers"] * rows * TOKENS * inner * 2 * 4


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_ltxv(seed=9), {"samples": latent(2)}, prompts(), method, TOKENS)
    assert trace.grid == (FRAMES, HEIGHT, WIDTH)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_ltxv(seed=10), {"samples": latent(2)}, prompts(), assert_within(TOL))


def test_skip_layer_guidance_skipping_block_0():
    skip_layer_guidance_skipping_block_0(tiny_ltxv(seed=11), latent(), prompts(), TOKENS, assert_within(TOL))


def test_a_model_with_steps_of_its_own_gets_the_not_supported_error():
    """A subclass of LTXVModel whose input, blocks and output steps are its own (as LTX-2's LTXAVModel, which has an
    adapter of its own) is another model: the LTX-Video adapter does not take it."""
    class WithAnInputOfItsOwn(comfy.ldm.lightricks.model.LTXVModel):
        def _process_input(self, *args, **kwargs):
            return super()._process_input(*args, **kwargs)

        def _forward(self, *args, **kwargs):
            return super()._forward(*args, **kwargs)
    model = tiny_ltxv(seed=0)
    model.model.diffusion_model.__class__ = WithAnInputOfItsOwn
    with pytest.raises(SDiTInputError, match=r"WithAnInputOfItsOwn.*not supported.*LTX-Video"):
        ras_sample(model, latent_image={"samples": latent()}, **ras_args(**prompts()))
