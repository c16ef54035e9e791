"""RAS end-to-end on ComfyUI's real Flux class (tiny, random weights) through the pack's nodes."""
import importlib

import pytest
import torch

from comfyui_sdit.nodes.errors import SDiTInputError
from sdit_testkit import flux_conditioning, ras_model_patch, ras_sample, tiny_flux, tiny_sd15

comfy_nodes = importlib.import_module("nodes")   # ComfyUI's nodes.py

TOL = 1e-5


def ras_args(**overrides):
    args = dict(seed=3, steps=8, cfg=1.0, sampler_name="euler", scheduler="simple",
                positive=flux_conditioning(1), negative=flux_conditioning(2), denoise=1.0,
                sample_ratio=0.5, warmup_steps=2, reset_steps="5", starvation_scale=0.1, metric="std",
                dynamic_ratio=False)
    args.update(overrides)
    return args


def latent(batch=1, h=16, w=16):
    return {"samples": torch.zeros(batch, 16, h, w)}


def plain_ksampler(model, a, lat):
    return comfy_nodes.KSampler().sample(model, a["seed"], a["steps"], a["cfg"], a["sampler_name"], a["scheduler"],
                                         a["positive"], a["negative"], lat, denoise=a["denoise"])[0]["samples"]


@pytest.mark.parametrize("cfg,batch", [(1.0, 1), (3.5, 2)])
def test_ratio_one_reproduces_plain_ksampler(cfg, batch):
    model = tiny_flux(seed=11)
    a = ras_args(cfg=cfg, sample_ratio=1.0)
    lat = latent(batch, 16, 24)
    out, trace = ras_sample(model, latent_image=lat, **a)
    reference = plain_ksampler(model, a, lat)
    assert (out["samples"] - reference).abs().max().item() <= TOL
    assert trace.tokens_per_step == [8 * 12] * 8


def test_half_ratio_trace_counts_tokens_exactly():
    model = tiny_flux(seed=12)
    out, trace = ras_sample(model, latent_image=latent(1, 16, 16), **ras_args())
    n_tokens = 64
    expected = [64 if step in (0, 1, 5) else 32 for step in range(8)]
    assert trace.tokens_per_step == expected
    assert [s.dense for s in trace.steps] == [step in (0, 1, 5) for step in range(8)]
    assert [int(s.active.sum()) for s in trace.steps] == expected
    assert trace.work_fraction == pytest.approx(sum(expected) / (8 * n_tokens))
    assert int(trace.update_count.sum()) == sum(expected)
    # a metric map per evaluation, on the token grid
    assert all(s.metric is not None and s.metric.shape == (1, 8, 8) for s in trace.steps)
    assert torch.isfinite(out["samples"]).all()


def test_temporal_continuity_uses_previous_output_metric():
    """The set computed at step t+1 is the top of the score map from step t's output."""
    model = tiny_flux(seed=13)
    _, trace = ras_sample(model, latent_image=latent(1, 16, 16), **ras_args(starvation_scale=0.0))
    for prev, step in zip(trace.steps, trace.steps[1:]):
        if step.dense:
            continue
        std = prev.metric.float().flatten()
        expected = torch.sort(-torch.log(std), descending=True, stable=True).indices[:32].sort().values
        assert torch.equal(step.active.flatten().nonzero().flatten(), expected)


def test_cfg_batch_two_masks_differ_per_image():
    model = tiny_flux(seed=14)
    out, trace = ras_sample(model, latent_image=latent(2, 16, 16), **ras_args(cfg=4.0, dynamic_ratio=True))
    sparse = [s for s in trace.steps if not s.dense]
    assert sparse and all(s.active.shape == (2, 8, 8) for s in sparse)
    assert any(not torch.equal(s.active[0], s.active[1]) for s in sparse)
    assert all(int(s.active[0].sum()) == int(s.active[1].sum()) for s in sparse)


