"""The policies on the sampler's device. On a GPU the sampler hands them CUDA tensors while their own
bookkeeping (skip ages, probes, active sets for the engine) stays on the CPU: the two must meet
without a device error. The "cuda" cases run with SDIT_TESTS_ON_GPU=1 on a GPU machine (the GPU
runbook's `check`); the "cpu" cases run everywhere, and so do the "mps" ones: Apple's MPS, which has no
float64, emulated on the CPU (emulated_mps.py)."""
import contextlib
import os

import pytest
import torch

from emulated_mps import emulated_mps

from comfyui_sdit.kernels.quickshift import quickshift_parents
from comfyui_sdit.sdit_core.policy import EvalInfo, StepOutput
from comfyui_sdit.sdit_core.ras import RASConfig, RASPolicy
from comfyui_sdit.sdit_core.region_select import select_regions
from comfyui_sdit.sdit_core.sdit import SDiTConfig, SDiTPolicy

ON_GPU = torch.cuda.is_available() and os.environ.get("SDIT_TESTS_ON_GPU") == "1"
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not ON_GPU, reason="SDIT_TESTS_ON_GPU=1 on a GPU")),
           pytest.param("mps", id="mps (emulated: no float64)")]


@pytest.fixture(params=DEVICES)
def device(request):
    with emulated_mps() if request.param == "mps" else contextlib.nullcontext():
        yield request.param


GRID, BATCH, PATCH, STEPS = (8, 10), 2, 2, 12


def inpaint_mask(device):
    """Tokens the sampler may repaint: the left 7 columns of the first image, all of the second."""
    mask = torch.ones(BATCH, *GRID, dtype=torch.bool)
    mask[0, :, 7:] = False
    return mask.reshape(BATCH, -1).to(device)


def drive(policy, device, seed=0):
    """Plans and observes STEPS evaluations of random post-CFG outputs on `device`; returns the plans."""
    g = torch.Generator().manual_seed(seed)
    plans = []
    for step in range(STEPS):
        sigma = 1.0 - step / STEPS
        plans.append(policy.plan(EvalInfo(step, step, STEPS, sigma, GRID, BATCH)))
        shape = (BATCH, 4, GRID[0] * PATCH, GRID[1] * PATCH)
        x, denoised = torch.randn(shape, generator=g), torch.randn(shape, generator=g).cumsum(-1) / 4
        noise = (x - denoised) / sigma
        policy.observe(StepOutput(*(t.to(device) for t in (x, denoised, noise)), torch.full((BATCH,), sigma, device=device)))
    return plans


def assert_mask_respected(active, selectable):
    """Tokens outside the mask only once every token inside runs (the batch's rows are one length)."""
    selectable = selectable.cpu()
    picked = torch.zeros_like(selectable).scatter_(1, active.cpu(), True)
    for b in range(BATCH):
        if (picked[b] & ~selectable[b]).any():
            assert picked[b][selectable[b]].all(), "a token outside the mask ran before one inside"


def longest_skip(plans, selectable):
    """Longest run of sparse evaluations a selectable token sat out."""
    run = torch.zeros(BATCH, GRID[0] * GRID[1], dtype=torch.int64)
    longest = 0
    for active in plans:
        if active is None:
            run.zero_()
            continue
        ran = torch.zeros_like(run, dtype=torch.bool).scatter_(1, active.cpu(), True)
        run = torch.where(ran, torch.zeros_like(run), run + 1)
        longest = max(longest, int(run[selectable.cpu()].max()))
    return longest


def test_sdit_plans_on_the_device_with_forced_and_masked_tokens(device):
    policy = SDiTPolicy(SDiTConfig(sample_ratio=0.25, warmup_steps=1, cooldown_steps=0, max_skip_age=3), PATCH,
                        quickshift_parents=quickshift_parents)     # as the node makes it: Triton on a GPU
    policy.selectable = inpaint_mask(device)
    plans = drive(policy, device)
    sparse = [p for p in plans if p is not None]
    assert len(sparse) >= STEPS - 3
    for active in sparse:
        assert active.device.type == "cpu" and active.shape[0] == BATCH
        assert_mask_respected(active, policy.selectable)
    assert longest_skip(plans, policy.selectable) <= 3


