"""SDiT formulas (Eq. 5-15) against hand-computed values."""
import math

import pytest
import torch

from comfyui_sdit.sdit_core.complexity import pixel_complexity, region_scores
from comfyui_sdit.sdit_core.extrapolation import OutputHistory, newton_extrapolate, relative_error
from comfyui_sdit.sdit_core.ratio_schedule import ssd_counts, ssd_fraction
from comfyui_sdit.sdit_core.region_select import dilate_min, region_rank_map, select_regions


# ---- Eq. 5 / 6 ------------------------------------------------------------------------------------

def test_pixel_complexity_terms_by_hand():
    x_pred = torch.zeros(1, 1, 3, 3)
    x_pred[0, 0, 1, 1] = 2.0                      # a single bright pixel
    x_t = x_pred + 1.0
    edges = pixel_complexity(x_t, x_pred, alpha=1, gamma=0, beta=0)[0]
    # central differences: at (1,0) dx = (2 - 0)/2 = 1; at the centre both are 0
    assert edges[1, 0].item() == pytest.approx(1.0) and edges[1, 1].item() == 0.0
    lap = pixel_complexity(x_t, x_pred, alpha=0, gamma=1, beta=0)[0]
    assert lap[1, 1].item() == pytest.approx(8.0) and lap[0, 1].item() == pytest.approx(2.0)
    assert lap[0, 0].item() == 0.0
    residual = pixel_complexity(x_t, x_pred, alpha=0, gamma=0, beta=1)[0]
    assert torch.allclose(residual, torch.ones(3, 3))
    both = pixel_complexity(x_t, x_pred, alpha=2, gamma=1, beta=3)[0]
    assert both[1, 0].item() == pytest.approx(2 * 1 + 1 * 2 + 3 * 1)   # lap at (1,0): 2 - 0 = 2


def test_region_scores_take_the_top_q_fraction():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    complexity = torch.tensor([1.0, 9.0, 3.0, 5.0, 2.0, 4.0, 7.0])
    # q = 0.5: region 0 -> mean of top 2 = (9+5)/2; region 1 -> top 1 = 4; region 2 -> 7
    assert region_scores(labels, complexity, 0.5).tolist() == [7.0, 4.0, 7.0]
    # q = 1: plain means
    assert region_scores(labels, complexity, 1.0).tolist() == [4.5, 3.0, 7.0]
    # tiny q still keeps one token per region
    assert region_scores(labels, complexity, 0.01).tolist() == [9.0, 4.0, 7.0]


# ---- Eq. 7 / 8 and the exact budget -------------------------------------------------------------

def grid_regions():
    labels = torch.tensor([[0, 0, 1, 1, 1],
                           [0, 0, 1, 1, 1],
                           [2, 2, 2, 3, 3],
                           [2, 2, 2, 3, 3]])
    complexity = torch.arange(20, dtype=torch.float32).view(4, 5) / 20
    return labels, complexity


def test_rank_map_and_8_connected_dilation():
    labels, _ = grid_regions()
    rank = region_rank_map(labels, torch.tensor([0.1, 0.9, 0.5, 0.2]))   # order 1, 2, 3, 0
    assert rank.tolist() == [[3, 3, 0, 0, 0], [3, 3, 0, 0, 0], [1, 1, 1, 2, 2], [1, 1, 1, 2, 2]]
    d = dilate_min(rank, 1)
    # (2,1) touches region 1 diagonally at (1,2): 8-connectivity gives it rank 0
    assert d[2, 1].item() == 0 and d[3, 0].item() == 1 and d[0, 0].item() == 3 and d[0, 1].item() == 0


def test_select_fills_region_order_then_complexity_inside_budget():
    labels, complexity = grid_regions()
    scores = [torch.tensor([0.1, 0.9, 0.5, 0.2])]
    picked = select_regions(labels[None], scores, complexity[None], budget=6, dilation=0)[0]
    # region 1 (6 tokens) fills the budget exactly
    assert picked.tolist() == [2, 3, 4, 7, 8, 9]
    picked = select_regions(labels[None], scores, complexity[None], budget=8, dilation=0)[0]
    # region 1 plus the 2 most complex tokens of region 2: (3,2)=17/20 and (3,1)=16/20
    assert picked.tolist() == [2, 3, 4, 7, 8, 9, 16, 17]
    dilated = select_regions(labels[None], scores, complexity[None], budget=12, dilation=1)[0]
    # dilated region 1 = region 1 + its 8-neighbours: (0,1),(1,1),(2,1),(2,2),(2,3),(2,4) -> 12 tokens
    assert dilated.tolist() == [1, 2, 3, 4, 6, 7, 8, 9, 11, 12, 13, 14]


