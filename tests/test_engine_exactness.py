"""Exactness of the token-sparse engine on ComfyUI's real model classes (tiny, random weights, fp32, CPU).

Every supported family (tests/sdit_testkit.py FAMILIES). Flux runs cond and uncond batched in one call
(one stream); Chroma gets prompts of different lengths, which ComfyUI runs as separate calls (two
streams per evaluation)."""
import contextlib
import math

import pytest
import torch

from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.engine import SparseRun
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from comfyui_sdit.sdit_core.tokens import index_to_mask, token_grid
from sdit_testkit import (FAMILIES, assert_exact_on_active_tokens, flux_conditioning, ksample, random_active,
                          sample_with, tiny_flux)

TOL = 1e-5


class RecordingPolicy(FixedPlanPolicy):
    """Plays back plans and records every forward's full token output."""

    def __init__(self, plans):
        super().__init__(plans)
        self.outputs = []       # (eval index, stream, output, computed index)

    def on_output(self, stream, info, output, computed):
        self.outputs.append((info.index, stream, output.clone(), computed))


def patch(model, plans):
    policy = RecordingPolicy(plans)
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    return patched, slot, policy


def repeated_evals(inputs_per_eval):
    """A sampler that evaluates the model at sigmas[0] once per given input transform."""
    denoised = []

    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        for make_input in inputs_per_eval:
            denoised.append(model(make_input(x), sigmas[0] * s_in, **extra_args))
        return x
    return sampler, denoised


CASES = [
    pytest.param(1, 1.0, (16, 16), id="batch1-cfg1-16x16"),
    pytest.param(2, 3.0, (24, 40), id="batch2-cfg3-24x40"),
]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("batch,cfg,size", CASES)
def test_all_tokens_active_equals_unpatched(family, batch, cfg, size):
    spec = FAMILIES[family]
    model = spec.build(seed=3)
    size = spec.same_grid(size)
    latent = spec.latent(batch, *size)
    tokens = spec.tokens(*size)
    everything = torch.arange(tokens).expand(batch, -1)
    conds = dict(positive=spec.positive(), negative=spec.negative())
    reference = ksample(model, latent, seed=5, steps=5, cfg=cfg, **conds)
    patched, slot, policy = patch(model, [None] + [everything] * 4)
    sparse = ksample(patched, latent, seed=5, steps=5, cfg=cfg, **conds)
    assert (sparse - reference).abs().max().item() <= TOL
    # the sparse path really ran: four evaluations through gathered tokens
    assert [e.dense for e in slot.last_run.evals] == [True, False, False, False, False]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("batch,cfg,size", CASES)
