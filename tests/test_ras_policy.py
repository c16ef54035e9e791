"""RAS policy pieces against hand-computed expectations (no model involved)."""
import math

import pytest
import torch

from comfyui_sdit.sdit_core.policy import EvalInfo, StepOutput
from comfyui_sdit.sdit_core.ras import RASConfig, RASPolicy, RASSchedule, select_tokens, selection_priority
from comfyui_sdit.sdit_core.ratio_schedule import dynamic_counts, static_counts
from comfyui_sdit.sdit_core.refresh_schedule import dense_step_reasons, dense_steps, parse_step_list
from comfyui_sdit.sdit_core.token_metrics import noise_prediction, patch_average, token_metric


def test_token_metric_std_and_l2_by_hand():
    out = torch.zeros(1, 2, 2, 4)
    out[0, 0] = torch.tensor([[1., 3., 0., 0.], [1., 3., 0., 0.]])
    out[0, 1] = torch.tensor([[3., 1., 0., 4.], [3., 1., 0., 4.]])
    # per pixel std over 2 channels (unbiased) = |a-b|/sqrt(2); l2 = sqrt(a^2+b^2)
    std = token_metric(out, 2, "std")
    assert std.shape == (1, 1, 2)
    assert torch.allclose(std[0, 0], torch.tensor([2 / math.sqrt(2), 0.5 * 4 / math.sqrt(2)]))
    l2 = token_metric(out, 2, "l2norm")
    assert torch.allclose(l2[0, 0], torch.tensor([math.sqrt(10), 2.0]))


def test_patch_average_pads_odd_sizes_by_replication():
    v = torch.arange(9.).view(1, 3, 3)
    avg = patch_average(v, 2)
    assert avg.shape == (1, 2, 2)
    assert avg[0, 1, 1].item() == 8.0 and avg[0, 0, 0].item() == (0 + 1 + 3 + 4) / 4


def test_noise_prediction_is_model_output_space():
    x, x0 = torch.full((1, 1, 1, 1), 3.0), torch.full((1, 1, 1, 1), 1.0)
    assert noise_prediction(x, x0, torch.tensor([0.5])).item() == 4.0


def test_selection_counts_and_orientation():
    metric = torch.tensor([[0.5, 0.1, 0.9, 0.3], [2.0, 1.0, 3.0, 0.5]])
    drops = torch.zeros(2, 4, dtype=torch.int32)
    low_std = select_tokens(selection_priority(metric, drops, "std", 0.1), 2)
    assert low_std.tolist() == [[1, 3], [1, 3]]          # the focus has the lowest std
    high_norm = select_tokens(selection_priority(metric, drops, "l2norm", 0.1), 2)
    assert high_norm.tolist() == [[0, 2], [0, 2]]         # the largest norms need refinement


@pytest.mark.parametrize("kind", ["std", "l2norm"])
def test_starvation_raises_priority_of_often_dropped_tokens(kind):
    metric = torch.ones(1, 3)
    drops = torch.tensor([[0, 5, 2]], dtype=torch.int32)
    # equal scores: the most-dropped token wins, then the next (the reference code inverts this)
    assert select_tokens(selection_priority(metric, drops, kind, 0.1), 1).tolist() == [[1]]
    p0 = selection_priority(metric, torch.zeros(1, 3, dtype=torch.int32), kind, 0.3)
    p1 = selection_priority(metric, drops, kind, 0.3)
    assert bool((p1 >= p0).all())


@pytest.mark.parametrize("tokens,count", [(64, 16), (50, 7), (12, 11)])
def test_every_token_is_picked_within_bounded_steps_under_constant_metric(tokens, count):
    policy = RASPolicy(RASConfig(sample_ratio=count / tokens, warmup_steps=0, reset_steps=(),
                                 dynamic_ratio=False), patch_size=1)
    ones = torch.ones(2, 4, 1, tokens)
    ones[:, 0] = 3.0                                                   # the same std for every token
    policy.observe(StepOutput(x=ones, denoised=torch.zeros_like(ones), noise=ones, sigma=torch.tensor([1.0])))
    assert torch.equal(policy._metric, torch.full((2, tokens), policy._metric[0, 0].item()))
    bound = math.ceil(tokens / count)
    picked = torch.zeros(2, tokens, dtype=torch.bool)
    for step in range(bound):
        info = EvalInfo(index=step, step=step, steps=100, sigma=1.0, grid=(1, tokens), batch=2)
        active = policy.plan(info)
        assert active.shape == (2, count)
        picked.scatter_(1, active, True)
    assert bool(picked.all()), f"some token starved beyond {bound} steps"


