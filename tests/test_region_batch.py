"""SDiT's region scoring and selection run over the whole batch at once (one host sync per call on the
GPU): each image must get exactly what it gets alone."""
import pytest
import torch

from comfyui_sdit.sdit_core.complexity import region_scores, region_scores_batch
from comfyui_sdit.sdit_core.region_select import dilate_min, fill_order, region_rank_map, select_regions
from comfyui_sdit.sdit_core.sdit import SDiTConfig, SDiTPolicy
from comfyui_sdit.sdit_core.segmentation import QuickshiftParams, segment_batch


def segmented_batch(grid, batch=3, seed=0):
    """Real Quickshift labels (different region counts per image) and a complexity map."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, *grid, 4, generator=g).cumsum(-2)     # smooth rows: regions of many sizes
    labels = segment_batch(features, QuickshiftParams(kernel_size=1.5, max_dist=4.0))
    return labels, torch.rand(batch, *grid, generator=g)


def one_image(labels, scores, complexity, budget, dilation, mode, forced, selectable, connectivity):
    """The selection of one image on its own (the definition the batch must follow): its regions in
    score order, dilated, filled by complexity; its size before the batch is made rectangular."""
    n = labels.numel()
    rank = region_rank_map(labels, scores)
    dilated = dilate_min(rank, dilation, connectivity).reshape(-1)
    allowed = selectable if selectable is not None else torch.ones(n, dtype=torch.bool)
    must = forced & allowed if forced is not None else torch.zeros(n, dtype=torch.bool)
    if mode == "inside":
        priority, size = dilated, budget
    else:
        outside = torch.where(allowed, rank.reshape(-1), rank.reshape(-1) + n)
        chosen = torch.zeros(n, dtype=torch.bool)
        chosen[fill_order(outside[None], complexity.reshape(1, -1))[0][:max(budget - int(must.sum()), 0)]] = True
        grown = dilate_min((~(chosen & allowed)).view(labels.shape).to(torch.int8), dilation, connectivity) == 0
        grown = grown.reshape(-1) & allowed
        priority, size = torch.where(grown, torch.zeros_like(dilated), dilated + 1), int((grown | must).sum())
    priority = torch.where(must, torch.full_like(priority, -1), priority)
    priority = torch.where(allowed, priority, priority + 2 * n + 2)
    order = fill_order(priority[None], complexity.reshape(1, -1))[0]
    return order, max(min(size, int(allowed.sum())), int(must.sum()), 1)


def test_batched_region_scores_equal_each_image_alone():
    labels, complexity = segmented_batch((12, 10))
    table = region_scores_batch(labels, complexity, 0.2)
    assert len({int(labels[b].max()) for b in range(3)}) > 1, "the images need different region counts"
    for b in range(3):
        alone = region_scores(labels[b], complexity[b], 0.2)
        assert torch.equal(table[b, :alone.numel()], alone)
        assert not table[b, alone.numel():].any()        # regions the image does not have score 0


@pytest.mark.parametrize("grid,connectivity", [((12, 10), 26), ((3, 6, 5), 26), ((3, 6, 5), 6)])
@pytest.mark.parametrize("mode", ["inside", "on_top"])
@pytest.mark.parametrize("with_masks", [False, True])
def test_batched_selection_equals_each_image_alone(grid, connectivity, mode, with_masks):
    labels, complexity = segmented_batch(grid, seed=len(grid) + connectivity)
    scores = region_scores_batch(labels, complexity, 0.2)
    batch, n = labels.shape[0], labels[0].numel()
    g = torch.Generator().manual_seed(1)
    forced = torch.rand(batch, n, generator=g) < 0.05 if with_masks else None
    selectable = torch.rand(batch, n, generator=g) < 0.7 if with_masks else None
    budget = n // 4
    picked = select_regions(labels, scores, complexity, budget, 1, mode, forced, selectable, connectivity)
    alone = [one_image(labels[b], scores[b], complexity[b], budget, 1, mode,
                       None if forced is None else forced[b], None if selectable is None else selectable[b],
                       connectivity) for b in range(batch)]
    count = max(size for _, size in alone)
    assert picked.shape == (batch, count)
    for b, (order, _) in enumerate(alone):
        assert torch.equal(picked[b], order[:count].sort().values)
    # a list of per-image scores (each image's own region count) selects the same
    listed = [scores[b, :int(labels[b].max()) + 1] for b in range(batch)]
    assert torch.equal(select_regions(labels, listed, complexity, budget, 1, mode, forced, selectable, connectivity),
                       picked)


def test_aged_scores_equal_each_image_alone():
    labels, complexity = segmented_batch((12, 10))
    policy = SDiTPolicy(SDiTConfig(age_weight=0.5), patch_size=2)
    policy._labels, policy._scores = labels, region_scores_batch(labels, complexity, 0.2)
    age = torch.randint(0, 5, (3, 120), generator=torch.Generator().manual_seed(2))
    aged = policy._aged_scores(age)
    for b in range(3):
        k = policy._scores.shape[1]
        flat = labels[b].reshape(-1)
        mean_age = torch.bincount(flat, weights=age[b].double(), minlength=k) / torch.bincount(flat, minlength=k).clamp_min(1)
        assert torch.allclose(aged[b], policy._scores[b] * (1 + 0.5 * mean_age.float()), rtol=1e-6, atol=0)