def test_select_on_top_grows_the_batch_to_the_largest_dilation():
    labels, complexity = grid_regions()
    labels2 = torch.stack([labels, labels.flip(1)])
    scores = [torch.tensor([0.1, 0.9, 0.5, 0.2])] * 2
    picked = select_regions(labels2, scores, torch.stack([complexity] * 2), budget=6, dilation=1, mode="on_top")
    assert picked.shape == (2, 12)      # region 1 (6) + dilation (6): both images grow to 12
    inside = select_regions(labels2, scores, torch.stack([complexity] * 2), budget=6, dilation=1, mode="inside")
    assert inside.shape == (2, 6)


# ---- Eq. 9-14 ------------------------------------------------------------------------------------

def test_newton_extrapolation_is_exact_for_polynomials_on_non_uniform_sigmas():
    chronological = [0.93, 0.71, 0.40]          # sampling order (sigma falls), non-uniform gaps

    def v(s):
        return 0.3 - 1.2 * s + 2.5 * s * s

    history = OutputHistory(order=2)
    for s in chronological:
        history.record(torch.full((1, 1, 1), v(s), dtype=torch.float64), s, None)
    target = 0.22
    assert history.predict(target).item() == pytest.approx(v(target), abs=1e-9)
    # order 1: the line through the two newest samples (hand computed)
    slope = (v(0.40) - v(0.71)) / (0.40 - 0.71)
    assert history.predict(target, order=1).item() == pytest.approx(v(0.40) + slope * (target - 0.40), abs=1e-9)
    # order 0: the newest sample (RAS reuse)
    assert history.predict(target, order=0).item() == pytest.approx(v(0.40))


def test_decay_weights_higher_orders_by_hand():
    s0, s1, s2 = 0.5, 0.8, 0.9                   # newest first
    vals = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64).view(3, 1, 1, 1)
    sig = torch.tensor([s0, s1, s2], dtype=torch.float64).view(3, 1, 1)
    lam, target = 2.0, 0.3
    d01 = (1.0 - 2.0) / (s0 - s1)
    d12 = (2.0 - 4.0) / (s1 - s2)
    d012 = (d01 - d12) / (s0 - s2)
    expected = (1.0 + math.exp(-lam * abs(s0 - s1)) * (target - s0) * d01
                + math.exp(-lam * abs(s0 - s2)) * (target - s0) * (target - s1) * d012)
    got = newton_extrapolate(vals, sig, torch.tensor([[3]]), target, lam)
    assert got.item() == pytest.approx(expected, abs=1e-9)


def test_horizon_fades_every_higher_term_with_the_distance_ahead():
    s0, s1, s2 = 0.5, 0.8, 0.9
    vals = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64).view(3, 1, 1, 1)
    sig = torch.tensor([s0, s1, s2], dtype=torch.float64).view(3, 1, 1)
    lam, horizon = 2.0, 20.0
    d01 = (1.0 - 2.0) / (s0 - s1)
    d012 = (d01 - (2.0 - 4.0) / (s1 - s2)) / (s0 - s2)
    for target in (0.45, 0.3):
        fade = math.exp(-horizon * abs(target - s0))
        expected = (1.0 + fade * math.exp(-lam * abs(s0 - s1)) * (target - s0) * d01
                    + fade * math.exp(-lam * abs(s0 - s2)) * (target - s0) * (target - s1) * d012)
        got = newton_extrapolate(vals, sig, torch.tensor([[3]]), target, lam, horizon)
        assert got.item() == pytest.approx(expected, abs=1e-9)
    # far ahead it is reuse; a bf16 output is kept in float32
    assert newton_extrapolate(vals, sig, torch.tensor([[3]]), -5.0, lam, horizon).item() == pytest.approx(1.0)
    history = OutputHistory(order=1)
    history.record(torch.ones(1, 2, 3, dtype=torch.bfloat16), 0.9, None)
    assert history.values.dtype == torch.float32