def test_dense_then_sparse_matches_dense_on_active_tokens(family, batch, cfg, size):
    spec = FAMILIES[family]
    streams = spec.cfg_streams if cfg > 1 else 1
    conds = dict(positive=spec.positive(), negative=spec.negative())
    model = spec.build(seed=4)
    size = spec.same_grid(size)
    latent = spec.latent(batch, *size)
    tokens = spec.tokens(*size)
    n = tokens // 3
    first, second = random_active(batch, tokens, n, seed=1), random_active(batch, tokens, n, seed=2)
    if batch > 1:
        assert not torch.equal(first[0].sort().values, first[1].sort().values)
    shifted = lambda x: x + 0.25  # noqa: E731  a different input for the third evaluation
    patched, slot, policy = patch(model, [None, first, second])
    sampler, denoised = repeated_evals([lambda x: x, lambda x: x, shifted])
    sigmas = torch.tensor([0.8, 0.0])
    sample_with(patched, latent, sampler, sigmas, cfg=cfg, seed=9, **conds)

    unpatched_sampler, unpatched_denoised = repeated_evals([lambda x: x])
    sample_with(model, latent, unpatched_sampler, sigmas, cfg=cfg, seed=9, **conds)

    assert len(policy.outputs) == 3 * streams
    by_stream = {}
    extra = policy.outputs[0][2].shape[1] - tokens      # tokens after the grid that always run (Z-Image padding)
    for index, stream, out, computed in policy.outputs:
        by_stream.setdefault(stream, {})[index] = (out[:, :tokens], computed)
    assert len(by_stream) == streams
    for outs in by_stream.values():
        dense, _ = outs[0]
        sparse, computed = outs[1]
        rows = dense.shape[0]
        active = index_to_mask(computed, tokens)                              # (rows, tokens)
        assert rows * streams == batch * (2 if cfg > 1 else 1) and active.shape[0] == rows
        diff = (sparse - dense).abs().amax(dim=-1)                            # (rows, tokens)
        assert diff[active].max().item() <= TOL
        assert torch.equal(sparse[~active], dense[~active])                  # cached outputs
        third, computed3 = outs[2]
        active3 = index_to_mask(computed3, tokens)
        assert torch.equal(third[~active3], sparse[~active3]), "inactive tokens hold their cached output"
        assert (third[active3] - sparse[active3]).abs().max().item() > 1e-3, "active tokens were recomputed"
    # The same input gives the dense result everywhere, also after CFG and conversion to x0.
    assert (denoised[1] - unpatched_denoised[0]).abs().max().item() <= TOL
    assert (denoised[0] - unpatched_denoised[0]).abs().max().item() <= TOL
    # Tokens processed, attention by attention (Flux: 2 double + 2 single blocks), n image queries per row.
    calls = [e.calls for e in slot.last_run.evals]
    assert [len(c) for c in calls] == [streams] * 3
    for index, expected in enumerate((tokens, n, n)):
        assert all(c.attention_image_rows == [expected + extra] * spec.attention_layers for c in calls[index])


def test_sampling_leaves_the_original_model_bit_identical():
    model = tiny_flux(seed=6)
    latent = torch.zeros(1, 16, 16, 24)
    before = ksample(model, latent, seed=2, steps=4, cfg=2.0)
    half = random_active(1, 8 * 12, 48, seed=0)
    patched, slot, _ = patch(model, [None, half, half, half])
    sparse = ksample(patched, latent, seed=2, steps=4, cfg=2.0)
    after = ksample(model, latent, seed=2, steps=4, cfg=2.0)
    assert torch.equal(before, after)
    assert (sparse - before).abs().max().item() > 1e-4, "the patched clone did run sparse"
    assert "optimized_attention_override" not in model.model_options.get("transformer_options", {})
    assert not model.object_patches and not model.wrappers
    assert slot.run is None and not slot.last_run.streams, "caches dropped when sampling ends"


def test_full_sampling_counts_tokens_exactly():
    model = tiny_flux(seed=7)
    latent = torch.zeros(2, 16, 16, 16)
    tokens, n = 64, 16
    plans = [None, None] + [random_active(2, tokens, n, seed=s) for s in range(6)]
    patched, slot, _ = patch(model, plans)
    ksample(patched, latent, seed=1, steps=8, cfg=4.0, sampler="euler")
    evals = slot.last_run.evals
    assert [e.info.step for e in evals] == list(range(8))
    for e in evals:
        expected = tokens if e.info.index < 2 else n
        assert len(e.calls) == 1 and e.calls[0].rows == 4
        assert e.calls[0].image_tokens == expected
        assert e.calls[0].attention_image_rows == [expected] * 4


def test_multistage_sampler_maps_evaluations_to_steps():
    model = tiny_flux(seed=8)
    latent = torch.zeros(1, 16, 8, 8)
    patched, slot, _ = patch(model, [])
    ksample(patched, latent, steps=3, sampler="heun")
    steps = [e.info.step for e in slot.last_run.evals]
    # Heun evaluates at sigma_i, then its corrector at sigma_{i+1}; an evaluation belongs to the step
    # whose interval holds its sigma, so the corrector counts toward step i+1. The last step is Euler.
    assert steps == [0, 1, 1, 2, 2], steps
    assert len({e.info.index for e in slot.last_run.evals}) == 5


