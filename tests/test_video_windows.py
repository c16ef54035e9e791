"""Videos sampled in context windows (ComfyUI's context windows: the model runs once per window of frames
and the outputs are blended): each window is a stream of its own and runs the planned tokens of its
frames. Tiny random-weight Wan 2.1 / HunyuanVideo on the CPU, fp32."""
import inspect
import logging
import types

import pytest
import torch

from comfyui_sdit.nodes.comfy_compat import context_window_frames, context_windows_at_start
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.engine import MOVING_WINDOWS
from comfyui_sdit.sdit_core.frame_windows import window_active, window_tokens
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from comfyui_sdit.sdit_core.tokens import index_to_mask
from pack_host import with_context_windows
from sdit_testkit import ksample, random_active, ras_sample, sdit_sample, tiny_hunyuan_video, tiny_wan
from test_ras_sampler import ras_args
from test_sdit_sampler import defaults as sdit_defaults
from test_video import SDIT_END_TO_END, conds, dense_then_sparse, hunyuan_conds, video_latent

TOL = 1e-5
FRAMES, ROWS, COLS = 7, 4, 6                     # latent 7 x 8 x 12, patch 2: 7 frames of 4 x 6 tokens
FRAME_TOKENS = ROWS * COLS
TOKENS = FRAMES * FRAME_TOKENS
FAMILIES = {"wan": (tiny_wan, conds), "hunyuan": (tiny_hunyuan_video, hunyuan_conds)}


def with_windows(model, schedule="standard_static", length=3, overlap=1):
    """The model in windows of 3 latent frames overlapping by 1."""
    return with_context_windows(model, length, overlap, schedule)


def window_frames(run) -> set:
    return {stream.window for stream in run.streams.values()}


# ---- the window's share of a step's plan (pure) ------------------------------------------------------
def test_window_tokens_number_the_frames_in_the_windows_order():
    assert window_tokens([2, 0], 3).tolist() == [6, 7, 8, 0, 1, 2]


def test_a_window_runs_every_planned_token_of_its_frames_and_tops_rows_up_to_one_count():
    tokens = window_tokens([1, 2], 4)                                  # whole-video tokens 4..11
    active = torch.tensor([[0, 4, 5, 9], [1, 2, 3, 6]])               # row 0: 3 in the window, row 1: 1
    waited = torch.zeros(2, 16, dtype=torch.int64)
    waited[1, 11] = 5                                                  # row 1's longest-waiting window token
    waited[1, 8] = 3
    index = window_active(active, tokens, 16, waited)
    assert index.tolist() == [[0, 1, 5], [2, 4, 7]]                    # window positions of 4, 5, 9 / 6, 8, 11


def test_a_window_count_rounds_up_to_the_count_grid_within_the_window():
    tokens = window_tokens([0, 1], 4)
    active = torch.tensor([[0, 1, 2, 12, 13]])                        # three tokens in the window
    assert window_active(active, tokens, 16, grid=4).tolist() == [[0, 1, 2, 3]]
    assert window_active(active, tokens, 16, grid=64).shape == (1, 8)          # at most the window
    none_inside = torch.tensor([[12, 13]])
    assert window_active(none_inside, tokens, 16).shape == (1, 1)              # at least one token


def test_window_top_up_takes_repaintable_tokens_first():
    tokens = window_tokens([0], 4)
    active = torch.tensor([[0, 1], [1, 6]])                            # row 1 has one token fewer inside
    selectable = torch.zeros(2, 8, dtype=torch.bool)
    selectable[1, 3] = True
    assert window_active(active, tokens, 8, selectable=selectable).tolist() == [[0, 1], [1, 3]]


# ---- where a window's frames are read from ComfyUI ------------------------------------------------------
def test_window_frames_follow_comfyui_s_window_anchor_and_retained_frames():
    handler = types.SimpleNamespace()
    window = types.SimpleNamespace(index_list=[4, 5, 6], dim=2)
    assert context_window_frames({"context_window": window}, handler) == [4, 5, 6]
    assert context_window_frames({"context_window": window}, None) is None            # no context windows
    assert context_window_frames({}, handler) is None
    assert context_window_frames({"context_window": types.SimpleNamespace(index_list=[0, 1], dim=0)},
                                 handler) is None                                      # over the batch axis
    window.causal_anchor_index = 3                                    # newer ComfyUI: a frame before the window
    assert context_window_frames({"context_window": window}, handler) == [3, 4, 5, 6]
    handler.latent_retain_index_list = [0]                            # ... and frame 0 kept at position 0
    assert context_window_frames({"context_window": window}, handler) == [0, 4, 5, 6]