@pytest.mark.parametrize("sampler,scheduler", [("heun", "normal"), ("dpmpp_2m", "karras"), ("uni_pc", "sgm_uniform"),
                                               ("deis", "beta"), ("res_multistep", "exponential")])
def test_runs_with_any_deterministic_sampler_and_scheduler(sampler, scheduler):
    model = tiny_flux(seed=15)
    out, trace = ras_sample(model, latent_image=latent(1, 16, 16),
                                     **ras_args(sampler_name=sampler, scheduler=scheduler, steps=6))
    assert torch.isfinite(out["samples"]).all()
    assert any(not s.dense for s in trace.steps) and trace.work_fraction < 1.0


def test_model_patch_with_ksampler_advanced_and_custom_sampling():
    model = tiny_flux(seed=16)
    a = ras_args(sample_ratio=1.0)
    (patched,) = ras_model_patch(model, 1.0, 2, "5", 0.1, "std", False)
    lat = latent(1, 16, 16)
    advanced = comfy_nodes.KSamplerAdvanced().sample(
        patched, "enable", a["seed"], 8, 1.0, "euler", "simple", a["positive"], a["negative"], lat, 0, 10000, "disable")[0]
    reference = plain_ksampler(model, a, lat)
    assert (advanced["samples"] - reference).abs().max().item() <= TOL
    # sparse (0.5) through SamplerCustomAdvanced completes
    custom = importlib.import_module("comfy_extras.nodes_custom_sampler")
    (patched_half,) = ras_model_patch(model, 0.5, 2, "", 0.1, "std", True)
    guider = custom.BasicGuider.execute(patched_half, a["positive"])[0]
    sampler = custom.KSamplerSelect.execute("euler")[0]
    sigmas = custom.BasicScheduler.execute(patched_half, "simple", 8, 1.0)[0]
    noise = custom.RandomNoise.execute(5)[0]
    result = custom.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, lat)[0]
    assert torch.isfinite(result["samples"]).all()


def test_original_model_untouched_by_the_node():
    model = tiny_flux(seed=17)
    a = ras_args(cfg=2.0)
    lat = latent(1, 16, 16)
    before = plain_ksampler(model, a, lat)
    ras_sample(model, latent_image=lat, **a)
    after = plain_ksampler(model, a, lat)
    assert torch.equal(before, after)


def test_clear_errors():
    model = tiny_flux(seed=18)
    with pytest.raises(SDiTInputError, match=r"RAS Sampler: input 'sample_ratio'.*outside \[0.01, 1.0\]"):
        ras_sample(model, latent_image=latent(), **ras_args(sample_ratio=0.0))
    with pytest.raises(SDiTInputError, match=r"RAS Sampler: input 'latent_image'.*multiple of the model's patch size 2"):
        ras_sample(model, latent_image=latent(1, 15, 16), **ras_args())
    with pytest.raises(SDiTInputError, match=r"RAS Options: input 'reset_steps'"):
        ras_sample(model, latent_image=latent(), **ras_args(reset_steps="soon"))
    unet = tiny_sd15()
    for call in (lambda: ras_sample(unet, latent_image={"samples": torch.zeros(1, 4, 8, 8)}, **ras_args()),
                 lambda: ras_model_patch(unet, 0.5, 4, "", 0.1, "std", True)):
        with pytest.raises(SDiTInputError, match=r"UNetModel.*not supported.*Flux"):
            call()


def test_dynamic_spread_input_shapes_the_schedule():
    model = tiny_flux(seed=19)
    a = ras_args(dynamic_ratio=True, reset_steps="", steps=8, warmup_steps=2)
    _, flat = ras_sample(model, latent_image=latent(1, 16, 16), dynamic_spread=0.0, **a)
    _, steep = ras_sample(model, latent_image=latent(1, 16, 16), dynamic_spread=0.5, **a)
    assert flat.tokens_per_step[2:] == [32] * 6
    assert steep.tokens_per_step[2] == 48 and steep.tokens_per_step[-1] == 16
    assert sum(steep.tokens_per_step[2:]) == 32 * 6
    with pytest.raises(SDiTInputError, match="dynamic_spread"):
        ras_sample(model, latent_image=latent(), dynamic_spread=1.5, **a)


