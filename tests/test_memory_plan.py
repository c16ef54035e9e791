"""The K/V cache in ComfyUI's memory plan (nodes/memory_plan.py), on tiny instances of ComfyUI's real classes:
the size planned before sampling is what the run's caches hold once every stream stored its dense step;
where it does not fit beside the loaded weights, ComfyUI's loader is asked again with it added; a cache
larger than the device is refused before anything loads."""
import logging

import pytest
import torch

import comfy.model_management

from comfyui_sdit.nodes import memory_plan
from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.engine import OUTGREW_PLAN
from comfyui_sdit.sdit_core.kv_cache import cache_bytes
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from sdit_testkit import (FAMILIES, flux_conditioning, ksample, ras_sample, sdit_sample, tiny_flux, tiny_hunyuan_video,
                          tiny_wan, tiny_wan22_ti2v, tiny_wan_i2v)
from test_video import conds as wan_conds, hunyuan_conds, i2v_conds, video_latent

GiB = 2 ** 30
OUTGREW = OUTGREW_PLAN.split("{planned}")[1].split(":")[0]      # " planned with ComfyUI's memory"


def image_case(family):
    spec = FAMILIES[family]
    return spec.build, lambda batch: spec.latent(batch, *spec.same_grid((8, 12))), \
        lambda: dict(positive=spec.positive(), negative=spec.negative())


VIDEO = {"wan": (tiny_wan, lambda batch: video_latent(batch), wan_conds),
         "wan22-ti2v": (tiny_wan22_ti2v, lambda batch: video_latent(batch, channels=48), wan_conds),
         # image-to-video: the image by channels and CLIP-vision tokens in cross-attention, no cached tokens
         "wan-i2v": (tiny_wan_i2v, lambda batch: video_latent(batch), i2v_conds),
         "hunyuan-video": (tiny_hunyuan_video, lambda batch: video_latent(batch), hunyuan_conds)}
CASES = {**{family: image_case(family) for family in sorted(FAMILIES)}, **VIDEO}


def sample_patched(model, latent, cfg, conds, kv_cache=None, steps=2, wrap=lambda patched: patched, **sampling):
    """Samples with a dense step, then sparse ones; returns the finished run. `wrap`: nodes after the patch."""
    def plans(run):
        sparse = torch.arange(8).expand(run.batch, -1)
        return FixedPlanPolicy([None] + [sparse] * (steps - 1))
    patched, slot = apply_token_sparse(model, plans, node="test", kv_cache=kv_cache)
    ksample(wrap(patched), latent, steps=steps, cfg=cfg, **conds, **sampling)
    return slot.last_run


@pytest.mark.parametrize("family", sorted(CASES))
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(family, cfg):
    """Every family, batch 2: at cfg 1 the negative prompt is not evaluated (half the rows), at cfg 3 it is,
    batched with the positive one (one stream) or, prompts of other lengths, on its own (two)."""
    build, latent, conds = CASES[family]
    run = sample_patched(build(seed=0), latent(2), cfg, conds())
    assert run.kv_peak_bytes > 0
    assert run.kv_planned_bytes == run.kv_peak_bytes


def flux_run(kv_cache=None):
    return sample_patched(tiny_flux(seed=0), FAMILIES["flux"].latent(2, 8, 12), 3.0,
                          dict(positive=flux_conditioning(1), negative=flux_conditioning(2)), kv_cache=kv_cache)


def test_planned_fp8_cache_is_what_the_streams_hold():
    run = flux_run(kv_cache="fp8_e4m3")
    assert run.kv_planned_bytes == run.kv_peak_bytes
    assert run.kv_planned_bytes < flux_run().kv_planned_bytes / 3     # fp32 here: 4 bytes a value, then 1 (+ scales)


def with_values(conditioning, **values):
    """A prompt with more values in its dict (references, ...)."""
    return [[text, dict(extra, **values)] for text, extra in conditioning]


def flux_prompts(positive_tokens, negative_tokens, **values):
    return dict(positive=with_values(flux_conditioning(1, positive_tokens), **values),
                negative=with_values(flux_conditioning(2, negative_tokens), **values))