def test_existing_attention_override_is_chained():
    model = tiny_flux(seed=9).clone()
    seen = []

    def counting_override(func, *args, **kwargs):
        seen.append(args[1].shape[2])        # key length the chained override receives
        return func(*args, **kwargs)
    model.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = counting_override
    latent = torch.zeros(1, 16, 8, 8)
    reference = ksample(model, latent, steps=3)
    seen.clear()
    everything = torch.arange(16)[None]
    patched, _, _ = patch(model, [None, everything, everything])
    sparse = ksample(patched, latent, steps=3)
    assert len(seen) == 3 * 4 and set(seen) == {7 + 16}, "override called with the full cached K"
    assert (sparse - reference).abs().max().item() <= TOL


@contextlib.contextmanager
def engine_forward(patched, run, sigma, stream="s"):
    """Drives the diffusion model's forward directly, with the object patches applied."""
    patched.patch_model(load_weights=False)
    try:
        yield lambda x, **kw: _forward(patched, run, x, sigma, stream, **kw)
    finally:
        patched.unpatch_model(unpatch_weights=False)


def _forward(patched, run, x, sigma, stream, **kwargs):
    call = run.open_forward(x.shape, sigma, None, stream)
    options = dict(patched.model_options["transformer_options"], wrappers=patched.wrappers)  # as sampling does
    try:
        out = patched.model.diffusion_model(x, torch.full((x.shape[0],), sigma), transformer_options=options, **kwargs)
    finally:
        run.close_forward(call, True)
    return out


def test_controlnet_residuals_and_reference_tokens_are_gathered():
    model = tiny_flux(seed=10)
    cond = flux_conditioning(3)[0]
    x = torch.randn(1, 16, 12, 16, generator=torch.Generator().manual_seed(0))
    tokens = 6 * 8
    g = torch.Generator().manual_seed(1)
    control = {"input": [0.1 * torch.randn(1, tokens, 64, generator=g), None],
               "output": [0.1 * torch.randn(1, tokens, 64, generator=g)]}
    reference = torch.randn(1, 16, 8, 8, generator=g)
    active = random_active(1, tokens, 20, seed=4)
    patched, slot, policy = patch(model, [None, active])
    kwargs = dict(context=cond[0], y=cond[1]["pooled_output"], guidance=torch.tensor([3.5]),
                  control=control, ref_latents=[reference])
    run = SparseRun(policy, x.shape, patch_size=2)
    slot.run = run
    try:
        with engine_forward(patched, run, 0.7) as forward:
            dense = forward(x, **kwargs)
            sparse = forward(x, **kwargs)
    finally:
        slot.run = None
    plain = model.model.diffusion_model(x, torch.full((1,), 0.7), transformer_options={}, **kwargs)
    assert (dense - plain).abs().max().item() <= TOL
    assert (sparse - plain).abs().max().item() <= TOL
    # the sparse forward ran 20 grid tokens plus the 16 reference tokens through every block
    assert run.evals[1].calls[0].attention_image_rows == [20 + 16] * 4
    # and residuals count: without them the result differs
    no_control = dict(kwargs, control=None)
    assert (model.model.diffusion_model(x, torch.full((1,), 0.7), transformer_options={}, **no_control)
            - plain).abs().max().item() > 1e-3


def dense_sparse_plain(model, x, sigma, n_active, patch_size=2, **kwargs):
    """One dense then one sparse forward through the engine on the same input, and the plain forward."""
    grid = math.prod(token_grid(x.shape, patch_size))          # (frames x) rows x cols
    patched, slot, policy = patch(model, [None, random_active(x.shape[0], grid, n_active, seed=4)])
    run = SparseRun(policy, x.shape, patch_size=patch_size)
    slot.run = run
    try:
        with engine_forward(patched, run, sigma) as forward:
            dense = forward(x, **kwargs)
            sparse = forward(x, **kwargs)
    finally:
        slot.run = None
    plain = model.model.diffusion_model(x, torch.full((x.shape[0],), sigma), transformer_options={}, **kwargs)
    return dense, sparse, plain, run


