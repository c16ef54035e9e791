"""Prism (`comfy.ldm.prism.model.Prism`, newest ComfyUI) on tiny random-weight instances of its real class (CPU,
fp32): the video (Wan 2.1's latent, the reference image by channel concat) and its audio sampled together as one
latent of two parts, made by ComfyUI's own Prism Prepare AV node; the video's tokens sparse, the audio's always
running and attending to every video token's keys through the K/V cache; the high- and low-noise video towers two
networks, the first forward of the second dense. The exactness set of test_video.py (an odd frame count, non-square
frames) on both parts and both towers, the memory plan, both sampler nodes and both Model Patch nodes, and what is
refused clearly. Skipped where ComfyUI has no Prism."""
import importlib
from unittest import mock

import pytest
import torch

import comfy.sample
import comfy.samplers
import comfy.supported_models

from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.families import adapter_for
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
import av_sampling
from av_sampling import assert_parts_within, outputs
from sdit_testkit import (StandInWanVAE, assert_exact_on_active_tokens, init_buffers_, init_weights_, make_patcher,
                          random_active, ras_sample, text_conditioning)
from test_ras_sampler import ras_args

pytestmark = pytest.mark.skipif(importlib.util.find_spec("comfy.ldm.prism") is None,
                                reason="this ComfyUI has no Prism")
TOL = 2e-5
FRAMES, HEIGHT, WIDTH = 3, 3, 4            # latent frames and tokens of the tiny video (9 frames of 48x64 pixels)
TOKENS = FRAMES * HEIGHT * WIDTH
AUDIO_TOKENS = 19                           # 48 kHz for 9 frames at 24 fps, 960 samples a token
# the model's widths made tiny (its sizes are literals): the conditioners' "bridge" RoPE needs heads 128 wide
TINY_WIDTH = {5120: 256, 1536: 128}
HEADS = {5120: 2, 1536: 1}


def tiny_prism(seed):
    """supported_models.Prism with 3 video and 2 audio layers; its towers and conditioners built at tiny widths."""
    prism = importlib.import_module("comfy.ldm.prism.model")
    tower, conditioner = prism.Tower, prism.Conditioner

    def tiny_tower(dim, heads, ffn_dim, layers, audio, *rest):
        return tower(TINY_WIDTH[dim], HEADS[dim], 2 * TINY_WIDTH[dim], layers, audio, *rest)

    def tiny_conditioner(dim, kv_dim, *rest):
        return conditioner(TINY_WIDTH[dim], TINY_WIDTH[kv_dim], *rest)
    config = comfy.supported_models.Prism(dict(image_model="prism_mova", video_layers=3, audio_layers=2))
    with mock.patch.object(prism, "Tower", tiny_tower), mock.patch.object(prism, "Conditioner", tiny_conditioner):
        model = config.get_model({}, device=torch.device("cpu"))
    init_weights_(model.diffusion_model, seed)
    init_buffers_(model.diffusion_model, seed)
    return make_patcher(model)


def prepared(seed=1):
    """Prism Prepare AV (ComfyUI's node) over a start image: (conditioning with the reference and the audio's text,
    the video and audio latent)."""
    nodes_prism = importlib.import_module("comfy_extras.nodes_prism")
    vae = StandInWanVAE()
    vae.latent_channels, vae.downscale_index_formula = 16, (4, 8, 8)
    image = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(seed))
    positive, negative, latent = outputs(nodes_prism.PrismPrepareAV().prepare(
        text_conditioning(seed, 7, 4096), text_conditioning(seed + 1, 5, 4096), vae, image, width=64, height=48,
        frames=9, fps=24.0, reference_resize="legacy_center_crop"))
    return dict(positive=positive, negative=negative), latent


def sample(model, cfg, steps=5, seed=5):
    """ComfyUI's sampling (5 steps at the model's shift: sigmas 1, .97, .93 on the high-noise tower, .86, .69 on the
    low-noise one): (video, audio)."""
    conditioning, latent = prepared()
    return av_sampling.sample(model, latent, cfg, conditioning, steps, seed)


