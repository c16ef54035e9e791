"""SDiT end-to-end on ComfyUI's real Flux class (tiny, random weights), and the visualisation nodes."""
import importlib

import numpy as np
import pytest
import torch

from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.sdit_nodes import SAMPLE_RATIO_INPUT, SDIT_OPTIONS
from comfyui_sdit.nodes.visual_nodes import ComplexityMap, RegionVisualizer, _mask_caption
from comfyui_sdit.nodes.visualize import with_legend
from comfyui_sdit.sdit_core.trace import longest_skip
from comfyui_sdit.sdit_core.ratio_schedule import ssd_counts
from comfyui_sdit.sdit_core.segmentation.contiguity import split_disconnected
from sdit_testkit import flux_conditioning, sdit_model_patch, sdit_sample, tiny_flux

comfy_nodes = importlib.import_module("nodes")
TOL = 1e-5


def defaults(**overrides):
    values = {"sample_ratio": SAMPLE_RATIO_INPUT["sample_ratio"][1]["default"],
              **{name: spec[1].get("default") for name, (spec, _) in SDIT_OPTIONS.items()}}
    values.update(overrides)
    return values


def run(model, batch=1, h=16, w=16, steps=10, cfg=1.0, seed=2, **overrides):
    latent = {"samples": torch.zeros(batch, 16, h, w)}
    return sdit_sample(model, seed, steps, cfg, "euler", "simple", flux_conditioning(1), flux_conditioning(2),
                                latent, 1.0, **defaults(**overrides))


def test_ratio_one_reproduces_plain_ksampler():
    model = tiny_flux(seed=21)
    out, trace = run(model, h=16, w=24, steps=8, cfg=3.0, sample_ratio=1.0, drift_threshold=0.0)
    reference = comfy_nodes.KSampler().sample(model, 2, 8, 3.0, "euler", "simple", flux_conditioning(1),
                                              flux_conditioning(2), {"samples": torch.zeros(1, 16, 16, 24)})[0]
    assert (out["samples"] - reference["samples"]).abs().max().item() <= TOL
    assert any(not s.dense for s in trace.steps), "the sparse path ran (all tokens active)"


def test_trace_token_counts_follow_the_ssd_schedule_exactly():
    model = tiny_flux(seed=22)
    _, trace = run(model, steps=12, drift_threshold=0.0, warmup_steps=2, cooldown_steps=1, dilation_mode="inside",
                   drift_probes=0.0, max_skip_age=0)
    dense = {0, 1, 11}
    expected_sparse = ssd_counts([s for s in range(12) if s not in dense], 12, 64, 0.5, 0.5)
    expected = [64 if s in dense else expected_sparse[s] for s in range(12)]
    assert trace.tokens_per_step == expected
    assert [int(s.active.sum()) for s in trace.steps] == expected
    assert trace.work_fraction == pytest.approx(sum(expected) / (12 * 64))
    for s in trace.steps:                                    # labels per step, contiguous regions
        assert s.labels is not None and s.labels.shape == (1, 8, 8)
        assert torch.equal(split_disconnected(s.labels[0].long()), s.labels[0].long())
        assert s.metric is not None and s.metric.shape == (1, 8, 8)
    assert [s.reason for s in trace.steps][:3] == ["warm-up", "warm-up", "sparse"]
    assert trace.steps[-1].reason == "cool-down"


@pytest.mark.parametrize("backend", ["hnsw", "skimage"])
def test_other_segmentation_backends_run(backend):
    model = tiny_flux(seed=23)
    out, trace = run(model, steps=6, segmentation_backend=backend, warmup_steps=1, drift_threshold=0.0)
    assert torch.isfinite(out["samples"]).all() and trace.work_fraction < 1.0


def test_dilation_on_top_reports_the_real_fraction():
    model = tiny_flux(seed=24)
    _, inside = run(model, steps=8, warmup_steps=2, drift_threshold=0.0, dilation=1, dilation_mode="inside")
    _, on_top = run(model, steps=8, warmup_steps=2, drift_threshold=0.0, dilation=1, dilation_mode="on_top")
    sparse_inside = [s.tokens for s in inside.steps if not s.dense]
    sparse_top = [s.tokens for s in on_top.steps if not s.dense]
    assert all(t >= i for t, i in zip(sparse_top, sparse_inside)) and sum(sparse_top) > sum(sparse_inside)
    assert on_top.work_fraction > inside.work_fraction