def test_sd3_controlnet_residuals_are_gathered():
    model = FAMILIES["sd35"].build(seed=11)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 16, 8, 12, generator=g)
    tokens = 4 * 6
    control = {"output": [0.1 * torch.randn(1, tokens, 128, generator=g), None]}
    kwargs = dict(context=torch.randn(1, 5, 32, generator=g), y=torch.randn(1, 32, generator=g), control=control)
    dense, sparse, plain, run = dense_sparse_plain(model, x, 0.6, 10, **kwargs)
    assert (dense - plain).abs().max().item() <= TOL and (sparse - plain).abs().max().item() <= TOL
    assert run.evals[1].calls[0].attention_image_rows == [10] * 3
    no_control = model.model.diffusion_model(x, torch.full((1,), 0.6), transformer_options={},
                                             **dict(kwargs, control=None))
    assert (no_control - plain).abs().max().item() > 1e-3, "the residuals count"


def test_qwen_image_reference_latents_and_controlnet_residuals():
    model = FAMILIES["qwen_image"].build(seed=12)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16, 1, 8, 12, generator=g)
    tokens, reference_tokens = 4 * 6, 4 * 4
    control = {"input": [0.1 * torch.randn(1, tokens, 64, generator=g)]}
    kwargs = dict(context=torch.randn(1, 5, 32, generator=g), ref_latents=[torch.randn(1, 16, 1, 8, 8, generator=g)],
                  control=control)
    dense, sparse, plain, run = dense_sparse_plain(model, x, 0.6, 10, **kwargs)
    assert (dense - plain).abs().max().item() <= TOL and (sparse - plain).abs().max().item() <= TOL
    # the sparse forward ran 10 grid tokens plus every reference token through both blocks
    assert run.evals[1].calls[0].attention_image_rows == [10 + reference_tokens] * 2
    for changed in (dict(kwargs, control=None), dict(kwargs, ref_latents=None)):
        other = model.model.diffusion_model(x, torch.full((1,), 0.6), transformer_options={}, **changed)
        assert (other - plain).abs().max().item() > 1e-3


def knows_reference_method(module, method: str) -> bool:
    """Does the running ComfyUI's model code handle this ref_latents_method? (newer ComfyUI only)"""
    import inspect
    return method in inspect.getsource(module)


def test_flux2_reference_tokens_that_take_timestep_zero():
    """Flux 2 edit (`ref_latents_method="index_timestep_zero"`): reference tokens are marked by their
    position in the full image sequence; the sparse forward must map them (it was 1e-1 off)."""
    import comfy.ldm.flux.model
    if not knows_reference_method(comfy.ldm.flux.model, "index_timestep_zero"):
        pytest.skip("this ComfyUI has no index_timestep_zero reference method")
    model = FAMILIES["flux2"].build(seed=13)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 128, 6, 8, generator=g)
    kwargs = dict(context=torch.randn(1, 7, 32, generator=g), guidance=torch.tensor([3.5]),
                  ref_latents=[torch.randn(1, 128, 4, 4, generator=g)], ref_latents_method="index_timestep_zero")
    dense, sparse, plain, run = dense_sparse_plain(model, x, 0.6, 20, patch_size=1, **kwargs)
    assert (dense - plain).abs().max().item() <= TOL and (sparse - plain).abs().max().item() <= TOL
    assert run.evals[1].calls[0].attention_image_rows == [20 + 16] * 4
    other = model.model.diffusion_model(x, torch.full((1,), 0.6), transformer_options={},
                                        **dict(kwargs, ref_latents_method="index"))
    assert (other - plain).abs().max().item() > 1e-3, "timestep zero matters"