def test_prism_is_its_own_adapter():
    model = tiny_prism(seed=0)
    assert adapter_for(model, "test").names == ("Prism",)
    assert prepared()[1]["samples"].unbind()[0].shape[2:] == (FRAMES, 2 * HEIGHT, 2 * WIDTH)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_all_tokens_active_equals_unpatched(cfg):
    """Every video token through the sparse path after a dense first step: the video and the audio as without the
    pack. The low-noise tower's first forward is dense (a network of its own)."""
    model = tiny_prism(seed=3)
    reference = sample(model, cfg)
    policy = FixedPlanPolicy([None] + [torch.arange(TOKENS)[None]] * 4)
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    assert_parts_within(sample(patched, cfg), reference, TOL)
    assert [e.dense for e in slot.last_run.evals] == [True, False, False, True, False]
    assert slot.last_run.grid == (FRAMES, HEIGHT, WIDTH)


@pytest.mark.parametrize("sigma", [0.95, 0.8], ids=["high-noise tower", "low-noise tower"])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_dense_then_sparse_matches_dense_on_active_tokens_and_the_whole_audio(cfg, sigma):
    """A third of the video tokens (random order): they equal the dense forward's, and so does all of the audio,
    whose queries saw every video token's keys (the others' from the cache)."""
    conditioning, latent = prepared()
    by_stream, audio = av_sampling.dense_then_sparse(tiny_prism(seed=4), latent, random_active(1, TOKENS, TOKENS // 3,
                                                                                               seed=1),
                                                     cfg, conditioning, 128 * AUDIO_TOKENS, sigma=sigma)
    assert len(by_stream) == (2 if cfg > 1 else 1)
    assert_exact_on_active_tokens(by_stream, TOKENS, tol=TOL)
    dense, sparse = audio
    assert dense.abs().max().item() > 0.1
    assert (sparse - dense).abs().max().item() <= TOL