def test_drift_reset_makes_the_next_evaluation_dense():
    model = tiny_flux(seed=25)
    _, trace = run(model, steps=10, warmup_steps=2, cooldown_steps=0, drift_threshold=1e-6)
    reasons = [s.reason for s in trace.steps]
    assert "drift reset" in reasons
    for previous, current in zip(trace.steps, trace.steps[1:]):
        if current.reason == "drift reset":
            assert previous.drift_computed is not None and previous.drift_computed > 1e-6 and current.dense


def test_batch_two_with_cfg_and_model_patch():
    model = tiny_flux(seed=26)
    out, trace = run(model, batch=2, cfg=4.0, steps=8, drift_threshold=0.0)
    sparse = [s for s in trace.steps if not s.dense]
    assert sparse and all(s.active.shape == (2, 8, 8) for s in sparse)
    assert any(not torch.equal(s.active[0], s.active[1]) for s in sparse)
    (patched,) = sdit_model_patch(model, **defaults(sample_ratio=1.0, drift_threshold=0.0))
    a = comfy_nodes.KSampler().sample(patched, 3, 6, 1.0, "dpmpp_2m", "karras", flux_conditioning(1),
                                      flux_conditioning(2), {"samples": torch.zeros(1, 16, 16, 16)})[0]["samples"]
    b = comfy_nodes.KSampler().sample(model, 3, 6, 1.0, "dpmpp_2m", "karras", flux_conditioning(1),
                                      flux_conditioning(2), {"samples": torch.zeros(1, 16, 16, 16)})[0]["samples"]
    assert (a - b).abs().max().item() <= TOL


def test_clear_errors():
    model = tiny_flux(seed=27)
    with pytest.raises(SDiTInputError, match=r"SDiT Options: input 'tau2'"):
        run(model, tau1=0.6, tau2=0.5)
    with pytest.raises(SDiTInputError, match=r"SDiT Options: input 'segmentation_backend'"):
        run(model, segmentation_backend="kmeans")
    with pytest.raises(SDiTInputError, match=r"SDiT Options: input 'top_q'"):
        run(model, top_q=0.0)
    with pytest.raises(SDiTInputError, match=r"input 'latent_image'.*multiple"):
        run(model, h=15)
    with pytest.raises(SDiTInputError, match=r"SDiT Options: input 'kv_cache'.*not one of"):
        run(model, kv_cache="fp16")


def test_a_missing_segmentation_package_is_named_before_sampling(monkeypatch):
    """Every segmentation backend ends with the contiguity pass (scikit-image) and hnsw needs hnswlib: an
    environment without them gets the package names from the node, before anything is sampled, not an
    ImportError at the first step."""
    import sys
    model = tiny_flux(seed=28)
    monkeypatch.setitem(sys.modules, "skimage.measure", None)          # importing it now fails
    with pytest.raises(SDiTInputError, match=r"SDiT Options: input 'segmentation_backend': 'torch' needs the "
                                             r"Python package\(s\) scikit-image.*pip install scikit-image\)$"):
        run(model)
    monkeypatch.setitem(sys.modules, "hnswlib", None)
    with pytest.raises(SDiTInputError, match=r"'hnsw' needs the Python package\(s\) hnswlib, scikit-image"):
        sdit_model_patch(model, 0.5, segmentation_backend="hnsw")
    monkeypatch.delitem(sys.modules, "skimage.measure")
    monkeypatch.delitem(sys.modules, "hnswlib")
    out, _ = run(model, steps=4)                                          # installed again: it samples
    assert torch.isfinite(out["samples"]).all()