def test_qwen_image_edit_references_that_take_timestep_zero():
    """Qwen-Image-Edit-2511: references start at `timestep_zero_index` (the dense grid size); it was 8e-2 off."""
    import comfy.ldm.qwen_image.model
    if not knows_reference_method(comfy.ldm.qwen_image.model, "index_timestep_zero"):
        pytest.skip("this ComfyUI has no index_timestep_zero reference method")
    model = FAMILIES["qwen_image"].build(seed=14)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 16, 1, 8, 12, generator=g)
    kwargs = dict(context=torch.randn(1, 5, 32, generator=g), ref_latents=[torch.randn(1, 16, 1, 8, 8, generator=g)],
                  ref_latents_method="index_timestep_zero")
    dense, sparse, plain, run = dense_sparse_plain(model, x, 0.6, 10, **kwargs)
    assert (dense - plain).abs().max().item() <= TOL and (sparse - plain).abs().max().item() <= TOL
    other = model.model.diffusion_model(x, torch.full((1,), 0.6), transformer_options={},
                                        **dict(kwargs, ref_latents_method="index"))
    assert (other - plain).abs().max().item() > 1e-3, "timestep zero matters"


@pytest.mark.parametrize("batch", [1, 2])
def test_qwen_image_prompt_attention_mask(batch):
    """A padded prompt's mask: newer ComfyUI passes it to attention, built over the tokens that ran; the
    engine spreads it over the whole K/V cache (it failed with a size mismatch)."""
    model = FAMILIES["qwen_image"].build(seed=15)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(batch, 16, 1, 8, 12, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0]]).expand(batch, -1)
    kwargs = dict(context=torch.randn(batch, 5, 32, generator=g), attention_mask=mask)
    dense, sparse, plain, run = dense_sparse_plain(model, x, 0.6, 10, **kwargs)
    assert (dense - plain).abs().max().item() <= TOL and (sparse - plain).abs().max().item() <= TOL


