"""Helios (`comfy.ldm.helios.model.HeliosModel`, newest ComfyUI) on tiny random-weight instances of its real class
(CPU, fp32): the exactness set of test_video.py with the history the Helios nodes put in the conditioning (latents of
the video made so far at three scales, before the chunk's tokens, with their frame indices), with and without it, the
history's keys amplified or not; the memory plan; both sampler nodes and both Model Patch nodes end to end; and
ComfyUI's Helios Pyramid Sampler (two chunks, each a run per pyramid stage at the stage's size; its Euler and its
distilled model's sampler) with every token active and under both Model Patch nodes. The search index has the model's
file and the nodes' but not `model_base`'s part: a stand-in hands the model the conditioning's history and indices (the
names the Helios nodes set). Skipped where ComfyUI has no Helios."""
import dataclasses
import importlib.util
import logging
import math
import types

import pytest
import torch

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.supported_models_base

from comfyui_sdit.nodes.families import adapter_for
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from sdit_testkit import (assert_exact_on_active_tokens, build_tiny, ksample, ras_model_patch, sdit_model_patch,
                          text_conditioning)
from test_sdit_sampler import defaults as sdit_defaults
from test_memory_plan import sample_patched
from test_video import (SDIT_END_TO_END, assert_within, dense_then_sparse, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("comfy.ldm.helios") is None,
                                reason="this ComfyUI has no Helios")