def test_region_visualizer_and_complexity_map():
    model = tiny_flux(seed=28)
    out, trace = run(model, steps=6, warmup_steps=1, drift_threshold=0.0)
    result = RegionVisualizer().draw(trace, -1, 0, 0.6)
    images = result["result"][0]
    assert images.shape[0] == 2 + len(trace.steps) and images.shape[-1] == 3
    assert images.shape[1] == 8 * 16 and images.shape[2] >= 8 * 16       # grid x patch x 8 (+ legend)
    assert result["ui"]["images"], "previews saved for the UI"
    # the mask images show exactly the active tokens: bright where computed
    mask = images[2 + 2][:128, :128, 0]
    active = trace.steps[2].active[0].repeat_interleave(16, 0).repeat_interleave(16, 1)
    assert torch.equal(mask > 0.5, active)
    # every image is its map plus a side panel (legend / caption) of one width: no empty padding strip
    for picture in images:
        panel = picture[:, 128:]
        assert panel.shape[1] > 40 and panel.max() > 0.5, "each image's panel says something"
        assert picture[:, -2:].max() == 0, "nothing runs off the right edge"
    captions = [_mask_caption(s, 6, 64) for s in trace.steps]
    assert captions[0][:3] == [(None, "step 1/6"), (None, f"sigma {trace.steps[0].sigma:.3g}"),
                               (None, "dense: warm-up")]
    assert captions[-1][2] == (None, "dense: cool-down")
    sparse = next(i for i, s in enumerate(trace.steps) if not s.dense)
    assert captions[sparse][2] == (None, f"{trace.steps[sparse].tokens}/64 tokens")
    assert all(c[-2:] == [(1.0, "computed"), (0.15, "skipped")] for c in captions)
    over = RegionVisualizer().draw(trace, 0, 0, 0.5, image=torch.zeros(1, 64, 96, 3))["result"][0]
    assert over.shape[1:3] == (64, 96 + 64) or over.shape[1] == 64
    heat, mask = ComplexityMap().compute(out, 2, 0.5, 1.0, 0.5, -1, 0, region_trace=trace)["result"]
    assert heat.shape[0] == 1 and mask.shape == (1, 128, 128)
    legend = with_legend(np.zeros((128, 128, 3), np.float32), 0.00123, 0.0707, "complexity")
    assert legend[:, -3:].max() == 0, "the legend's numbers and title fit inside it"
    heat, mask = ComplexityMap().compute(out, 2, 0.75, 1.0, 0.5, -1, 0)["result"]
    assert mask.mean().item() == pytest.approx(0.25, abs=0.05)
    with pytest.raises(SDiTInputError, match="Region Visualizer: input 'step'"):
        RegionVisualizer().draw(trace, 99, 0, 0.5)
    with pytest.raises(SDiTInputError, match="Complexity Map: input 'region_trace'"):
        ComplexityMap().compute(out, 2, 0.5, 1.0, 0.5, -1, 0, region_trace="not a trace")
    with pytest.raises(SDiTInputError, match=r"Complexity Map: input 'patch_size': 3 does not divide the latent's 16x16"):
        ComplexityMap().compute(out, 3, 0.5, 1.0, 0.5, -1, 0)
    other = {"samples": torch.zeros(1, 16, 16, 24)}
    with pytest.raises(SDiTInputError, match=r"Complexity Map: input 'region_trace': the step's token grid 8x8 is not "
                                             r"the latent's 8x12"):
        ComplexityMap().compute(other, 2, 0.5, 1.0, 0.5, -1, 0, region_trace=trace)


def test_no_token_is_skipped_longer_than_max_skip_age():
    model = tiny_flux(seed=29)
    common = dict(steps=20, warmup_steps=2, cooldown_steps=0, drift_threshold=0.0, sample_ratio=0.125,
                  dilation=0, drift_probes=0.0)
    _, unbounded = run(model, max_skip_age=0, skip_age_weight=0.0, **common)
    assert longest_skip(unbounded) > 4, "the control starves some tokens"
    _, bounded = run(model, max_skip_age=4, **common)
    assert longest_skip(bounded) <= 4


def test_a_dense_evaluation_clears_a_pending_reset():
    """A drift reset asked for just before a scheduled dense step is that dense step: no second one."""
    from comfyui_sdit.sdit_core.policy import EvalInfo
    from comfyui_sdit.sdit_core.sdit import SDiTConfig, SDiTPolicy
    policy = SDiTPolicy(SDiTConfig(warmup_steps=0, cooldown_steps=0, reset_steps=(3,)), patch_size=2)
    policy._labels = torch.zeros(1, 4, 4, dtype=torch.int64)
    policy._complexity = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0))
    policy._scores = torch.ones(1, 1)

    def info(step):
        return EvalInfo(index=step, step=step, steps=6, sigma=1.0 - step / 6, grid=(4, 4), batch=1)
    assert policy.plan(info(2)) is not None
    policy._reset_pending = True                   # the drift of step 2 asked for a reset
    assert policy.plan(info(3)) is None and policy.reasons[3] == "reset"
    assert policy.plan(info(4)) is not None and policy.reasons[4] == "sparse"