def test_the_first_step_s_windows_are_read_from_comfyui_s_handler(caplog):
    sigmas = torch.tensor([1.0, 0.5, 0.0])
    shape = (1, 16, FRAMES, 8, 12)
    handler = with_windows(tiny_wan(seed=3)).model_options["context_handler"]
    handler.causal_window_fix = False                                   # older ComfyUI: no anchor frame
    assert context_windows_at_start(handler, None, shape, sigmas) == [3, 3, 3]
    handler.causal_window_fix = True                                    # newer: a frame before windows 2 and 3
    assert context_windows_at_start(handler, None, shape, sigmas) == [3, 4, 4]
    assert context_windows_at_start(handler, None, (1, 16, 3, 8, 12), sigmas) is None     # one window: none
    assert context_windows_at_start(None, None, shape, sigmas) is None

    handler.get_context_windows = lambda x_in: []                       # a newer handler asked otherwise
    with caplog.at_level(logging.WARNING):
        assert context_windows_at_start(handler, None, shape, sigmas) is None
    assert "could not be read for the memory plan" in caplog.text


# ---- sampling through ComfyUI's context windows ---------------------------------------------------------
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_every_token_active_in_windows_equals_plain_windowed_sampling(family, cfg):
    build, make_conds = FAMILIES[family]
    model = with_windows(build(seed=3))
    latent = video_latent(1, 16, frames=FRAMES)
    reference = ksample(model, latent, seed=5, steps=4, cfg=cfg, **make_conds())
    policy = FixedPlanPolicy([None] + [torch.arange(TOKENS)[None]] * 3)
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    sparse = ksample(patched, latent, seed=5, steps=4, cfg=cfg, **make_conds())
    assert (sparse - reference).abs().max().item() <= TOL
    run = slot.last_run
    assert [e.dense for e in run.evals] == [True, False, False, False]      # one evaluation per step
    windows = {c.stream[-1] for e in run.evals for c in e.calls}
    assert len(windows) == 3 and all(len(w) in (3, 4) for w in windows)    # 3 frames (+ newer ComfyUI's anchor)
    assert all(not c.dense for e in run.evals[1:] for c in e.calls)          # every window ran sparse


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_sparse_window_forward_after_a_dense_one_matches_it_on_the_tokens_it_ran(family):
    # (ComfyUI's context windows take one video at a time: they index the timestep by frame)
    build, make_conds = FAMILIES[family]
    model = with_windows(build(seed=4))
    active = random_active(1, TOKENS, TOKENS // 3, seed=1)
    by_stream = dense_then_sparse(model, video_latent(1, 16, frames=FRAMES), active, 3.0, make_conds())
    windows = [stream for stream in by_stream if len(stream) == 5]      # (prompts, network, rows, grid, window)
    assert len(windows) == len(by_stream) >= 3
    for stream, ((dense, _), (sparse, computed)) in by_stream.items():
        window = stream[-1]
        tokens = window_tokens(window, FRAME_TOKENS)
        planned = index_to_mask(active, TOKENS)[:, tokens].expand(computed.shape[0], -1)
        mask = index_to_mask(computed, len(tokens))
        assert bool(mask[planned].all())                          # every planned token of the window ran
        assert (sparse - dense).abs().amax(dim=-1)[mask].max().item() <= TOL
        assert torch.equal(sparse[~mask], dense[~mask])


def window_cache_bytes(frames: int, rows: int = 1) -> int:
    """The K/V cache of one window of tiny Wan (fp32, 2 layers of 64 channels) over `frames` frames."""
    return 2 * 2 * rows * frames * FRAME_TOKENS * 64 * 4


def test_windows_that_move_every_step_run_dense_keep_no_cache_and_say_so(caplog):
    """Once a window never run before appears while an earlier step's windows are held, the windows move
    (nothing will read a window's cache): the caches are dropped and window forwards keep none."""
    model = with_windows(tiny_wan(seed=3), schedule="looped_uniform")
    latent = video_latent(1, 16, frames=FRAMES)
    reference = ksample(model, latent, seed=5, steps=4, cfg=1.0, **conds())
    policy = FixedPlanPolicy([None] + [torch.arange(TOKENS)[None]] * 3)
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    with caplog.at_level(logging.WARNING):
        sparse = ksample(patched, latent, seed=5, steps=4, cfg=1.0, **conds())
    assert (sparse - reference).abs().max().item() <= TOL
    run = slot.last_run
    placed = [[c.stream[-1] for c in e.calls] for e in run.evals]
    assert set(placed[1]) != set(placed[0])                                 # the windows did move
    # sparse only where a window of the first step came back before the first new one showed the move
    moved_at = next(i for i, w in enumerate(placed[1]) if w not in placed[0])
    assert all(c.dense == (i >= moved_at or w not in placed[0])
               for i, (c, w) in enumerate(zip(run.evals[1].calls, placed[1])))
    assert all(c.dense for e in run.evals[2:] for c in e.calls)
    assert run.kv_peak_bytes == sum(window_cache_bytes(len(w)) for w in placed[0])     # the first step's alone
    assert run.kv_planned_bytes == run.kv_peak_bytes
    assert run.windows_move and run.note == MOVING_WINDOWS
    assert sum(MOVING_WINDOWS in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("method,sample", [("RAS", ras_sample), ("SDiT", sdit_sample)])
@pytest.mark.parametrize("dim", [2, 3])
def test_windows_across_an_image_run_dense_one_evaluation_a_step_and_say_so(method, sample, dim, caplog, monkeypatch):
    """Context Windows (Manual) over an image's height or width (tiles, as PiD's 4K decodes use them): each window is
    a crop of the token grid, which no other forward's cache covers. The run is dense (the windowed model's own
    samples), plans no cache, counts one evaluation per step (not per tile), and the log and the node say why."""
    from comfyui_sdit.nodes import live_progress
    from sdit_testkit import flux_conditioning, tiny_flux
    model = with_context_windows(tiny_flux(seed=3), length=8, overlap=4, dim=dim)
    latent = {"samples": torch.zeros(1, 16, 16, 24)}
    a = dict(seed=3, steps=6, cfg=1.0, sampler_name="euler", scheduler="simple", positive=flux_conditioning(1),
             negative=flux_conditioning(2), latent_image=latent, denoise=1.0, sample_ratio=0.5, warmup_steps=1)
    if method == "RAS":
        a["reset_steps"] = ""
    sent = []
    monkeypatch.setattr(live_progress, "server_send", lambda event, data: sent.append((event, data)))
    with caplog.at_level(logging.WARNING):
        out, trace = sample(model, unique_id="5", **a)
    reference = ksample(model, latent["samples"], seed=3, steps=6, cfg=1.0, positive=a["positive"],
                        negative=a["negative"])
    assert (out["samples"] - reference).abs().max().item() <= TOL
    assert len(trace.steps) == 6 and all(s.dense for s in trace.steps)
    axis = {2: "height", 3: "width"}[dim]
    said = f"ComfyUI's context windows cut the latent along its {axis} (dim {dim}): each window is a crop of the image"
    assert said in caplog.text
    summary = [d for e, d in sent if e == live_progress.SUMMARY_EVENT][-1]
    assert said in summary["note"] and summary["evaluations"] == 6


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_windows_that_stay_keep_their_caches_as_planned(family, cfg):
    """Each window is a cache of its own: the memory plan asks ComfyUI's handler for the first step's
    windows (newer ComfyUI's anchor frames included) and counts each."""
    build, make_conds = FAMILIES[family]
    policy = FixedPlanPolicy([None] + [torch.arange(TOKENS)[None]] * 3)
    patched, slot = apply_token_sparse(with_windows(build(seed=3)), lambda run: policy, node="test")
    ksample(patched, video_latent(1, 16, frames=FRAMES), seed=5, steps=4, cfg=cfg, **make_conds())
    run = slot.last_run
    placed = [sorted({c.stream[-1] for c in e.calls}) for e in run.evals]
    assert len(placed[0]) >= 3 and all(p == placed[0] for p in placed)
    assert not run.windows_move and not any(c.dense for e in run.evals[1:] for c in e.calls)
    assert run.kv_planned_bytes == run.kv_peak_bytes
    if family == "wan" and cfg == 1.0:
        assert run.kv_peak_bytes == sum(window_cache_bytes(len(w)) for w in placed[0])


def test_the_trace_counts_a_window_s_work_against_its_own_frames():
    model = with_windows(tiny_wan(seed=3))
    from comfyui_sdit.sdit_core.trace import trace_from_run
    policy = FixedPlanPolicy([None] + [torch.arange(TOKENS)[None]] * 3)
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    ksample(patched, video_latent(1, 16, frames=FRAMES), seed=5, steps=4, cfg=1.0, **conds())
    trace = trace_from_run(slot.last_run, "test")
    assert [s.tokens for s in trace.steps] == [TOKENS] * 4                   # every token ran, in windows


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_sample_windowed_videos_sparsely_and_leave_the_model_untouched(method):
    model = with_windows(tiny_wan(seed=7))
    before = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    latent = {"samples": video_latent(1, 16, frames=FRAMES)}
    a = dict(ras_args(steps=8, cfg=2.5, sample_ratio=0.3, reset_steps=""), **conds())
    if method == "RAS":
        out, trace = ras_sample(model, latent_image=latent, **a)[:2]
    else:
        values = sdit_defaults(**SDIT_END_TO_END)
        out, trace = sdit_sample(model, a["seed"], 8, 2.5, "euler", "simple", a["positive"], a["negative"],
                                 latent, 1.0, **values)[:2]
    assert torch.isfinite(out["samples"]).all() and out["samples"].shape == latent["samples"].shape
    assert len(trace.steps) == 8                                             # one evaluation per step
    assert any(0 < t < TOKENS for t in trace.tokens_per_step), trace.tokens_per_step
    for k, v in model.model.diffusion_model.state_dict().items():
        assert torch.equal(v, before[k])


def test_wan_context_windows_node_is_followed():
    """ComfyUI's own Wan Context Windows node, with the schedule that keeps windows in place."""
    from comfy_extras.nodes_context_windows import WanContextWindowsManualNode
    values = dict(context_length=9, context_overlap=4, context_schedule="standard_static", context_stride=1,
                  closed_loop=False, fuse_method="pyramid", freenoise=False, retain_first_frame=False,
                  split_conds_to_windows=False)
    accepted = inspect.signature(WanContextWindowsManualNode.execute).parameters
    output = WanContextWindowsManualNode.execute(tiny_wan(seed=8), **{k: v for k, v in values.items() if k in accepted})
    model = output.result[0] if hasattr(output, "result") else output[0]
    policy = FixedPlanPolicy([None] + [random_active(1, TOKENS, TOKENS // 2, seed=3)] * 3)
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    ksample(patched, video_latent(1, 16, frames=FRAMES), seed=5, steps=4, cfg=1.0, **conds())
    run = slot.last_run
    assert len(run.evals) == 4
    windows = {c.stream[-1] for e in run.evals for c in e.calls}
    assert len(windows) >= 2
    assert all(not c.dense for e in run.evals[1:] for c in e.calls)


def test_a_model_patch_follows_windows_set_after_it():
    """RAS Model Patch's patch, then the context windows, then KSampler: the windows are read where
    sampling starts."""
    from comfyui_sdit.nodes.ras_nodes import patch_ras, ras_config
    config, _ = ras_config("RAS Model Patch", 0.3)
    patched, slot = patch_ras(tiny_wan(seed=9), config, "RAS Model Patch")
    ksample(with_windows(patched), video_latent(1, 16, frames=FRAMES), seed=5, steps=6, cfg=2.5, **conds())
    calls = [c for e in slot.last_run.evals for c in e.calls]
    assert len(slot.last_run.evals) == 6 and len({c.stream[-1] for c in calls}) == 3
    assert any(not c.dense and c.image_tokens < c.grid_tokens for c in calls)
