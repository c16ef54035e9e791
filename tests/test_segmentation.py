"""Quickshift backends on synthetic feature maps with known regions, and against each other."""
import pytest
import torch

from comfyui_sdit.sdit_core.segmentation import BACKENDS, QuickshiftParams, segment
from comfyui_sdit.sdit_core.segmentation.agreement import adjusted_rand_index
from comfyui_sdit.sdit_core.segmentation.contiguity import split_disconnected


def piecewise_constant(seed: int, height=24, width=32, features=8, noise=0.05):
    """Four rectangles and a disc, each with its own constant feature vector, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.zeros(height, width, dtype=torch.int64)
    truth[: height // 2, width // 2:] = 1
    truth[height // 2:, : width // 3] = 2
    truth[height // 2:, width // 3:] = 3
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    truth[(rows - 6) ** 2 + (cols - 7) ** 2 <= 16] = 4
    centres = 2.0 * torch.randn(5, features, generator=g)
    values = centres[truth] + noise * torch.randn(height, width, features, generator=g)
    return values, truth


def snake_labels(rows: int, cols: int) -> torch.Tensor:
    """Label 1 runs along every other row, the runs joined at alternate ends: one region whose far end
    is ~rows * cols / 2 tokens from its first (the worst case for label propagation)."""
    snake = torch.zeros(rows, cols, dtype=torch.int64)
    for row in range(0, rows, 2):
        snake[row] = 1
        if row + 2 < rows:
            snake[row + 1, -1 if row % 4 == 0 else 0] = 1
    return snake


PARAMS = QuickshiftParams(kernel_size=3.0, max_dist=20.0, ratio=10.0)


def test_adjusted_rand_index_by_hand():
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 7, 7]) == pytest.approx(1.0)
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    assert adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) == pytest.approx(0.24242424)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_backends_recover_known_regions(backend, seed):
    features, truth = piecewise_constant(seed)
    labels = segment(features, PARAMS, backend=backend)
    assert labels.shape == truth.shape and labels.dtype == torch.int64
    assert labels.min() == 0 and labels.max() + 1 == len(torch.unique(labels))
    assert adjusted_rand_index(labels, truth) >= 0.9


def test_torch_backend_matches_skimage_on_the_same_parameters():
    """Same density kernel, window, tie-breaking noise and max_dist cut: identical segmentations."""
    scores = []
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        smooth = torch.nn.functional.avg_pool2d(torch.randn(1, 6, 20, 28, generator=g), 5, 1, 2)[0]
        features = smooth.permute(1, 2, 0).contiguous()             # natural-looking smooth field
        params = QuickshiftParams(kernel_size=1.5, max_dist=4.0, ratio=3.0, seed=seed)
        scores.append(adjusted_rand_index(segment(features, params, "torch"), segment(features, params, "skimage")))
    assert min(scores) >= 0.99, scores


def test_window_distances_agree_between_the_gpu_and_cpu_formulations():
    from comfyui_sdit.sdit_core.segmentation.quickshift_torch import _window_sq_dist
    x = torch.randn(2, 5, 9, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(_window_sq_dist(x, 3, unfold=True), _window_sq_dist(x, 3, unfold=False), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batch_segments_exactly_as_its_images_one_by_one(backend):
    """segment_batch (one pass for the whole batch with the torch backend) == segment() of each image."""
    from comfyui_sdit.sdit_core.segmentation import segment_batch
    images = [piecewise_constant(seed)[0] for seed in (0, 1, 2)]
    images[1] = images[1].flip(0)                                   # items that differ in layout too
    params = QuickshiftParams(kernel_size=1.5, max_dist=4.0, ratio=3.0)
    batch = segment_batch(torch.stack(images), params, backend)
    assert batch.shape == (3, 24, 32) and batch.dtype == torch.int64
    for item, image in zip(batch, images):
        assert torch.equal(item, segment(image, params, backend))
    split = split_disconnected(torch.stack([torch.zeros(2, 3, dtype=torch.int64)] * 2), batch_dims=1)
    assert split.tolist() == [[[0] * 3] * 2] * 2, "nothing connects across the batch; each item starts at 0"


def test_region_count_follows_the_parameters():
    g = torch.Generator().manual_seed(5)
    features = torch.nn.functional.avg_pool2d(torch.randn(1, 4, 32, 32, generator=g), 3, 1, 1)[0].permute(1, 2, 0)
    counts = [int(segment(features, QuickshiftParams(kernel_size=k, max_dist=d, ratio=2.0)).max()) + 1
              for k, d in [(1.0, 2.0), (2.0, 6.0), (4.0, 20.0)]]
    assert counts[0] > counts[1] > counts[2] >= 1


def test_regions_are_contiguous():
    labels = torch.tensor([[0, 0, 1, 0],
                           [1, 1, 1, 0],
                           [2, 2, 1, 0]])
    split = split_disconnected(labels)
    # the two 0-islands become separate regions, numbered in raster order of their first pixel
    assert split.tolist() == [[0, 0, 1, 2], [1, 1, 1, 2], [3, 3, 1, 2]]
    for backend in BACKENDS:
        features, _ = piecewise_constant(7)
        labels = segment(features, QuickshiftParams(kernel_size=1.0, max_dist=3.0, ratio=1.0), backend)
        assert torch.equal(split_disconnected(labels), labels)


def components_reference(labels: torch.Tensor) -> torch.Tensor:
    """scipy's connected components (4-/6-connected) of each label value, numbered in raster order of
    their first token: what split_disconnected promises."""
    import numpy as np
    from scipy import ndimage
    values = labels.numpy()
    components = np.zeros(values.shape, dtype=np.int64)
    found = 0
    for value in np.unique(values):
        parts, count = ndimage.label(values == value)      # default structure: face neighbours only
        components[parts > 0] = parts[parts > 0] + found
        found += count
    first_seen = {}
    for c in components.reshape(-1):
        first_seen.setdefault(int(c), len(first_seen))
    return torch.tensor(np.vectorize(first_seen.get)(components))


@pytest.mark.parametrize("shape", [(40, 52), (7, 9, 11)], ids=["image", "video"])
def test_contiguity_split_equals_scipy_connected_components(shape):
    """Random labels (many islands), blocky labels, and a snake."""
    g = torch.Generator().manual_seed(11)
    cases = [torch.randint(0, 3, shape, generator=g),
             torch.nn.functional.interpolate(torch.randint(0, 4, (1, 1, *[max(1, n // 4) for n in shape]),
                                                           generator=g).float(), size=shape)[0, 0].long()]
    cases.append(snake_labels(*shape[-2:]).expand(shape).clone())
    for labels in cases:
        assert torch.equal(split_disconnected(labels), components_reference(labels))


def test_video_quickshift_of_one_frame_is_the_image_quickshift():
    from comfyui_sdit.sdit_core.segmentation import QuickshiftParams, segment
    g = torch.Generator().manual_seed(3)
    features = torch.randn(12, 14, 6, generator=g)
    params = QuickshiftParams(kernel_size=1.5, max_dist=4.0, ratio=2.0)
    assert torch.equal(segment(features[None], params, "torch")[0], segment(features, params, "torch"))


def test_video_quickshift_links_a_still_object_across_frames_and_scales_time():
    from comfyui_sdit.sdit_core.segmentation import QuickshiftParams, segment
    frame = torch.zeros(10, 10, 2)
    frame[3:7, 3:7] = torch.tensor([3.0, -3.0])                  # a square on a flat background
    video = frame[None].repeat(4, 1, 1, 1) + 0.01 * torch.randn(4, 10, 10, 2, generator=torch.Generator().manual_seed(1))
    params = QuickshiftParams(kernel_size=1.0, max_dist=3.0, ratio=1.0)
    labels = segment(video, params, "torch", frame_scale=1.0)
    square = labels[:, 3:7, 3:7]
    assert torch.unique(square).numel() == 1, "the still square is one region over every frame"
    assert not (labels[:, 0, 0] == square[0, 0, 0]).any()
    far = segment(video, params, "torch", frame_scale=50.0)         # frames too far apart to link
    assert torch.unique(far[:, 4, 4]).numel() == 4
    with pytest.raises(ValueError, match="2-D only"):
        segment(video, params, "skimage")


def test_video_dilation_26_and_6_connected():
    from comfyui_sdit.sdit_core.region_select import dilate_mask
    point = torch.zeros(5, 5, 5, dtype=torch.bool)
    point[2, 2, 2] = True
    assert int(dilate_mask(point, 1, 26).sum()) == 27
    assert int(dilate_mask(point, 1, 6).sum()) == 7
    assert int(dilate_mask(point, 2, 6).sum()) == 25           # the octahedron of radius 2


def video_parents_by_offsets(features, params, frame_scale):
    """The definition, one window offset (dt, dy, dx) at a time in that order (quickshift_definition.py):
    the oracle for the vectorised backend. Each token's parent."""
    import math
    import numpy as np
    from quickshift_definition import window_pass
    t, h, w, f = features.shape
    half = math.ceil(3 * params.kernel_size)
    half_t = min(t - 1, math.ceil(3 * params.kernel_size / frame_scale))
    noise = torch.from_numpy(np.random.default_rng(params.seed).normal(scale=0.00001, size=(t, h, w))).reshape(-1)
    return window_pass((features.double() * params.ratio).reshape(-1, f), (t, h, w), half, half_t, frame_scale,
                       params.kernel_size, params.max_dist, noise)[1]