def test_the_low_noise_tower_starts_dense():
    """A dense forward on the high-noise tower, then one below the boundary with a third of the tokens planned: the
    low-noise tower has no caches yet, so every token runs and the output is the model's own (the high-noise tower's
    keys would be the wrong network's)."""
    conditioning, latent = prepared()
    model = tiny_prism(seed=5)
    policy = FixedPlanPolicy([None, random_active(1, TOKENS, TOKENS // 3, seed=2)])

    def run(patched):
        """The model's outputs at sigma 0.95 and 0.8 on the same input."""
        outs = []

        def at_two_sigmas(model, x, sigmas, extra_args=None, callback=None, disable=None):
            s_in = x.new_ones([x.shape[0]])
            outs.extend(model(x, sigma * s_in, **extra_args).clone() for sigma in sigmas[:2])
            return x
        comfy.sample.sample_custom(patched, av_sampling.noise_for(latent["samples"], 9), 3.0,
                                   comfy.samplers.KSAMPLER(at_two_sigmas), torch.tensor([0.95, 0.8, 0.0]),
                                   conditioning["positive"], conditioning["negative"], latent["samples"],
                                   disable_pbar=True, seed=9)
        return outs
    reference = run(model)
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    out = run(patched)
    assert [e.dense for e in slot.last_run.evals] == [True, True]
    for got, expected in zip(out, reference, strict=True):
        assert (got - expected).abs().max().item() <= TOL


def test_the_towers_switch_where_the_model_switches_them():
    """At a sigma of exactly float32(0.9), the boundary, the model still runs the high-noise tower (it compares its
    float32 sigma): the forward there stays in that tower's streams (sparse), and the next one, below, starts the
    low-noise tower dense."""
    conditioning, latent = prepared()
    policy = FixedPlanPolicy([None] + [random_active(1, TOKENS, TOKENS // 3, seed=2)] * 2)
    patched, slot = apply_token_sparse(tiny_prism(seed=5), lambda run: policy, node="test")
    comfy.sample.sample_custom(patched, av_sampling.noise_for(latent["samples"], 9), 3.0,
                               comfy.samplers.ksampler("euler"), torch.tensor([0.95, 0.9, 0.85, 0.0]),
                               conditioning["positive"], conditioning["negative"], latent["samples"],
                               disable_pbar=True, seed=9)
    assert [e.dense for e in slot.last_run.evals] == [True, False, True]


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Per video block its self-attention, per fused pair the audio's attention to the video: every video token's
    keys, of one tower at a time (the high-noise tower's caches go when the low-noise one starts)."""
    policy = FixedPlanPolicy([None] + [torch.arange(8)[None]] * 4)
    patched, slot = apply_token_sparse(tiny_prism(seed=0), lambda run: policy, node="test")
    sample(patched, cfg)
    run = slot.last_run
    rows = 1 if cfg == 1.0 else 2
    per_token = 3 * TINY_WIDTH[5120] + 2 * TINY_WIDTH[1536]     # 3 video blocks, 2 fused pairs
    assert run.kv_planned_bytes == run.kv_peak_bytes == rows * TOKENS * per_token * 2 * 4


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    conditioning, latent = prepared()
    av_sampling.sampler_node_end_to_end(tiny_prism(seed=9), latent, conditioning, method, (FRAMES, HEIGHT, WIDTH),
                                        TOKENS)


def test_model_patch_nodes_under_ksampler():
    conditioning, latent = prepared()
    av_sampling.model_patch_nodes_under_ksampler(tiny_prism(seed=10), latent, conditioning, TOL)


def test_a_batch_of_videos_is_refused_before_sampling():
    conditioning, latent = prepared()
    video, audio = latent["samples"].unbind()
    latent = dict(latent, samples=type(latent["samples"])((video.repeat(2, 1, 1, 1, 1), audio.repeat(2, 1, 1))))
    with pytest.raises(SDiTInputError, match="one RoPE table"):
        ras_sample(tiny_prism(seed=0), latent_image=latent, **ras_args(steps=4, cfg=3.0, sample_ratio=0.4,
                                                                       reset_steps="", **conditioning))


@pytest.mark.parametrize("attention", ["prism_sparse", "prism_sparse_tail_safe"])
def test_prism_block_sparse_attention_is_refused_and_dense_is_not(attention):
    nodes_prism = importlib.import_module("comfy_extras.nodes_prism")
    conditioning, latent = prepared()
    model = tiny_prism(seed=0)
    args = ras_args(steps=4, cfg=3.0, sample_ratio=0.4, reset_steps="", **conditioning)
    with pytest.raises(SDiTInputError, match="Prism Sparse Attention Settings"):
        ras_sample(nodes_prism.PrismAttention().configure(model, attention, 0.75, 0.2)[0], latent_image=latent, **args)
    out, trace = ras_sample(nodes_prism.PrismAttention().configure(model, "dense", 0.75, 0.2)[0], latent_image=latent,
                            **args)
    assert any(not step.dense for step in trace.steps)
    assert all(torch.isfinite(part).all() for part in out["samples"].unbind())


def test_the_video_blocks_attend_densely_under_the_pack():
    """The video blocks are told not to use Prism's own block-sparse attention (an earlier form of the model used it
    by default: it would pass the K/V cache by); without the pack the model decides as before."""
    prism = importlib.import_module("comfy.ldm.prism.model")
    told = []
    forward = prism.SelfAttention.forward

    def recording(self, x, freqs, grid, sparse, options):
        told.append(sparse)
        return forward(self, x, freqs, grid, sparse, options)
    model = tiny_prism(seed=0)
    policy = FixedPlanPolicy([None] + [random_active(1, TOKENS, TOKENS // 3, seed=3)] * 4)
    with mock.patch.object(prism.SelfAttention, "forward", recording):
        sample(model, 1.0, steps=2)
        assert True in told
        told.clear()
        sample(apply_token_sparse(model, lambda run: policy, node="test")[0], 1.0, steps=2)
    assert told and not any(told)