def redux_conditioning(seed: int, strength: float, style_tokens: int = 3):
    """A Flux prompt with Redux style tokens as ComfyUI's StyleModelApply hands it over with strength_type
    "attn_bias": the tokens appended to the text and an attention-bias mask over the whole sequence (text,
    style tokens and the image, whose part ComfyUI's Flux model upscales to the image's token grid)."""
    [[text, values]] = flux_conditioning(seed)
    style = torch.randn(1, style_tokens, text.shape[-1], generator=torch.Generator().manual_seed(seed + 50))
    t, n = text.shape[1], style_tokens
    mask = torch.zeros(1, t + n + 1, t + n + 1, dtype=torch.float16)
    mask[:, :t, t:t + n] = mask[:, t + n:, t:t + n] = math.log(strength)
    return [[torch.cat([text, style], dim=1), dict(values, attention_mask=mask, attention_mask_img_shape=(1, 1))]]


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_flux_redux_attention_bias_over_the_whole_sequence(batch, cfg):
    """The mask covers every query row (text and image): a sparse call keeps the rows that ran."""
    model = tiny_flux(seed=3)
    latent = torch.zeros(batch, 16, 8, 12)
    tokens = 4 * 6
    prompts = dict(positive=redux_conditioning(1, 0.5), negative=redux_conditioning(2, 0.8))
    reference = ksample(model, latent, seed=5, steps=4, cfg=cfg, **prompts)
    unbiased = ksample(model, latent, seed=5, steps=4, cfg=cfg, positive=flux_conditioning(1),
                       negative=flux_conditioning(2))
    assert (reference - unbiased).abs().max().item() > 1e-2, "the bias matters"
    patched, _, _ = patch(model, [None] + [torch.arange(tokens).expand(batch, -1)] * 3)
    assert (ksample(patched, latent, seed=5, steps=4, cfg=cfg, **prompts) - reference).abs().max().item() <= TOL
    patched, _, policy = patch(model, [None, random_active(batch, tokens, tokens // 3, seed=1)])
    sampler, _ = repeated_evals([lambda x: x, lambda x: x])
    sample_with(patched, latent, sampler, torch.tensor([0.8, 0.0]), cfg=cfg, seed=9, **prompts)
    by_stream = {}
    for index, stream, output, computed in policy.outputs:
        by_stream.setdefault(stream, []).append((output, computed))
    assert_exact_on_active_tokens(by_stream, tokens)


@pytest.mark.parametrize("image_first,lead,expected", [
    (False, 0, [0, 1, 2, 3 + 0, 3 + 2, 3 + 3]),             # [text | image]
    (True, 0, [0, 2, 3, 4, 5, 6]),                          # [image | text]
    (True, 1, [0, 1 + 0, 1 + 2, 1 + 3, 5, 6])])             # [reference | image | text] (HunyuanVideo's ref_latent)
def test_joint_rows_place_the_running_tokens_in_each_layout(image_first, lead, expected):
    """Where each row of a sparse joint sequence sits in the whole one: 3 tokens beside an image sequence of a
    3-token grid (tokens 0 and 2 run) and one extra token, which always runs."""
    run = SparseRun(FixedPlanPolicy([None, torch.tensor([[0, 2]])]), (1, 16, 2, 6), patch_size=2)
    run.close_forward(run.open_forward((1, 16, 2, 6), 0.9, None, "s"), True)     # dense
    run.streams["s", None, 1, (1, 3)].primed = True
    call = run.open_forward((1, 16, 2, 6), 0.8, None, "s")
    call.image_first, call.image_lead = image_first, lead
    call.gather(torch.zeros(1, 4, 8))
    assert call.joint_rows(torch.device("cpu"), 3).tolist() == [expected]


def test_a_network_of_its_own_starts_dense_and_drops_the_other_networks_streams():
    """A model that switches networks by sigma (Prism's video towers): the first forward of the second network runs
    dense although the plan is sparse (no caches of its own yet), and the first network's streams, whose caches are
    not read again, go at once (not an evaluation later: two networks' caches would double the memory)."""
    run = SparseRun(FixedPlanPolicy([None] + [torch.tensor([[0, 2]])] * 3), (1, 16, 2, 6), patch_size=2)
    dense = []
    for sigma, prompts, network in ((0.9, "cond", "high"), (0.9, "uncond", "high"), (0.8, "cond", "high"),
                                    (0.7, "cond", "low"), (0.6, "cond", "low")):
        call = run.open_forward((1, 16, 2, 6), sigma, None, prompts, network=network)
        call.gather(torch.zeros(1, 3, 8))
        dense.append(call.dense)
        run.close_forward(call, True)
        assert {stream.network for stream in run.streams.values()} == {network}
    assert dense == [True, True, False, True, False]
    assert len(run.streams) == 1


def test_a_forward_that_feeds_the_models_runs_sparse_only_where_the_model_will():
    """A ControlNet's forward (run before the model's, `feeds` the model's stream): dense while the model's stream has
    no complete cache, even with its own cache complete; sparse with the model's index once both are primed; its
    output's rows (`feeds_index`) are the model's, also where its own forward runs dense (its stream new), and are
    kept apart from the model's calls in the record."""
    run = SparseRun(FixedPlanPolicy([None] + [torch.tensor([[0, 2]])] * 4), (1, 16, 2, 6), patch_size=2)   # 3 tokens
    seen = []
    for sigma, forwards in ((0.9, ("cn", "model")), (0.8, ("cn",)), (0.7, ("cn", "model")), (0.6, ("cn", "model")),
                            (0.5, ("cn2", "model"))):
        for name in forwards:
            call = run.open_forward((1, 16, 2, 6), sigma, None, name, feeds="model" if name != "model" else None)
            call.gather(torch.zeros(1, 3, 8))
            seen.append((name, call.dense, None if call.feeds_index is None else call.feeds_index.tolist()))
            run.close_forward(call, True)
    assert seen == [("cn", True, None), ("model", True, None),
                    ("cn", False, [[0, 2]]),        # (the model would run sparse)
                    ("cn", True, None), ("model", True, None),   # the model's stream sat one out: dropped
                    ("cn", False, [[0, 2]]), ("model", False, None),
                    ("cn2", True, [[0, 2]]), ("model", False, None)]
    assert [len(e.side_calls) for e in run.evals] == [1, 1, 1, 1, 1] and all(len(e.calls) <= 1 for e in run.evals)


def test_other_queries_attend_to_every_image_token_through_the_cache():
    """Attention whose keys are the image tokens alone and whose queries are another sequence's, which always runs
    (LTX-2's audio attending to the video): on a sparse forward after a dense one, the keys and values of the tokens
    that did not run come from the cache, so the queries see the dense forward's keys and the result is the dense
    one. Outside that kind of attention the shorter keys are refused."""
    def attend(q, k, v, heads, **kwargs):
        return torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, 8, generator=g) for n in (5, 3, 3))
    run = SparseRun(FixedPlanPolicy([None, torch.tensor([[0, 2]])]), (1, 16, 2, 6), patch_size=2)   # 3 tokens
    outputs = []
    for sigma, rows in ((0.9, [0, 1, 2]), (0.8, [0, 2])):
        call = run.open_forward((1, 16, 2, 6), sigma, None, "s")
        call.gather(torch.zeros(1, 3, 8))
        if rows != [0, 1, 2]:
            with pytest.raises(NotImplementedError):
                call.attention(attend, q, k[:, rows], v[:, rows], 1, {})
        call.image_keys += 1
        outputs.append(call.attention(attend, q, k[:, rows], v[:, rows], 1, {}))
        assert call.dense == (sigma == 0.9)
        run.close_forward(call, True)
    assert torch.allclose(outputs[1], outputs[0], atol=1e-6)


def test_a_named_layer_beside_the_models_leaves_the_model_layers_where_they_were():
    """A layer of another network between the model's (a Fun ControlNet's tower between its blocks) keeps its K/V by
    name (`ForwardCall.layer_name`): a sparse forward after a dense one is exact through it, and a forward where that
    network does not run (past its end percent) still finds each of the model's layers where the dense one stored
    it; neither counts as attention that went past the engine."""
    def attend(q, k, v, heads, **kwargs):
        return torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v
    g = torch.Generator().manual_seed(1)
    first, tower, last = ([torch.randn(1, 3, 8, generator=g) for _ in "qkv"] for _ in range(3))
    run = SparseRun(FixedPlanPolicy([None] + [torch.tensor([[0, 2]])] * 2), (1, 16, 2, 6), patch_size=2)   # 3 tokens
    outputs = []
    for sigma, beside in ((0.9, True), (0.8, True), (0.7, False)):
        call = run.open_forward((1, 16, 2, 6), sigma, None, "s")
        call.gather(torch.zeros(1, 3, 8))
        rows = [0, 1, 2] if call.dense else [0, 2]
        out = {"first": call.attention(attend, *(t[:, rows] for t in first), 1, {})}
        if beside:
            call.layer_name = "tower"
            out["tower"] = call.attention(attend, *(t[:, rows] for t in tower), 1, {})
            call.layer_name = None
        out["last"] = call.attention(attend, *(t[:, rows] for t in last), 1, {})
        assert not call.attention_went_past() and call.attention_calls == 2
        outputs.append((rows, out))
        run.close_forward(call, True)
    (_, dense), sparse = outputs[0], outputs[1:]
    assert [rows for rows, _ in sparse] == [[0, 2], [0, 2]]
    for rows, out in sparse:
        for name, value in out.items():
            assert torch.allclose(value, dense[name][:, rows], atol=1e-6), name