def test_prompts_of_other_lengths_are_planned_at_their_own_lengths():
    """DiTs' prompts are plain conditions in ComfyUI (CONDRegular, not the UNets' CONDCrossAttn, which repeats
    prompts to a common length to batch them): prompts of other lengths run apart, each at its own length."""
    latent = FAMILIES["flux"].latent(2, 8, 12)
    for lengths in [(6, 4), (7, 5), (4, 8)]:
        run = sample_patched(tiny_flux(seed=0), latent, 3.0, flux_prompts(*lengths))
        assert run.kv_planned_bytes == run.kv_peak_bytes


@pytest.mark.parametrize("family,reference", [("flux", torch.zeros(1, 16, 6, 10)),
                                              ("qwen_image", torch.zeros(1, 16, 1, 6, 10))])
def test_reference_tokens_are_planned(family, reference):
    """Flux Kontext / Flux 2 and Qwen-Image-Edit references (`reference_latents`, any size) follow the
    image's tokens in the sequence the cache holds; prompts with references of other sizes run apart."""
    spec = FAMILIES[family]
    latent = spec.latent(2, 8, 12)
    prompts = dict(positive=with_values(spec.positive(), reference_latents=[reference]),
                   negative=with_values(spec.negative(), reference_latents=[reference[..., :4, :4], reference]))
    run = sample_patched(spec.build(seed=0), latent, 3.0, prompts)
    without = sample_patched(spec.build(seed=0), latent, 3.0, dict(positive=spec.positive(), negative=spec.negative()))
    assert run.kv_planned_bytes == run.kv_peak_bytes > without.kv_peak_bytes


def test_wan_subject_frames_are_planned():
    """Phantom's subject frames (`time_dim_concat`) follow the video's in time."""
    subject = torch.zeros(1, 16, 2, 8, 12)
    run = sample_patched(tiny_wan(seed=0), video_latent(2), 3.0, wan_conds(time_dim_concat=subject))
    assert run.kv_planned_bytes == run.kv_peak_bytes > sample_patched(tiny_wan(seed=0), video_latent(2), 3.0,
                                                                      wan_conds()).kv_peak_bytes


def test_wan_in_context_latents_are_planned():
    import inspect
    import comfy.ldm.wan.model
    if "context_latents" not in inspect.getsource(comfy.ldm.wan.model.WanModel.forward_orig):
        pytest.skip("this ComfyUI's Wan has no in-context references")
    run = sample_patched(tiny_wan(seed=0), video_latent(2), 3.0,
                         wan_conds(context_latents=[torch.zeros(1, 16, 1, 8, 8), torch.zeros(1, 16, 2, 6, 6)]))
    assert run.kv_planned_bytes == run.kv_peak_bytes > sample_patched(tiny_wan(seed=0), video_latent(2), 3.0,
                                                                      wan_conds()).kv_peak_bytes


def test_area_prompts_run_dense_on_their_crop_and_keep_no_cache():
    """A prompt set to an area (ComfyUI's ConditioningSetArea) runs on its crop of the latent, which no plan
    covers: always dense, so it keeps no cache (nothing would read it). The plan counts it whole (more)."""
    import importlib
    comfy_nodes = importlib.import_module("nodes")      # ComfyUI's nodes.py
    area = comfy_nodes.ConditioningSetArea().append(flux_conditioning(3), 32, 32, 16, 16, 1.0)[0]
    with_area = comfy_nodes.ConditioningCombine().combine(flux_conditioning(1), area)[0]
    latent = FAMILIES["flux"].latent(1, 8, 12)
    run = sample_patched(tiny_flux(seed=0), latent, 3.0, dict(positive=with_area, negative=flux_conditioning(2)),
                         steps=3)
    plain = sample_patched(tiny_flux(seed=0), latent, 3.0, dict(positive=flux_conditioning(1),
                                                                negative=flux_conditioning(2)), steps=3)
    crops = [c for e in run.evals for c in e.calls if c.grid_tokens != 24]
    assert crops and all(c.dense and c.grid_tokens == 4 for c in crops)          # a 4 x 4 latent crop: 2 x 2 tokens
    assert run.kv_peak_bytes == plain.kv_peak_bytes <= run.kv_planned_bytes
    # every token active, the area prompt included, is KSampler's result
    prompts = dict(positive=with_area, negative=flux_conditioning(2))
    patched, _ = apply_token_sparse(tiny_flux(seed=0), lambda run: FixedPlanPolicy(
        [None] + [torch.arange(24).expand(run.batch, -1)] * 2), node="test")
    assert (ksample(patched, latent, steps=3, cfg=3.0, **prompts)
            - ksample(tiny_flux(seed=0), latent, steps=3, cfg=3.0, **prompts)).abs().max().item() <= 1e-5