def test_kv_cache_input_fp8_samples_close_and_a_bad_value_is_named():
    model = tiny_flux(seed=11)
    a = ras_args(cfg=3.5)
    exact, _ = ras_sample(model, latent_image=latent(1), **a)
    fp8, trace = ras_sample(model, latent_image=latent(1), kv_cache="fp8_e4m3", **a)
    error = ((fp8["samples"] - exact["samples"]).norm() / exact["samples"].norm()).item()
    assert 0 < error < 5e-2, error
    with pytest.raises(SDiTInputError, match=r"RAS Options: input 'kv_cache': 'int8' is not one of model dtype, fp8_e4m3"):
        ras_sample(model, latent_image=latent(1), kv_cache="int8", **a)


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_sde", "lcm"])
def test_samplers_that_add_fresh_noise_run_dense_and_say_so(sampler, caplog, monkeypatch):
    """RAS's reused outputs cannot follow a sampler that adds fresh noise every step (15-29 dB measured):
    the run is dense, equal to KSampler, and the log and the after-run line say why."""
    from comfyui_sdit.nodes import live_progress
    model = tiny_flux(seed=17)
    a = ras_args(sampler_name=sampler)
    lat = latent(1)
    sent = []
    monkeypatch.setattr(live_progress, "server_send", lambda event, data: sent.append((event, data)))
    with caplog.at_level("WARNING"):
        out, trace = ras_sample(model, latent_image=lat, unique_id="7", **a)
    assert all(s.dense for s in trace.steps)
    assert (out["samples"] - plain_ksampler(model, a, lat)).abs().max().item() <= TOL
    assert f"sampler {sampler} adds fresh noise" in caplog.text
    summaries = [d for e, d in sent if e == live_progress.SUMMARY_EVENT]
    assert summaries and "ran dense" in summaries[-1]["note"]


@pytest.mark.parametrize("steps", [1, 4])
def test_a_schedule_dense_at_every_step_keeps_no_cache_and_says_so(steps, caplog, monkeypatch):
    """A few-step model (Flux schnell's 4 steps) under RAS's default schedule, set for the paper's 28-30 steps (4
    warm-up steps, resets at 0.4 and 0.67): every step is dense. The run equals KSampler, plans and keeps no K/V cache
    (a GPU with room for none samples), and the log and the after-run line say why and which inputs to lower."""
    from comfyui_sdit.nodes import live_progress
    from comfyui_sdit.sdit_core.ras import RASConfig
    from test_memory_plan import FakeDevice
    device = FakeDevice(monkeypatch, total=1024, free=1024)
    d = RASConfig()
    a = ras_args(steps=steps, warmup_steps=d.warmup_steps, reset_steps=", ".join(map(str, d.reset_steps)))
    lat = latent(1)
    sent = []
    monkeypatch.setattr(live_progress, "server_send", lambda event, data: sent.append((event, data)))
    with caplog.at_level("WARNING"):
        out, trace = ras_sample(tiny_flux(seed=17), latent_image=lat, unique_id="7", **a)
    assert all(s.dense for s in trace.steps) and len(trace.steps) == steps
    assert (out["samples"] - plain_ksampler(tiny_flux(seed=17), a, lat)).abs().max().item() <= TOL
    made_of = "1 warm-up" if steps == 1 else "4 warm-up"        # a 4-step run's resets fall on warm-up steps
    said = f"the RAS schedule runs every step of this {steps}-step run dense ({made_of}); for a few-step model lower "
    assert said + "warmup_steps in RAS Options (no speed-up)" in caplog.text
    assert said + "warmup_steps in RAS Options" == [d for e, d in sent if e == live_progress.SUMMARY_EVENT][-1][
        "note"].removeprefix("ran dense: ")
    # one step fewer of warm-up than steps: a sparse step (with its cache), and nothing said
    device.total = device.free = 1 << 30
    caplog.clear()
    with caplog.at_level("WARNING"):
        _, trace = ras_sample(tiny_flux(seed=17), latent_image=lat, **dict(a, steps=5, reset_steps=""))
    assert [s.dense for s in trace.steps] == [True] * 4 + [False] and "schedule" not in caplog.text