def test_skewed_metric_still_visits_the_worst_token():
    tokens, count, k = 16, 4, 0.5
    policy = RASPolicy(RASConfig(sample_ratio=count / tokens, warmup_steps=0, reset_steps=(), dynamic_ratio=False,
                                 starvation_scale=k, metric="l2norm"), patch_size=1)
    policy._metric = torch.linspace(1.0, 100.0, tokens)[None]         # token 0 is the least important
    # Priorities differ by ln(metric ratio) + k*(picks_j - picks_0): token 0 wins once every other token
    # has ~ln(100)/k more picks than it, which the n picks per step reach within this many steps.
    bound = math.ceil((tokens - 1) * (math.log(100.0) / k + 1) / count) + 1
    first_visit = None
    for step in range(bound):
        active = policy.plan(EvalInfo(step, step, 100, 1.0, (1, tokens), 1))
        if first_visit is None and bool((active == 0).any()):
            first_visit = step
    assert first_visit is not None, f"token 0 not visited within {bound} steps"
    # without starvation prevention it is never visited
    frozen = RASPolicy(RASConfig(sample_ratio=count / tokens, warmup_steps=0, reset_steps=(), dynamic_ratio=False,
                                 starvation_scale=0.0, metric="l2norm"), patch_size=1)
    frozen._metric = policy._metric
    assert not any(bool((frozen.plan(EvalInfo(s, s, 100, 1.0, (1, tokens), 1)) == 0).any()) for s in range(bound))


def test_parse_and_dense_steps_scale_with_step_count():
    assert parse_step_list("0.4, 0.67") == [0.4, 0.67]
    assert parse_step_list("12;20") == [12.0, 20.0]
    assert parse_step_list("") == []
    with pytest.raises(ValueError):
        parse_step_list("twelve")
    with pytest.raises(ValueError):
        parse_step_list("2.5")
    assert dense_steps(30, 4, [0.4, 0.67]) == {0, 1, 2, 3, 12, 20}
    assert dense_steps(60, 4, [0.4, 0.67]) == {0, 1, 2, 3, 24, 40}
    assert dense_steps(28, 4, [12, 20], cooldown=2) == {0, 1, 2, 3, 12, 20, 26, 27}
    assert dense_steps(3, 4, [12]) == {0, 1, 2}
    assert dense_step_reasons(10, 2, [0.5, 0.1], cooldown=2) == {0: "warm-up", 1: "warm-up", 5: "reset",
                                                                 8: "cool-down", 9: "cool-down"}


def test_static_and_dynamic_ratio_schedules():
    sparse = [4, 5, 6, 7, 8, 9]
    assert static_counts(sparse, 100, 0.25) == {s: 25 for s in sparse}
    dyn = dynamic_counts(sparse, 100, 0.25, spread=0.5)
    values = [dyn[s] for s in sparse]
    assert sum(values) == 25 * len(sparse), "same average as the static ratio"
    assert values == sorted(values, reverse=True) and values[0] > 25 > values[-1]
    assert values[0] in (37, 38) and values[-1] in (12, 13)
    # ratio near 1: the spread shrinks so no step asks for more tokens than exist
    near_one = dynamic_counts(sparse, 100, 0.9, spread=0.5)
    assert max(near_one.values()) <= 100 and sum(near_one.values()) == 90 * len(sparse)


def test_ras_schedule_defaults_match_paper():
    schedule = RASSchedule(RASConfig(sample_ratio=0.5, dynamic_ratio=False), steps=30, num_tokens=4096)
    dense = [s for s in range(30) if schedule.count(s) is None]
    assert dense == [0, 1, 2, 3, 12, 20]
    assert {schedule.count(s) for s in range(30) if s not in dense} == {2048}


def test_config_validation():
    with pytest.raises(ValueError):
        RASConfig(sample_ratio=0.0).validate()
    with pytest.raises(ValueError):
        RASConfig(metric="mean").validate()