def test_a_run_dense_throughout_plans_and_keeps_no_cache(monkeypatch):
    """A sampler that adds fresh noise every step runs dense throughout (sampler_support.dense_reason):
    nothing would read a cache, so none is kept and no weights are offloaded for one."""
    device = FakeDevice(monkeypatch, total=80 * GiB, free=0)
    prompts = dict(positive=flux_conditioning(1), negative=flux_conditioning(2))
    latent = FAMILIES["flux"].latent(1, 8, 12)
    run = sample_patched(tiny_flux(seed=0), latent, 3.0, prompts, steps=3, sampler="euler_ancestral")
    assert run.dense_only and all(c.dense for e in run.evals for c in e.calls)
    assert run.kv_planned_bytes == run.kv_peak_bytes == 0 and len(device.loads) == 1
    assert flux_run().kv_peak_bytes > 0                      # a sampler it follows keeps one


def test_caches_that_outgrow_the_plan_are_said_once(caplog):
    """Skip Layer Guidance (ComfyUI's node) evaluates a perturbed network of the positive prompt for part of
    the run, a stream of its own that no plan made before sampling sees: the log says so, once."""
    import importlib
    slg = importlib.import_module("comfy_extras.nodes_slg").SkipLayerGuidanceDiT
    prompts = dict(positive=flux_conditioning(1), negative=flux_conditioning(2))
    latent = FAMILIES["flux"].latent(1, 8, 12)

    def guided(model):
        return slg.execute(model, 3.0, 0.0, 0.5, "1", "1", 0.0)[0]
    with caplog.at_level(logging.WARNING):
        plain = sample_patched(tiny_flux(seed=0), latent, 3.0, prompts, steps=4)
    assert plain.kv_planned_bytes == plain.kv_peak_bytes and OUTGREW not in caplog.text
    with caplog.at_level(logging.WARNING):
        run = sample_patched(tiny_flux(seed=0), latent, 3.0, prompts, steps=4, wrap=guided)
    assert run.kv_planned_bytes == plain.kv_planned_bytes < run.kv_peak_bytes
    assert caplog.text.count(OUTGREW) == 1


def test_cache_bytes_counts_rows_tokens_channels_and_fp8_scales():
    layers = [(10, 8), (4, 8)]
    assert cache_bytes(layers, rows=3, value_bytes=2) == 2 * 3 * 8 * (10 + 4) * 2
    assert cache_bytes(layers, rows=3, value_bytes=2, store="fp8_e4m3") == 2 * 3 * 8 * ((10 + 2) + (4 + 2))


class FakeDevice:
    """What ComfyUI reports of a GPU, for the plan (the models stay on the CPU)."""

    def __init__(self, monkeypatch, total, free):
        self.total, self.free = total, free
        monkeypatch.setattr(memory_plan, "device_memory", lambda device: (self.total, self.free))
        self.loads = []
        real_load = comfy.model_management.load_models_gpu

        def recording_load(models, memory_required=0, minimum_memory_required=None, **kwargs):
            self.loads.append((list(models), memory_required, minimum_memory_required))
            return real_load(models, memory_required=memory_required, minimum_memory_required=minimum_memory_required,
                             **kwargs)
        monkeypatch.setattr(comfy.model_management, "load_models_gpu", recording_load)


def test_the_loader_is_asked_again_with_the_cache_where_it_does_not_fit(monkeypatch):
    device = FakeDevice(monkeypatch, total=80 * GiB, free=0)
    run = flux_run()
    assert len(device.loads) == 2
    (first_models, required, minimum), (models, required_again, minimum_again) = device.loads
    assert models == first_models                                # the same models: the run's
    assert required_again == required + run.kv_planned_bytes     # ComfyUI's own estimate, plus the cache
    assert minimum < required and minimum_again == required_again     # room for the batched forward and the cache


