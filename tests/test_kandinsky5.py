"""Kandinsky 5 (`comfy.ldm.kandinsky5.model.Kandinsky5`, newer ComfyUI: video T2V / I2V and the image model) on tiny
random-weight instances of its real ComfyUI class (CPU, fp32): text blocks over the prompt alone, visual blocks with
self-attention over the video tokens and cross-attention to the text, an output layer that unpatchifies; the
exactness set of test_video.py on videos (an odd frame count, non-square frames) and images, image-to-video with a
start image (Kandinsky5ImageToVideo's conditioning), the memory plan, both sampler nodes and both Model Patch nodes."""
import importlib
import inspect
from unittest import mock

import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.families import adapter_for
from comfyui_sdit.nodes.families import kandinsky5 as kandinsky5_family
from sdit_testkit import build_tiny, ksample, ras_model_patch, ras_sample, text_conditioning
from test_ras_sampler import ras_args
from test_memory_plan import sample_patched
from test_video import (assert_within, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end, skip_layer_guidance_skipping_block_0)

if not hasattr(comfy.supported_models, "Kandinsky5"):
    pytest.skip("this ComfyUI has no Kandinsky 5", allow_module_level=True)

comfy_nodes = importlib.import_module("nodes")   # ComfyUI's nodes.py
TOL = 1e-5
FRAMES, HEIGHT, WIDTH = 5, 8, 12                 # an odd frame count, non-square frames
FRAME_TOKENS = (HEIGHT // 2) * (WIDTH // 2)
# ComfyUI's detected Kandinsky 5 Lite config (model_detection.py), made tiny; the video model takes the latent, a
# blank or given image and its mask (33 channels, 132 per 1x2x2 patch), the image model the latent alone
TINY_KANDINSKY5 = dict(image_model="kandinsky5", in_visual_dim=16, out_visual_dim=16, in_text_dim=32, in_text_dim2=24,
                       time_dim=32, model_dim=64, ff_dim=128, visual_embed_dim=132, patch_size=(1, 2, 2),
                       num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 6, 6))
KINDS = {"video": (comfy.supported_models.Kandinsky5, TINY_KANDINSKY5, FRAMES),
         "image": (comfy.supported_models.Kandinsky5Image, dict(TINY_KANDINSKY5, visual_embed_dim=64), None)}


def tiny_kandinsky5(seed, kind="video"):
    model_config, config, _ = KINDS[kind]
    return build_tiny(model_config, config, seed)


def latent(kind="video", batch=1):
    frames = KINDS[kind][2]
    return torch.zeros(batch, 16, frames, HEIGHT, WIDTH) if frames else torch.zeros(batch, 16, HEIGHT, WIDTH)


def tokens(kind="video"):
    return (KINDS[kind][2] or 1) * FRAME_TOKENS


def prompts():
    """Qwen2.5-VL's text tokens and CLIP's pooled vector; prompts of different lengths run as two streams."""
    g = torch.Generator().manual_seed(21)
    return dict(positive=text_conditioning(1, 7, 32, pooled_output=torch.randn(1, 24, generator=g)),
                negative=text_conditioning(2, 5, 32, pooled_output=torch.randn(1, 24, generator=g)))