FRAMES, HEIGHT, WIDTH = 5, 8, 12                  # an odd frame count, non-square frames (latent pixels)
TOKENS = FRAMES * (HEIGHT // 2) * (WIDTH // 2)    # 120
LONG, MID, SHORT = 4, 2, 1                        # history frames (the node's "16,2,1" made small), with a first frame
# history tokens: short 2 frames at the model's patch (48), mid 2 at twice it (6), long 4 at 4 times it (2, padded)
HISTORY_TOKENS = 2 * 4 * 6 + 1 * 2 * 3 + 1 * 1 * 2
TOL = 1e-5
TINY_HELIOS = dict(image_model="helios", num_attention_heads=4, attention_head_dim=16, in_channels=16,
                   out_channels=16, text_dim=32, freq_dim=32, ffn_dim=128, num_layers=3, rope_dim=(4, 6, 6))
CONDITION_KEYS = ("indices_hidden_states", "latents_history_short", "latents_history_mid", "latents_history_long",
                  "indices_latents_history_short", "indices_latents_history_mid", "indices_latents_history_long")


class HeliosStandIn(comfy.model_base.BaseModel):
    """model_base's part of Helios (not in the search index): a flow model handing the diffusion model the
    conditioning's history latents and frame indices as they are, batched with the rows."""

    def __init__(self, model_config, model_type=comfy.model_base.ModelType.FLOW, device=None):
        helios = importlib.import_module("comfy.ldm.helios.model")
        super().__init__(model_config, model_type, device=device, unet_model=helios.HeliosModel)

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        # `indices_once` (a test's choice): the frame indices one for the batch, which the model's RoPE broadcasts
        once = self.model_config.unet_config.get("indices_once", False)
        for name in CONDITION_KEYS:
            if kwargs.get(name) is not None:
                kind = comfy.conds.CONDConstant if once and name.startswith("indices") else comfy.conds.CONDRegular
                out[name] = kind(kwargs[name])
        return out


class TinyHeliosConfig(comfy.supported_models_base.BASE):
    unet_config = {"image_model": "helios"}
    unet_extra_config = {}
    sampling_settings = {"shift": 1.0}
    latent_format = comfy.latent_formats.Wan21
    supported_inference_dtypes = [torch.float32]

    def get_model(self, state_dict, prefix="", device=None):
        return HeliosStandIn(self, device=device)


def tiny_helios(seed, **overrides):
    return build_tiny(TinyHeliosConfig, dict(TINY_HELIOS, **overrides), seed)


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def history_values(frames=FRAMES, height=HEIGHT, width=WIDTH, seed=3):
    """What HeliosPyramidSampler sets for a chunk after a first frame and a video made so far: the history at three
    scales ([long | mid | first frame, short]) and every part's frame index, the chunk's after the history's."""
    long, mid, short = (randn(1, 16, n, height, width, seed=seed + i) for i, n in enumerate((LONG, MID, 1 + SHORT)))
    indices = torch.arange(1 + LONG + MID + SHORT + frames)[None]
    first, long_index, mid_index, short_index, chunk = indices.split([1, LONG, MID, SHORT, frames], dim=1)
    return dict(latents_history_long=long, latents_history_mid=mid, latents_history_short=short,
                indices_latents_history_long=long_index, indices_latents_history_mid=mid_index,
                indices_latents_history_short=torch.cat([first, short_index], dim=1), indices_hidden_states=chunk)


def helios_prompts(history=True, **shape):
    """Prompts of different lengths (two streams at cfg > 1), both with the chunk's history."""
    values = history_values(**shape) if history else {}
    return dict(positive=text_conditioning(1, 7, **values), negative=text_conditioning(2, 5, **values))


PROMPTS = {"history": lambda: helios_prompts(), "no history": lambda: helios_prompts(history=False)}
MODELS = {"plain": {}, "amplified history": dict(is_amplify_history=True),
          "indices once for the batch": dict(indices_once=True)}


def latent(batch=1):
    return torch.zeros(batch, 16, FRAMES, HEIGHT, WIDTH)


def test_helios_is_its_own_adapter():
    assert adapter_for(tiny_helios(seed=0), "test").names == ("Helios",)


def test_the_history_changes_every_frame():
    """The history matters to this tiny model in every frame of the chunk (so the tests below fail where its tokens
    are lost, or taken for the chunk's)."""
    model = tiny_helios(seed=4)
    without = ksample(model, latent(), seed=5, steps=3, **helios_prompts(history=False))
    with_history = ksample(model, latent(), seed=5, steps=3, **helios_prompts())
    assert (without - with_history).abs().amax(dim=(0, 1, 3, 4)).min().item() > 1e-3


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("prompts", sorted(PROMPTS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(model, prompts, batch, cfg):
    run = every_token_active(tiny_helios(seed=3, **MODELS[model]), latent(batch), cfg, PROMPTS[prompts](), TOKENS,
                             assert_within(TOL))
    assert run.grid == (FRAMES, HEIGHT // 2, WIDTH // 2)


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("prompts", sorted(PROMPTS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(model, prompts, batch, cfg):
    exact_on_a_third_of_the_tokens(tiny_helios(seed=4, **MODELS[model]), latent(batch), cfg, PROMPTS[prompts](),
                                   TOKENS)


def test_a_frame_with_no_running_token_and_one_with_all():
    frame = TOKENS // FRAMES
    active = torch.cat([torch.arange(frame, 2 * frame), torch.arange(3 * frame + 2, 3 * frame + 5)])
    by_stream = dense_then_sparse(tiny_helios(seed=6, is_amplify_history=True), latent(), active[None], 3.0,
                                  helios_prompts())
    assert_exact_on_active_tokens(by_stream, TOKENS)


@pytest.mark.parametrize("history", [True, False])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(history, cfg):
    """Every block's self-attention keeps the history's tokens and the chunk's (the text enters by cross-attention)."""
    run = sample_patched(tiny_helios(seed=0), latent(2), cfg, helios_prompts(history))
    rows = 2 if cfg == 1.0 else 4                  # batch 2; at cfg 3 the negative prompt's rows too
    tokens = TOKENS + (HISTORY_TOKENS if history else 0)
    assert run.kv_planned_bytes == run.kv_peak_bytes == 3 * rows * tokens * 64 * 2 * 4


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_helios(seed=7), {"samples": latent(2)}, helios_prompts(), method,
                                             TOKENS)
    assert trace.grid == (FRAMES, HEIGHT // 2, WIDTH // 2)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_helios(seed=8, is_amplify_history=True), {"samples": latent(2)},
                                     helios_prompts(), assert_within(TOL))


def pyramid_sampler(model, **options):
    """ComfyUI's Helios Text to Video and Helios Pyramid Sampler: two chunks of FRAMES latent frames, each sampled on a
    pyramid of two stages (a quarter of the tokens, then all) with CFG-Zero* (a pre-CFG function on a clone of the model),
    the second chunk after the first as its history. Returns the samples."""
    vae = types.SimpleNamespace(spacial_compression_encode=lambda: 8, latent_channels=16)
    prompts = dict(positive=text_conditioning(1, 7), negative=text_conditioning(2, 5))
    positive, negative, latent = nodes_helios().HeliosTextToVideo.execute(
        vae=vae, width=WIDTH * 8, height=HEIGHT * 8, length=(2 * FRAMES - 1) * 4 - 2, batch_size=1,
        history_sizes=f"{LONG},{MID},{SHORT}", **prompts).result
    settings = dict(add_noise=True, noise_seed=3, cfg=3.0, pyramid_steps="2,3", stage_range="0,0.5,1", distilled=False,
                    amplify_first_stage=False, gamma=1 / 3, history_sizes=f"{LONG},{MID},{SHORT}", keep_first_frame=True,
                    num_latent_frames_per_chunk=FRAMES, cfg_zero_star=True, use_zero_init=True, zero_steps=1,
                    skip_first_chunk=False)
    out = nodes_helios().HeliosPyramidSampler.execute(model=model, positive=positive, negative=negative,
                                                      latent_image=latent, **dict(settings, **options)).result[0]
    assert out["samples"].shape == (1, 16, 2 * FRAMES, HEIGHT, WIDTH)
    return out["samples"]


def nodes_helios():
    if importlib.util.find_spec("comfy_extras.nodes_helios") is None:
        pytest.skip("this ComfyUI has no Helios nodes")
    return importlib.import_module("comfy_extras.nodes_helios")


@pytest.mark.parametrize("distilled", [False, True])
def test_the_pyramid_sampler_runs_each_stage_afresh(distilled):
    """Each stage of each chunk is a run of its own at its size: its first step dense whatever the policy plans, every
    token active then == the model alone through both chunks (the distilled model's sampler too), the K/V cache of each
    run as the memory plan counts it (the history's tokens with the stage's)."""
    model = tiny_helios(seed=9)
    runs = []

    def every_token(run):
        runs.append(run)
        return FixedPlanPolicy([torch.arange(math.prod(run.grid)).expand(run.batch, -1)] * 8)
    reference = pyramid_sampler(model, distilled=distilled)
    patched, _ = apply_token_sparse(model, every_token, node="test")
    assert (pyramid_sampler(patched, distilled=distilled) - reference).abs().max().item() <= TOL
    assert [[e.dense for e in run.evals] for run in runs] == [[True, False], [True, False, False]] * 2
    assert [run.grid for run in runs] == [(FRAMES, HEIGHT // 4, WIDTH // 4), (FRAMES, HEIGHT // 2, WIDTH // 2)] * 2
    assert all(run.kv_planned_bytes == run.kv_peak_bytes > 0 for run in runs), "each stage's cache as planned"


@pytest.mark.parametrize("patch", ["RAS", "SDiT"])
def test_the_pyramid_sampler_under_a_model_patch_node(patch):
    model = tiny_helios(seed=10)
    reference = pyramid_sampler(model)
    if patch == "RAS":
        patched = ras_model_patch(model, 0.3, 1, "", 0.1, "std", False)[0]
    else:
        patched = sdit_model_patch(model, **sdit_defaults(**SDIT_END_TO_END))[0]
    out = pyramid_sampler(patched)
    assert torch.isfinite(out).all() and (out - reference).abs().max().item() > 1e-4
    assert torch.equal(pyramid_sampler(model), reference), "the model passed in is unchanged"


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_a_ten_step_stage_under_the_default_schedules(method):
    """The README's count: each pyramid stage is a run of its own, sampled with the Model Patch node's default schedule
    (RAS: 4 warm-up steps, resets at 0.4 and 0.67 of the run, so 4 of the node's 10 steps a stage sparse; SDiT: 3 warm-up
    steps and 1 cool-down, so at most 6, fewer where its drift check refreshes: exactly 6 with the check off); the first
    stage of the tiny video, a latent of 2x3 (odd: the patch does not tile it), is sampled by the model alone, as the
    log says."""
    from comfyui_sdit.nodes.ras_nodes import patch_ras, ras_config
    from comfyui_sdit.nodes.sdit_nodes import patch_sdit, sdit_config
    node = f"{method} Model Patch"
    model = tiny_helios(seed=12)

    def last_stage(patched_and_slot):
        patched, slot = patched_and_slot
        pyramid_sampler(patched, pyramid_steps="10,10,10", stage_range="0,0.333333,0.666667,1")
        assert slot.last_run.grid == (FRAMES, HEIGHT // 2, WIDTH // 2)      # the last chunk's last stage
        return [e.dense for e in slot.last_run.evals]
    if method == "RAS":
        assert last_stage(patch_ras(model, ras_config(node, 0.4)[0], node)).count(False) == 4
    else:
        config = sdit_config(node, 0.4)[0]
        dense = last_stage(patch_sdit(model, config, node))
        assert dense[:3] == [True] * 3 and dense[-1] and dense.count(False) <= 6
        assert last_stage(patch_sdit(model, dataclasses.replace(config, drift_threshold=0.0), node)).count(False) == 6


def test_a_stage_the_patch_does_not_tile_is_sampled_by_the_model_alone(caplog):
    """The Pyramid Sampler's smaller stages halve the latent: an odd size (2x3 here) the model pads, the engine's token
    grid cannot tile. Under a Model Patch node that run is the model's own (the others region-adaptive), and the log
    says so; the sampler nodes refuse such a latent before sampling."""
    model = tiny_helios(seed=13)
    patched = ras_model_patch(model, 1.0, 1, "", 0.1, "std", False)[0]
    with caplog.at_level(logging.WARNING):
        out = pyramid_sampler(patched, pyramid_steps="2,2,2", stage_range="0,0.333333,0.666667,1")
    assert (out - pyramid_sampler(model, pyramid_steps="2,2,2", stage_range="0,0.333333,0.666667,1")).abs().max() <= TOL
    assert caplog.text.count("this run's latent (2x3) is not a multiple of the model's patch size 2: the model samples "
                             "it alone") == 2             # the first stage of each chunk