def test_deterministic_samplers_still_run_sparse():
    model = tiny_flux(seed=18)
    _, trace = ras_sample(model, latent_image=latent(1), **ras_args(sampler_name="dpmpp_2m"))
    assert any(not s.dense for s in trace.steps)


def test_every_node_states_the_same_ratio_range_and_widget_range():
    """sample_ratio: one range in the widgets and in the error of every node (0.005 is below all of them)."""
    from comfyui_sdit.nodes.ras_nodes import RASModelPatch, RASSampler
    from comfyui_sdit.nodes.sdit_nodes import SDiTModelPatch, SDiTSampler
    from sdit_testkit import sdit_model_patch, sdit_sample
    model = tiny_flux(seed=18)
    for cls in (RASSampler, RASModelPatch, SDiTSampler, SDiTModelPatch):
        spec = cls.INPUT_TYPES()["required"]["sample_ratio"][1]
        assert (spec["min"], spec["max"]) == (0.01, 1.0)
    a = ras_args(sample_ratio=0.005)
    calls = {"RAS Sampler": lambda: ras_sample(model, latent_image=latent(), **a),
             "RAS Model Patch": lambda: ras_model_patch(model, 0.005),
             "SDiT Sampler": lambda: sdit_sample(model, 0, 4, 1.0, "euler", "simple", a["positive"], a["negative"],
                                                 latent(), 1.0, sample_ratio=0.005),
             "SDiT Model Patch": lambda: sdit_model_patch(model, 0.005)}
    for node, call in calls.items():
        with pytest.raises(SDiTInputError) as error:
            call()
        assert str(error.value) == f"{node}: input 'sample_ratio': 0.005 is outside [0.01, 1.0]"


def test_options_node_of_the_other_method_is_refused_by_name():
    from comfyui_sdit.nodes.ras_nodes import RASSampler
    from comfyui_sdit.nodes.sdit_nodes import SDiTOptions
    a = ras_args()
    a = {k: a[k] for k in ("seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative", "denoise")}
    sdit_options = SDiTOptions().build(**{})[0]
    with pytest.raises(SDiTInputError, match=r"RAS Sampler: input 'options': expected the output of a RAS Options "
                                             r"node, got SDiT Options"):
        RASSampler().sample(tiny_flux(seed=18), latent_image=latent(), sample_ratio=0.5, options=sdit_options, **a)


def test_options_node_defaults_equal_the_samplers_defaults():
    """A sampler without an Options node and one with a default Options node configure the same run."""
    from comfyui_sdit.nodes.ras_nodes import RASOptions, ras_config
    from comfyui_sdit.nodes.sdit_nodes import SDiTOptions, sdit_config
    from comfyui_sdit.sdit_core.ras import RASConfig
    from comfyui_sdit.sdit_core.sdit import SDiTConfig
    assert ras_config("RAS Sampler", 0.3, None) == ras_config("RAS Sampler", 0.3, RASOptions().build()[0])
    assert ras_config("RAS Sampler", 0.3, None)[0] == RASConfig(sample_ratio=0.3)
    assert sdit_config("SDiT Sampler", 0.3, None) == sdit_config("SDiT Sampler", 0.3, SDiTOptions().build()[0])
    assert sdit_config("SDiT Sampler", 0.3, None)[0] == SDiTConfig(sample_ratio=0.3)
