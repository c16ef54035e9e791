"""Sparse token counts on a grid (sdit_core/count_grid.py): a GPU meets few distinct shapes, the
padded tokens are the stalest ones, and sparse steps stay exact on every token they compute."""
import pytest
import torch

from comfyui_sdit.nodes.region_patch import patch_region_adaptive
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core import count_grid as grid_module, forward_graphs
from comfyui_sdit.sdit_core.count_grid import count_grid, round_up_count
from comfyui_sdit.sdit_core.ras import RASConfig, RASPolicy
from comfyui_sdit.sdit_core.ratio_schedule import dynamic_counts, on_count_grid
from comfyui_sdit.sdit_core.tokens import index_to_mask
from sdit_testkit import FAMILIES, ksample, sample_with
from test_engine_exactness import RecordingPolicy
from test_forward_graphs import ReplayByRerun


def test_grid_is_64_tokens_on_a_gpu_finer_for_small_grids_and_off_on_the_cpu(monkeypatch):
    monkeypatch.delenv(grid_module.ENV_FLAG, raising=False)
    assert count_grid("cuda", 4096) == 64          # Flux 1024²
    assert count_grid("cuda", 32760) == 64         # Wan 480p x 81 frames
    assert count_grid("cuda", 1024) == 16          # 512²: at most 1/64 of the grid
    assert count_grid("cuda", 40) == 1
    assert count_grid("cpu", 4096) == 1
    monkeypatch.setenv(grid_module.ENV_FLAG, "8")
    assert count_grid("cpu", 4096) == 8
    monkeypatch.setenv(grid_module.ENV_FLAG, "0")
    assert count_grid("cuda", 4096) == 1


def test_round_up_adds_the_tokens_that_waited_longest():
    active = torch.tensor([[0, 5, 6], [1, 2, 3]])
    waited = torch.tensor([[0, 3, 1, 3, 0, 0, 0, 2, 9, 0],
                           [4, 0, 0, 0, 4, 1, 1, 1, 0, 0]])
    # 3 -> 4 tokens: image 0 takes token 8 (waited 9); image 1 token 0 (4, ties: the lower index)
    assert round_up_count(active, waited, 4, 10).tolist() == [[0, 5, 6, 8], [0, 1, 2, 3]]
    # 3 -> 8: then 1 and 3 (3 each), 7 (2), 2 (1) / 4, then 5, 6, 7 (1 each)
    assert round_up_count(active, waited, 8, 10).tolist() == [[0, 1, 2, 3, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5, 6, 7]]
    assert round_up_count(active, waited, 16, 10).shape == (2, 10)     # never more than the grid
    assert torch.equal(round_up_count(active, waited, 3, 10), active)  # already on the grid
    assert torch.equal(round_up_count(active, waited, 1, 10), active)  # off
    # inpainting: tokens inside the mask first, however long the others waited
    inside = torch.zeros(2, 10, dtype=torch.bool)
    inside[:, :5] = True
    assert round_up_count(active, waited, 4, 10, inside).tolist() == [[0, 1, 5, 6], [0, 1, 2, 3]]


def test_padded_tokens_are_computed_exactly(monkeypatch):
    """Dense, then the same input sparse with 5 planned tokens on a grid of 8: 8 tokens run (the 5 and
    3 more), each equal to the dense output; the rest keep their cached output."""
    monkeypatch.setenv(grid_module.ENV_FLAG, "8")
    spec = FAMILIES["flux"]
    model = spec.build(seed=4)
    tokens = spec.tokens(16, 16)
    planned = torch.tensor([[3, 9, 17, 40, 41]])
    policy = RecordingPolicy([None, planned])
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test", graph_backend=lambda: None)

    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        for _ in range(2):
            model(x, sigmas[0] * x.new_ones([1]), **extra_args)
        return x
    sample_with(patched, spec.latent(1, 16, 16), sampler, torch.tensor([0.8, 0.0]), positive=spec.positive(),
                negative=spec.negative())
    (_, _, dense, _), (_, _, sparse, computed) = policy.outputs
    assert computed.shape == (1, 8) and set(planned[0].tolist()) <= set(computed[0].tolist())
    ran = index_to_mask(computed, tokens)
    assert (sparse - dense)[ran].abs().max().item() <= 1e-5
    assert torch.equal(sparse[~ran], dense[~ran])
    assert slot.last_run.evals[1].calls[0].image_tokens == 8


@pytest.mark.parametrize("grid,min_uses,replayed", [(1, "1", False), (32, "1", True), (32, None, False)])
def test_a_grid_lets_the_default_ras_schedule_replay_graphs(monkeypatch, grid, min_uses, replayed):
    """RAS's dynamic ratio changes the count every sparse step: no count repeats, so no forward is
    replayed from a graph; on a grid the counts repeat and most sparse forwards replay, when graphs are
    captured for any repeated count. By default a count must come back often enough to repay its capture
    (forward_graphs.MIN_USES), which a dynamic schedule's counts do not."""
    monkeypatch.setenv(grid_module.ENV_FLAG, str(grid))
    if min_uses is None:
        monkeypatch.delenv(forward_graphs.MIN_USES_FLAG, raising=False)
    else:
        monkeypatch.setenv(forward_graphs.MIN_USES_FLAG, min_uses)
    spec = FAMILIES["flux"]
    backends = []

    def backend():
        backends.append(ReplayByRerun())
        return backends[-1]
    config = RASConfig(sample_ratio=0.25, warmup_steps=2, reset_steps=())
    patched, slot = patch_region_adaptive(spec.build(seed=2), lambda run: RASPolicy(config, 2), node="test",
                                          graph_backend=backend)
    ksample(patched, spec.latent(1, 32, 32), seed=5, steps=16, cfg=1.0, positive=spec.positive(),
            negative=spec.negative())
    counts = [e.active.shape[1] for e in slot.last_run.evals if e.active is not None]
    assert len(counts) == 14 and all(c % grid == 0 for c in counts)
    schedule = on_count_grid(dynamic_counts(range(2, 16), 256, 0.25), grid, 256)
    assert counts == list(schedule.values()), "RAS's schedule is on the grid: the engine pads nothing"
    if replayed:
        assert len(set(counts)) <= 4 and backends[0].replays >= 14 - 2 * len(set(counts))
    elif grid == 1:
        assert len(set(counts)) == len(counts) and backends[0].replays == 0
    else:
        assert max(counts.count(c) for c in counts) < forward_graphs.MIN_USES and backends[0].captures == 0


def test_schedules_on_the_grid_keep_their_shape_and_total():
    steps = list(range(4, 28))
    for ratio in (0.5, 0.25, 0.125):
        plain = dynamic_counts(steps, 4096, ratio)
        gridded = on_count_grid(plain, 64, 4096)
        assert all(c % 64 == 0 and c > 0 for c in gridded.values())
        assert abs(sum(gridded.values()) - sum(plain.values())) <= 32          # the same work, to half a step
        values = [gridded[s] for s in steps]
        assert values == sorted(values, reverse=True)                         # still falling
        assert len(set(values)) <= (values[0] - values[-1]) // 64 + 1         # at most one count per grid step
        assert max(abs(gridded[s] - plain[s]) for s in steps) <= 64
    assert len(set(values)) == 9                                              # 0.125: 24 steps, 9 shapes
    assert on_count_grid(plain, 1, 4096) == plain