def test_the_loader_is_asked_once_where_the_cache_fits(monkeypatch):
    device = FakeDevice(monkeypatch, total=80 * GiB, free=80 * GiB)
    flux_run()
    assert len(device.loads) == 1


def test_dynamic_vram_is_left_to_stage_weights_itself(monkeypatch):
    """ComfyUI with dynamic VRAM stages weights on demand, not by plan."""
    device = FakeDevice(monkeypatch, total=80 * GiB, free=0)
    monkeypatch.setattr(memory_plan, "dynamic_vram", lambda patcher: True)
    flux_run()
    assert len(device.loads) == 1


def test_a_cache_larger_than_the_device_is_refused_before_anything_loads(monkeypatch):
    planned = flux_run().kv_planned_bytes
    device = FakeDevice(monkeypatch, total=planned - 1, free=planned - 1)
    with pytest.raises(SDiTInputError, match=r"test: input 'kv_cache': this run's K/V cache .* needs .*, more than all "
                                             r".* Use kv_cache fp8_e4m3 .*KSampler"):
        flux_run()
    assert device.loads == []
    device.total = planned                                       # exactly fits: samples
    flux_run()
    assert len(device.loads) == 2



def test_a_windowed_video_s_refusal_names_its_context_windows(monkeypatch):
    from test_video_windows import with_windows
    FakeDevice(monkeypatch, total=1024, free=1024)
    with pytest.raises(SDiTInputError, match=r"Use kv_cache fp8_e4m3 .*, a smaller latent, fewer or shorter context "
                                             r"windows or a smaller batch"):
        sample_patched(with_windows(tiny_wan(seed=0)), video_latent(1, frames=7), 1.0, wan_conds())


@pytest.mark.parametrize("node,sample", [("RAS Sampler", ras_sample), ("SDiT Sampler", sdit_sample)])
def test_the_sampler_nodes_refuse_it_in_their_own_name(monkeypatch, node, sample):
    device = FakeDevice(monkeypatch, total=1024, free=1024)
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    with pytest.raises(SDiTInputError, match=rf"^{node}: input 'kv_cache': this run's K/V cache"):
        sample(tiny_flux(seed=0), 0, 8, 1.0, "euler", "simple", flux_conditioning(1), flux_conditioning(2), latent, 1.0,
               sample_ratio=0.5)
    assert device.loads == []


def test_a_model_the_plan_cannot_read_samples_unplanned(monkeypatch, caplog):
    """A newer ComfyUI that renamed what an adapter reads for the plan: the run samples, without the plan."""
    from comfyui_sdit.nodes.families.flux import FluxFamily

    def renamed(self, diffusion_model, image_tokens, text_tokens, values):
        return [(text_tokens + image_tokens, diffusion_model.renamed_width)]
    monkeypatch.setattr(FluxFamily, "kv_cache_layers", renamed)
    device = FakeDevice(monkeypatch, total=80 * GiB, free=0)
    run = flux_run()
    assert run.kv_planned_bytes == 0 < run.kv_peak_bytes
    assert len(device.loads) == 1 and "left out of ComfyUI's memory plan" in caplog.text


def test_the_device_memory_planned_with_leaves_out_what_comfyui_reserves(monkeypatch):
    """ComfyUI keeps --reserve-vram out of all its plans; the cache's plan does too."""
    mm = comfy.model_management
    monkeypatch.setattr(mm, "is_device_cpu", lambda device: False)
    monkeypatch.setattr(mm, "get_total_memory", lambda device: 24 * GiB)
    monkeypatch.setattr(mm, "get_free_memory", lambda device: 10 * GiB)
    monkeypatch.setattr(mm, "extra_reserved_memory", lambda: 2 * GiB)
    assert memory_plan.device_memory("cuda:0") == (22 * GiB, 8 * GiB)
    monkeypatch.setattr(mm, "is_device_cpu", lambda device: True)
    assert memory_plan.device_memory("cpu") is None