def test_ras_plans_on_the_device_with_masked_tokens(device):
    policy = RASPolicy(RASConfig(sample_ratio=0.25, warmup_steps=1, reset_steps=()), PATCH)
    policy.selectable = inpaint_mask(device)
    sparse = [p for p in drive(policy, device) if p is not None]
    assert len(sparse) == STEPS - 1          # every evaluation after the warm-up
    for active in sparse:
        assert_mask_respected(active, policy.selectable)


def test_region_selection_on_the_device_equals_the_cpu(device):
    """Labels, scores and complexity on the device, forced/selectable masks on the CPU (as the policy
    keeps them): the same tokens as an all-CPU call."""
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 9, (BATCH, *GRID), generator=g)
    scores, complexity = torch.rand(BATCH, 9, generator=g), torch.rand(BATCH, *GRID, generator=g)
    forced = torch.rand(BATCH, GRID[0] * GRID[1], generator=g) < 0.1
    selectable = inpaint_mask("cpu")
    for mode in ("inside", "on_top"):
        expected = select_regions(labels, scores, complexity, 20, 1, mode, forced, selectable)
        got = select_regions(labels.to(device), scores.to(device), complexity.to(device), 20, 1, mode, forced, selectable)
        assert torch.equal(got.cpu(), expected)


def test_sdit_extrapolation_on_the_device_equals_the_cpu(device):
    """SDiT's per-token output history, its Newton extrapolation for skipped tokens (Eq. 13) and the drift
    measure, fed as the engine feeds them (outputs on the device, computed tokens from the CPU): the CPU's
    values (float64 there), to float32 rounding on a device without float64."""
    from comfyui_sdit.sdit_core.extrapolation import OutputHistory, relative_error
    g = torch.Generator().manual_seed(5)
    tokens, channels = GRID[0] * GRID[1], 16
    outputs = [torch.randn(BATCH, tokens, channels, generator=g) for _ in range(5)]
    computed = [None] + [torch.stack([torch.randperm(tokens, generator=g)[:20] for _ in range(BATCH)])
                         for _ in range(4)]
    results = {}
    for where in ("cpu", device):
        history = OutputHistory(order=2)
        for output, sigma, rows in zip(outputs, (1.0, 0.8, 0.62, 0.45, 0.3), computed):
            history.record(output.to(where), sigma, rows)
        predicted = history.predict(0.2, decay=0.1, horizon=0.5)
        assert predicted.device.type == torch.device(where).type
        results[where] = predicted.cpu(), float(relative_error(predicted, outputs[-1].to(where)))
    torch.testing.assert_close(results[device][0], results["cpu"][0], rtol=1e-4, atol=1e-5)
    assert results[device][1] == pytest.approx(results["cpu"][1], rel=1e-5)


def test_the_sampler_sigmas_on_the_device_map_to_steps(device):
    """The engine maps each evaluation to its step by the sampler's sigmas, which ComfyUI moves to the
    model's device."""
    from comfyui_sdit.sdit_core.schedule import step_of_sigma
    sigmas = torch.linspace(1.0, 0.0, 9).to(device)
    assert [step_of_sigma(sigmas, s) for s in (1.0, 0.8, 0.75, 0.5, 0.0)] == [0, 1, 2, 4, 7]


@pytest.mark.skipif(not ON_GPU, reason="SDIT_TESTS_ON_GPU=1 on a GPU")
def test_a_sparse_sdit_evaluation_syncs_a_few_times():
    """CUDA's own sync debug mode counts every synchronising call of one sparse evaluation (plan,
    observe): three reads (the token count, the chosen tokens, the tree roots for connected components)
    and the region count, plus the copies of host tensors to the GPU (forced tokens, labels, skip ages):
    at most 10, where the contiguity pass on the GPU alone took five and the trace's maps two more.
    tests/test_host_syncs.py pins the reads on the CPU."""
    import warnings
    device = "cuda"
    policy = SDiTPolicy(SDiTConfig(sample_ratio=0.25, warmup_steps=1, cooldown_steps=0), PATCH,
                        quickshift_parents=quickshift_parents)
    drive(policy, device)                                      # warm-up: caches, lazy constants, a history
    x = torch.randn(BATCH, 4, GRID[0] * PATCH, GRID[1] * PATCH).to(device)
    step = StepOutput(x, x.cumsum(-1) / 4, x, torch.full((BATCH,), 0.5, device=device))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            active = policy.plan(EvalInfo(STEPS, STEPS - 2, STEPS, 0.2, GRID, BATCH))
            policy.observe(step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert active is not None
    assert len(syncs) <= 10, syncs