def test_history_per_token_and_missing_samples():
    history = OutputHistory(order=1)
    history.record(torch.tensor([[[1.0], [10.0]]]), 0.9, None)              # both tokens at 0.9
    history.record(torch.tensor([[[2.0], [99.0]]]), 0.6, torch.tensor([[0]]))  # only token 0 at 0.6
    pred = history.predict(0.3)[0, :, 0]
    assert pred[0].item() == pytest.approx(2.0 + (2.0 - 1.0) / (0.6 - 0.9) * (0.3 - 0.6))
    assert pred[1].item() == pytest.approx(10.0), "one sample: order 0 for that token"
    # a repeated sigma (two evaluations at one sigma) falls back to the lower order, never divides by 0
    history.record(torch.tensor([[[3.0], [11.0]]]), 0.6, torch.tensor([[0]]))
    assert torch.isfinite(history.predict(0.3)).all()
    assert history.predict(0.3)[0, 0, 0].item() == pytest.approx(3.0)
    assert float(relative_error(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 2.0]))) == pytest.approx(1 / math.sqrt(5))


# ---- Eq. 15 -------------------------------------------------------------------------------------

def test_ssd_schedule_shape_and_average():
    assert ssd_fraction(0.05, 0.8, 0.2) == 0.8
    assert ssd_fraction(0.1, 0.8, 0.2) == pytest.approx(0.8)
    assert ssd_fraction(0.525, 0.8, 0.2) == pytest.approx(0.5)            # half way: the cosine midpoint
    assert ssd_fraction(0.95, 0.8, 0.2) == pytest.approx(0.2)
    assert ssd_fraction(0.97, 0.8, 0.2) == 0.8
    sparse = list(range(3, 27))
    counts = ssd_counts(sparse, 30, 1000, 0.25, 0.5)
    assert sum(counts.values()) == 250 * len(sparse)
    values = [counts[s] for s in sparse]
    middle = values[len(values) // 2]
    assert values[0] > middle and min(values) < 250 < max(values)


def test_counts_saturate_at_every_token_and_keep_the_total():
    sparse = list(range(2, 20))
    assert set(ssd_counts(sparse, 20, 64, 1.0, 0.5).values()) == {64}
    near = ssd_counts(sparse, 20, 64, 0.9, 0.5)
    assert max(near.values()) <= 64 and sum(near.values()) == round(0.9 * 64) * len(sparse)
    tiny = ssd_counts(sparse, 20, 64, 0.01, 0.9)
    assert min(tiny.values()) >= 1 and sum(tiny.values()) == 1 * len(sparse)


def test_tokens_spanning_two_latent_frames_pool_them_by_hand():
    """CogVideoX 1.5's tokens span two latent frames (an odd count padded by one): each token frame's scores are
    the mean of its latent frames', the last one repeated to fill its pair; every map the policies make lands on
    the token grid."""
    from comfyui_sdit.sdit_core.complexity import token_complexity
    from comfyui_sdit.sdit_core.token_features import token_features
    from comfyui_sdit.sdit_core.token_metrics import patch_average, pool_frames, token_metric
    from comfyui_sdit.sdit_core.tokens import token_grid
    frames = torch.arange(5.0).view(1, 5, 1, 1)
    assert pool_frames(frames, 2, dim=1).flatten().tolist() == [0.5, 2.5, 4.0]
    assert torch.equal(pool_frames(frames, 1, dim=1), frames)
    values = torch.arange(5.0).view(1, 5, 1, 1).expand(1, 5, 4, 4)
    assert patch_average(values, 2, 2)[0, :, 0, 0].tolist() == [0.5, 2.5, 4.0]
    latent = torch.randn(2, 4, 5, 8, 12, generator=torch.Generator().manual_seed(0))
    grid = token_grid(latent.shape, 2, 2)
    assert grid == (3, 4, 6)
    assert token_metric(latent, 2, temporal_patch=2).shape == (2, *grid)
    assert token_features(latent, latent.flip(2), 2, temporal_patch=2).shape == (2, *grid, 8)
    assert token_complexity(latent, latent.flip(2), 2, temporal=1.0, temporal_patch=2).shape == (2, *grid)
    # one latent frame per token: unchanged
    assert token_metric(latent, 2).shape == (2, 5, 4, 6)