def test_kandinsky5_is_its_own_adapter():
    for kind in KINDS:
        assert adapter_for(tiny_kandinsky5(seed=0, kind=kind), "test").names == ("Kandinsky 5",)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(kind, batch, cfg):
    run = every_token_active(tiny_kandinsky5(seed=3, kind=kind), latent(kind, batch), cfg, prompts(), tokens(kind),
                             assert_within(TOL))
    assert run.grid == ((FRAMES, HEIGHT // 2, WIDTH // 2) if kind == "video" else (HEIGHT // 2, WIDTH // 2))


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(kind, batch, cfg):
    """A third of the tokens, in random order and different per image."""
    exact_on_a_third_of_the_tokens(tiny_kandinsky5(seed=4, kind=kind), latent(kind, batch), cfg, prompts(),
                                   tokens(kind))


def image_to_video_prompts():
    """What Kandinsky5ImageToVideo adds to both prompts: the start image's latent, which the model writes over the
    first frame of its input every step, and the mask of the frames it gives (as a channel)."""
    given = torch.randn(1, 16, 1, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(1, 1, FRAMES, HEIGHT, WIDTH)
    mask[:, :, 0] = 0.0
    g = torch.Generator().manual_seed(21)
    return {name: text_conditioning(seed, length, 32, pooled_output=torch.randn(1, 24, generator=g),
                                    time_dim_replace=given, concat_mask=mask)
            for name, seed, length in (("positive", 1, 7), ("negative", 2, 5))}


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_image_to_video_every_token_active_and_a_third_of_them(batch, cfg):
    model = tiny_kandinsky5(seed=6)
    every_token_active(model, latent(batch=batch), cfg, image_to_video_prompts(), tokens(), assert_within(TOL))
    exact_on_a_third_of_the_tokens(model, latent(batch=batch), cfg, image_to_video_prompts(), tokens())


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Self-attention over the video tokens alone, in the visual blocks (the text blocks need no cache)."""
    run = sample_patched(tiny_kandinsky5(seed=0), latent(batch=2), cfg, prompts())
    rows = 2 if cfg == 1.0 else 4
    assert run.kv_planned_bytes == run.kv_peak_bytes == 2 * rows * tokens() * TINY_KANDINSKY5["model_dim"] * 2 * 4


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method, kind):
    sampler_node_end_to_end(tiny_kandinsky5(seed=7, kind=kind), {"samples": latent(kind, 2)}, prompts(), method,
                            tokens(kind))


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_kandinsky5(seed=8), {"samples": latent(batch=2)}, prompts(),
                                     assert_within(TOL))


def test_skip_layer_guidance_on_a_first_block_samples_and_on_the_last_is_refused_clearly():
    """The last visual block hands the model every token's row: Skip Layer Guidance skipping it is named in a clear
    error at the first sparse step; skipping the first block, the second gathers the tokens."""
    model = tiny_kandinsky5(seed=9)
    skip_layer_guidance_skipping_block_0(model, latent(), prompts(), tokens(), assert_within(TOL))
    slg = importlib.import_module("comfy_extras.nodes_slg")
    skipping_last = slg.SkipLayerGuidanceDiT.execute(model, 3.0, 0.0, 1.0, "1", "", 0.0)[0]
    patched = ras_model_patch(skipping_last, 0.3, 1, "", 0.1, "std", False)[0]
    with pytest.raises(NotImplementedError, match="last visual block"):
        ksample(patched, latent(), seed=5, steps=4, cfg=3.0, **prompts())


LONG_FRAMES = 41                    # one past the model's NABLA threshold (40 latent frames)


def reference_nabla(q, k, v, sparse_params=None):
    """The NABLA attention's layout with every key attended (a stand-in: the real one compiles a block-sparse kernel)."""
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).flatten(-2, -1)


def test_a_video_the_model_attends_sparsely_is_refused_before_sampling_and_its_own_under_model_patch():
    """Newer ComfyUI's Kandinsky 5 attends sparsely (NABLA, tokens in its own order) on videos of more than 40 latent
    frames: the sampler nodes refuse such a video before sampling, naming it; under a Model Patch node that run is the
    model's own (equal to KSampler's), with a log line; a shorter video still runs sparse steps."""
    k5 = importlib.import_module("comfy.ldm.kandinsky5.model")
    if "sparse_params" not in inspect.signature(k5.TransformerDecoderBlock.forward).parameters:
        pytest.skip("this ComfyUI's Kandinsky 5 has no sparse attention of its own")
    model = tiny_kandinsky5(seed=12)
    long = torch.zeros(1, 16, LONG_FRAMES, 16, 16)
    args = ras_args(steps=4, cfg=3.0, sample_ratio=0.3, reset_steps="", **prompts())
    with mock.patch.object(k5, "nabla", reference_nabla):
        with pytest.raises(SDiTInputError, match="NABLA"):
            ras_sample(model, latent_image={"samples": long}, **args)
        reference = ksample(model, long, seed=5, steps=3, cfg=3.0, **prompts())
        with mock.patch("logging.warning") as logged:
            out = ksample(ras_model_patch(model, 0.3, 1, "", 0.1, "std", False)[0], long, seed=5, steps=3, cfg=3.0,
                          **prompts())
        assert torch.equal(out, reference)
        assert any("NABLA" in str(c) for c in logged.call_args_list)
        _, trace = ras_sample(model, latent_image={"samples": latent()}, **args)
        assert any(not step.dense for step in trace.steps)
        # a model whose threshold is not the pack's: its blocks' sparse attention stops the first forward, naming it
        with mock.patch.object(kandinsky5_family, "NABLA_FRAMES", 100), pytest.raises(NotImplementedError, match="NABLA"):
            ksample(ras_model_patch(model, 0.3, 1, "", 0.1, "std", False)[0], long, seed=5, steps=3, cfg=3.0,
                    **prompts())