@pytest.mark.parametrize("unfold", [False, True], ids=["offset-loop (CPU)", "unfold (GPU)"])
def test_video_quickshift_equals_its_definition(unfold, monkeypatch):
    """Both ways of computing the window (and frame chunks smaller than the video) give the tree roots of
    the offset-by-offset definition, ties included."""
    from comfyui_sdit.sdit_core.segmentation import QuickshiftParams
    from comfyui_sdit.sdit_core.segmentation import quickshift_video as module
    from comfyui_sdit.sdit_core.segmentation.quickshift_torch import tree_roots
    monkeypatch.setattr(module, "CHUNK_ELEMENTS", 4 * 49 * 9 * 11 * 2)     # a few frames per chunk
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        t, h, w = 1 + seed % 5, 6 + seed % 4, 8 + seed % 3
        features = torch.randn(t, h, w, 4, generator=g).cumsum(1).cumsum(2) * 0.3
        params = QuickshiftParams(kernel_size=0.7 + 0.1 * seed, max_dist=2.0 + seed % 4, ratio=2.0)
        frame_scale = (0.5, 1.0, 3.0)[seed % 3]
        expected = tree_roots(video_parents_by_offsets(features, params, frame_scale)[None]).view(t, h, w)
        parents = module.video_parents(features, params, frame_scale, unfold=unfold)
        assert torch.equal(tree_roots(parents[None]).view(t, h, w), expected), seed


@pytest.mark.parametrize("unfold", [False, True], ids=["offset-loop (CPU)", "unfold (GPU)"])
def test_video_quickshift_ties_go_to_the_first_offset(unfold):
    """Features on a lattice of quarters make distances exact, so many tokens have two or more nearest
    denser neighbours, in the same frame and across frames: the parent is the first in (dt, dy, dx) order,
    as in the definition (random features never tie exactly)."""
    from comfyui_sdit.sdit_core.segmentation import QuickshiftParams
    from comfyui_sdit.sdit_core.segmentation.quickshift_video import video_parents
    g = torch.Generator().manual_seed(5)
    for t, frame_scale in [(3, 1.0), (4, 2.0), (5, 0.5)]:
        features = torch.randint(-2, 3, (t, 6, 7, 2), generator=g).double() * 0.25
        params = QuickshiftParams(kernel_size=1.0, max_dist=3.0, ratio=2.0)
        expected = video_parents_by_offsets(features, params, frame_scale)
        got = video_parents(features, params, frame_scale, unfold=unfold)
        assert torch.equal(got, expected), (t, frame_scale)