def test_drift_is_measured_on_probe_tokens_drawn_from_the_skipped_ones():
    model = tiny_flux(seed=30)
    exact = dict(steps=10, warmup_steps=2, cooldown_steps=0, drift_threshold=0.0, sample_ratio=0.25,
                 dilation_mode="inside", max_skip_age=0)
    _, trace = run(model, drift_probes=0.1, **exact)
    sparse = [s for s in trace.steps if not s.dense]
    assert sparse and all(s.probes == 6 for s in sparse)              # 10% of 64 tokens, computed
    assert all(s.drift is not None and s.drift > 0 for s in sparse[1:])
    _, without = run(model, drift_probes=0.0, **exact)
    work = [s.tokens for s in trace.steps if not s.dense]
    assert all(w - p == o for w, p, o in zip(work, (s.probes for s in sparse), (s.tokens for s in without.steps
                                                                               if not s.dense)))


def test_sdit_follows_samplers_that_add_fresh_noise_but_not_lcm():
    """SDiT's drift probes see reused outputs go stale and refresh, so ancestral/SDE samplers keep their
    sparse steps (44-54 dB measured); LCM does not work (32 dB) and runs dense."""
    model = tiny_flux(seed=31)
    latent = {"samples": torch.zeros(1, 16, 16, 16)}
    common = (3, 10, 1.0)
    _, ancestral = sdit_sample(model, *common, "euler_ancestral", "simple", flux_conditioning(1),
                                        flux_conditioning(2), latent, 1.0, **defaults())
    assert any(not s.dense for s in ancestral.steps)
    _, lcm = sdit_sample(model, *common, "lcm", "simple", flux_conditioning(1), flux_conditioning(2),
                                  latent, 1.0, **defaults())
    assert all(s.dense for s in lcm.steps)


def test_a_schedule_dense_at_every_step_says_so_under_the_model_patch(caplog):
    """Four steps (a distilled model's) under SDiT's defaults, 3 warm-up steps and 1 cool-down: every step is dense, the
    image is KSampler's and the log says which inputs to lower; with a warm-up of 1 the middle steps run sparse."""
    model = tiny_flux(seed=32)
    latent = {"samples": torch.zeros(1, 16, 16, 16)}

    def ksampler(m):
        return comfy_nodes.KSampler().sample(m, 3, 4, 1.0, "euler", "simple", flux_conditioning(1),
                                             flux_conditioning(2), latent)[0]["samples"]
    (patched,) = sdit_model_patch(model, **defaults())
    with caplog.at_level("WARNING"):
        assert (ksampler(patched) - ksampler(model)).abs().max().item() <= TOL
    assert ("SDiT Model Patch: ran dense: the SDiT schedule runs every step of this 4-step run dense (3 warm-up, 1 "
            "cool-down); for a few-step model lower warmup_steps / cooldown_steps in SDiT Options (no speed-up)") in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        _, trace = run(model, steps=4, warmup_steps=1, drift_threshold=0.0)
    assert [s.dense for s in trace.steps] == [True, False, False, True] and "schedule" not in caplog.text


def test_the_node_segments_through_the_kernels_dispatcher(monkeypatch):
    """The SDiT node hands its policy kernels.quickshift's window pass (Triton kernels on a GPU, tested
    against the reference in test_kernels.py; the reference here on the CPU): every evaluation's
    segmentation goes through it, the batch's images in one call."""
    from comfyui_sdit.kernels import quickshift
    from comfyui_sdit.nodes import sdit_nodes
    calls = []

    def spy(features, params, frame_scale=1.0):
        calls.append(tuple(features.shape))
        return quickshift.quickshift_parents(features, params, frame_scale)
    monkeypatch.setattr(sdit_nodes, "quickshift_parents", spy)
    _, trace = run(tiny_flux(seed=23), batch=2, steps=6, cfg=2.0)
    assert len(trace.steps) == 6 and len(calls) == 6
    assert set(calls) == {(2, 1, 8, 8, 32)}
