"""ComfyUI's own Flux ControlNets (Apply ControlNet with a `ControlNetFlux`: XLabs-style, InstantX Union with its mode)
run on the tokens the model runs (nodes/sparse_controlnet.py), on a tiny random-weight Flux and tiny instances of
ComfyUI's ControlNetFlux (CPU, fp32): every token active == the ControlNet run whole by ComfyUI; a sparse step after a
dense one exact on the tokens that ran with the ControlNet's own forward on those tokens only (batch 2 with CFG, other
tokens per image); a Union ControlNet's mode token; a chain of two whose second starts later (its first forward dense
while the first's is sparse); one that ends halfway; the K/V cache as planned; a chain with another kind of ControlNet
left whole; the ControlNet passed in untouched; both sampler nodes and both Model Patch nodes end to end."""
import gc
import importlib
import weakref

import pytest
import torch

import comfy.controlnet
import comfy.ldm.flux.controlnet
import comfy.model_management
import comfy.ops

from comfyui_sdit.nodes.comfy_compat import flux_unet_config
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from sdit_testkit import (TINY_FLUX, assert_exact_on_active_tokens, flux_conditioning, init_weights_, ksample,
                          random_active, sample_with, tiny_flux)
from test_video import (RecordingPolicy, assert_within, every_token_active, model_patch_nodes_under_ksampler,
                        sampler_node_end_to_end)

comfy_nodes = importlib.import_module("nodes")   # ComfyUI's nodes.py
TOL = 1e-5
HEIGHT, WIDTH = 8, 12                             # a non-square latent
TOKENS = (HEIGHT // 2) * (WIDTH // 2)
TEXT = 7                                          # flux_conditioning's prompt tokens


def latent(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 16, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(8))


def flux_controlnet(seed: int, union: bool = False, double: int = 2, single: int = 1):
    """ComfyUI's ControlNetFlux for the tiny Flux (an image hint through its convolution encoder), random weights."""
    config = {name: value for name, value in flux_unet_config(TINY_FLUX).items() if name != "image_model"}
    config.update(depth=double, depth_single_blocks=single)
    network = comfy.ldm.flux.controlnet.ControlNetFlux(operations=comfy.ops.disable_weight_init,
                                                       num_union_modes=4 if union else 0, **config)
    init_weights_(network, seed)
    control = comfy.controlnet.ControlNet(network, load_device=comfy.model_management.get_torch_device(),
                                          extra_conds=["y", "guidance"])
    if union:           # as SetUnionControlNetType sets a mode ("depth")
        control = control.copy()
        control.set_extra_arg("control_type", [1])
    return control


def hint(seed: int) -> torch.Tensor:
    return torch.rand(1, HEIGHT * 8, WIDTH * 8, 3, generator=torch.Generator().manual_seed(seed))


def prompts(*controls) -> dict:
    """Flux prompts under ControlNets applied one after the other by ComfyUI's ControlNetApplyAdvanced (a chain):
    each `(control, start_percent, end_percent)`."""
    positive, negative = flux_conditioning(1), flux_conditioning(2)
    for number, (control, start, end) in enumerate(controls):
        positive, negative = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(
            positive, negative, control, hint(20 + number), 0.8, start, end)
    return dict(positive=positive, negative=negative)


def side_calls(run, evaluation: int) -> list:
    return run.evals[evaluation].side_calls


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_every_token_active_equals_the_controlnet_run_whole(batch, cfg):
    model = tiny_flux(seed=3)
    run = every_token_active(model, latent(batch), cfg, prompts((flux_controlnet(5), 0.0, 1.0)), TOKENS,
                             assert_within(TOL))
    # the ControlNet ran through the engine: dense with the model first, then on the model's tokens
    assert [c.dense for c in side_calls(run, 0)] == [True]
    assert all(not c.dense and c.image_tokens == TOKENS for e in range(1, 4) for c in side_calls(run, e))


def dense_then_sparse(model, latent, active, cfg, conds):
    """One dense and then one sparse forward on the same input, through ComfyUI's sampling: per stream
    [(dense output, computed), (sparse output, computed)], and the run."""
    policy = RecordingPolicy([None, active])
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")

    @torch.no_grad()            # as ComfyUI's samplers run
    def twice(model, x, sigmas, extra_args=None, callback=None, disable=None):
        for _ in range(2):
            model(x, sigmas[0] * x.new_ones([x.shape[0]]), **extra_args)
        return x
    sample_with(patched, latent, twice, torch.tensor([0.8, 0.0]), cfg=cfg, seed=9, **conds)
    by_stream = {}
    for stream, out, computed in policy.outputs:
        by_stream.setdefault(stream, []).append((out, computed))
    return by_stream, slot.last_run


@pytest.mark.parametrize("union", [False, True])
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_a_sparse_step_after_a_dense_one_is_exact_and_the_controlnet_runs_those_tokens(union, batch, cfg):
    """A third of the tokens, in random order and other ones per image; a Union ControlNet with its mode token."""
    active = random_active(batch, TOKENS, TOKENS // 3, seed=1)
    by_stream, run = dense_then_sparse(tiny_flux(seed=4), latent(batch), active, cfg,
                                       prompts((flux_controlnet(6, union=union), 0.0, 1.0)))
    assert_exact_on_active_tokens(by_stream, TOKENS)
    rows = 2 * batch if cfg > 1 else batch          # cond and uncond batched
    assert [(c.dense, c.rows, c.image_tokens) for c in side_calls(run, 1)] == [(False, rows, TOKENS // 3)]


def test_a_chain_whose_second_controlnet_starts_later():
    """The chain's second ControlNet joins at 40%: its first forward runs dense (its cache is empty) while the
    first's runs sparse, and its residuals are cut to the model's tokens to be merged with the first's (ComfyUI runs
    the chain's earlier ControlNet first)."""
    model = tiny_flux(seed=5)
    chain = prompts((flux_controlnet(7), 0.0, 1.0), (flux_controlnet(8, double=1, single=2), 0.4, 1.0))
    run = every_token_active(model, latent(2), 3.0, chain, TOKENS, assert_within(TOL))
    assert [[c.dense for c in side_calls(run, e)] for e in range(4)] == [[True], [False], [False, True], [False, False]]
    by_stream, run = dense_then_sparse(model, latent(2), random_active(2, TOKENS, TOKENS // 3, seed=2), 3.0, chain)
    assert_exact_on_active_tokens(by_stream, TOKENS)
    assert [c.dense for c in side_calls(run, 1)] == [False, False]
    # a third of the tokens: the second's first forward, dense over every token, hands on the model's third
    policy = FixedPlanPolicy([None] + [random_active(2, TOKENS, TOKENS // 3, seed=3)] * 3)
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    assert torch.isfinite(ksample(patched, latent(2), seed=5, steps=4, cfg=3.0, **chain)).all()
    assert [[(c.dense, c.image_tokens) for c in side_calls(slot.last_run, e)] for e in range(4)] == [
        [(True, TOKENS)], [(False, TOKENS // 3)], [(False, TOKENS // 3), (True, TOKENS)],
        [(False, TOKENS // 3), (False, TOKENS // 3)]]


def test_a_controlnet_that_ends_halfway():
    """After its end percent (the last of 4 steps here) ComfyUI runs no ControlNet: its stream is dropped."""
    model = tiny_flux(seed=6)
    run = every_token_active(model, latent(2), 3.0, prompts((flux_controlnet(9), 0.0, 0.5)), TOKENS, assert_within(TOL))
    assert [len(side_calls(run, e)) for e in range(4)] == [1, 1, 1, 0]
    assert len(run.streams) == 0        # released


def test_the_cache_is_as_planned():
    """The ControlNet's layers (2 double, 1 single block over text + mode token + image) beside the model's."""
    policy = FixedPlanPolicy([None] + [random_active(2, TOKENS, TOKENS // 3, seed=3)] * 3)
    patched, slot = apply_token_sparse(tiny_flux(seed=7), lambda run: policy, node="test")
    ksample(patched, latent(2), seed=5, steps=4, cfg=3.0, **prompts((flux_controlnet(10, union=True), 0.0, 1.0)))
    run = slot.last_run
    width, rows = TINY_FLUX["hidden_size"], 4
    model = 4 * (TEXT + TOKENS) * width
    controlnet = 3 * (TEXT + 1 + TOKENS) * width
    assert run.kv_planned_bytes == run.kv_peak_bytes == rows * (model + controlnet) * 2 * 4


def test_a_hook_keyframe_switch_keeps_the_cache_as_planned():
    """A LoRA hook on the positive prompt whose keyframe changes its strength halfway: that prompt's model and
    ControlNet streams start afresh (their first forwards dense) and the old weights' streams go at once, so the
    caches never hold more than planned."""
    from test_guidance_evaluations import prompt_with_scheduled_lora
    model = tiny_flux(seed=7)
    steps = 6
    policy = FixedPlanPolicy([None] + [random_active(2, TOKENS, TOKENS // 3, seed=3)] * (steps - 1))
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    positive, negative = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(
        prompt_with_scheduled_lora(model, 0.5), flux_conditioning(2), flux_controlnet(10), hint(20), 0.8, 0.0, 1.0)
    ksample(patched, latent(2), seed=5, steps=steps, cfg=3.0, positive=positive, negative=negative)
    run = slot.last_run
    assert len({c.stream for e in run.evals for c in e.calls}) == 3, "the positive prompt switched weights once"
    switch = next(i for i, e in enumerate(run.evals) if i and any(c.dense for c in e.calls))
    assert sorted(c.dense for c in side_calls(run, switch)) == [False, True], "the positive's ControlNet afresh"
    assert not any(c.dense for c in side_calls(run, switch + 1))
    assert run.kv_peak_bytes == run.kv_planned_bytes


def test_an_attention_backend_set_after_ours_computes_the_controlnets_attention_too():
    """Another node's attention override set on the model after ours (Model Attention Backend) goes under ours when
    sampling starts: the ControlNet's blocks, handed the override in charge, attend through the engine's cache with
    that backend, and the latent is the one sampled with the node applied before ours."""
    from test_neighbours import attention_backend_like
    def policy(run):
        return FixedPlanPolicy([None] + [random_active(2, TOKENS, TOKENS // 3, seed=3)] * 3)
    conds = prompts((flux_controlnet(11), 0.0, 1.0))
    after_calls, before_calls = [], []
    after, _ = apply_token_sparse(tiny_flux(seed=8), policy, node="test")
    after = after.clone()
    after.model_options["transformer_options"]["optimized_attention_override"] = attention_backend_like(after_calls)
    before = tiny_flux(seed=8).clone()
    before.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = \
        attention_backend_like(before_calls)
    before, _ = apply_token_sparse(before, policy, node="test")
    sampled_after = ksample(after, latent(2), seed=5, steps=4, cfg=3.0, **conds)
    sampled_before = ksample(before, latent(2), seed=5, steps=4, cfg=3.0, **conds)
    assert any(after_calls) and after_calls == before_calls and torch.equal(sampled_after, sampled_before)


class WholeControl(comfy.controlnet.ControlBase):
    """Another kind of ControlNet (as T2I adapters or other packs' classes are): residuals over every token."""

    def __init__(self):
        super().__init__()
        self.residual = 0.1 * torch.randn(1, TOKENS, TINY_FLUX["hidden_size"], generator=torch.Generator().manual_seed(4))

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        previous = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        mine = {"input": [self.residual.expand(x_noisy.shape[0], -1, -1).clone()]}
        return self.control_merge(mine, previous, output_dtype=None)

    def copy(self):
        c = WholeControl()
        self.copy_to(c)
        return c


def test_a_chain_with_another_kind_of_controlnet_stays_whole():
    model = tiny_flux(seed=8)
    chain = prompts((flux_controlnet(11), 0.0, 1.0), (WholeControl(), 0.0, 1.0))
    run = every_token_active(model, latent(2), 3.0, chain, TOKENS, assert_within(TOL))
    assert all(side_calls(run, e) == [] for e in range(4))
    policy = FixedPlanPolicy([None] + [random_active(2, TOKENS, TOKENS // 3, seed=3)] * 3)
    patched, _ = apply_token_sparse(model, lambda run: policy, node="test")
    assert torch.isfinite(ksample(patched, latent(2), seed=5, steps=4, cfg=3.0, **chain)).all()


def controlnet_passed_in_is_untouched(model, latent, conds: dict, tokens: int) -> None:
    """After a sparse run: the conditioning holds the same ControlNet objects, as they were (their patcher, no hint,
    their extra arguments, weights, no patch left on the network or its modules), and KSampler with them samples as
    before (KSampler first: ComfyUI's own preparation may load into the network, SD3.5's the model's embedders)."""
    applied = conds["positive"][0][1]["control"]
    before = ksample(model, latent, seed=5, steps=4, cfg=3.0, **conds)
    state = (applied.control_model_wrapped, applied.previous_controlnet, applied.control_model, dict(vars(applied)),
             dict(applied.extra_args))
    weights = {k: v.clone() for k, v in applied.control_model.state_dict().items()}
    policy = FixedPlanPolicy([None] + [random_active(latent.shape[0], tokens, tokens // 3, seed=3)] * 3)
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    sparse = ksample(patched, latent, seed=5, steps=4, cfg=3.0, **conds)
    assert any(c.image_tokens == tokens // 3 for e in slot.last_run.evals for c in e.side_calls)
    assert (sparse - before).abs().max().item() > 1e-5
    assert conds["positive"][0][1]["control"] is applied and conds["negative"][0][1]["control"] is applied
    assert (applied.control_model_wrapped, applied.previous_controlnet, applied.control_model) == state[:3]
    assert applied.cond_hint is None and vars(applied).keys() == state[3].keys() and applied.extra_args == state[4]
    assert torch.equal(ksample(model, latent, seed=5, steps=4, cfg=3.0, **conds), before)
    assert all(torch.equal(v, weights[k]) for k, v in applied.control_model.state_dict().items())
    assert not any(hasattr(vars(m).get("forward"), "sdit_wraps") for m in applied.control_model.modules())


def test_the_controlnet_passed_in_is_untouched():
    controlnet_passed_in_is_untouched(tiny_flux(seed=9), latent(2), prompts((flux_controlnet(12), 0.0, 1.0)), TOKENS)


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end(method):
    sampler_node_end_to_end(tiny_flux(seed=10), {"samples": latent(2)}, prompts((flux_controlnet(13), 0.0, 1.0)),
                            method, TOKENS)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_flux(seed=11), {"samples": latent(1)},
                                     prompts((flux_controlnet(14), 0.0, 1.0)), assert_within(TOL))


def dropped_controlnet_is_freed_at_once(model, latent, make_conds, tokens: int) -> None:
    """A ControlNet the user drops after a token-sparse run (and a plain one after it, which unpatches the network) is
    freed at once, without waiting for Python's cycle collector: nothing of ours makes a reference cycle that holds its
    network (ComfyUI's model management would otherwise keep a loaded-model entry whose network is alive but whose
    patcher is gone, and crash on it in a later ControlNet's hint encoding)."""
    gc.collect()
    gc.disable()
    try:
        conds = make_conds()
        network = weakref.ref(conds["positive"][0][1]["control"].control_model)
        policy = FixedPlanPolicy([None] + [random_active(latent.shape[0], tokens, tokens // 3, seed=3)] * 3)
        patched, _ = apply_token_sparse(model, lambda run: policy, node="test")
        ksample(patched, latent, seed=5, steps=4, cfg=3.0, **conds)
        ksample(model, latent, seed=5, steps=4, cfg=3.0, **conds)
        del conds, patched
        assert network() is None
    finally:
        gc.enable()


def test_a_dropped_controlnet_is_freed_at_once():
    dropped_controlnet_is_freed_at_once(tiny_flux(seed=15), latent(2), lambda: prompts((flux_controlnet(16), 0.0, 1.0)),
                                        TOKENS)


def test_a_copy_for_another_gpu_of_a_swapped_controlnet_runs_the_network_whole():
    """Newer ComfyUI copies a ControlNet for each further GPU (`deepclone_multigpu`: a deep copy of its network in a
    ModelPatcher of its own): the copy of a swapped ControlNet gets the network itself, which runs whole as ComfyUI
    runs it, and its residuals are what the ControlNet passed in gives."""
    if not hasattr(comfy.controlnet.ControlNet, "deepclone_multigpu"):
        pytest.skip("this ComfyUI copies no ControlNets for other GPUs")
    from comfyui_sdit.nodes.families import adapter_for
    from comfyui_sdit.nodes.sparse_controlnet import NetworkForward, run_controlnets_with_tokens
    from comfyui_sdit.nodes.sparse_patch import RunSlot
    original = prompts((flux_controlnet(17), 0.0, 1.0))["positive"][0][1]["control"]
    conds = {"positive": [{"control": original}]}          # a run's conds, as the guider holds them
    family = adapter_for(tiny_flux(seed=1), "test")
    assert run_controlnets_with_tokens(conds, RunSlot(), family, lambda *a: (None, None), "test") == 1
    swapped = conds["positive"][0]["control"]
    assert swapped is not original and isinstance(swapped.control_model, NetworkForward)
    copy = swapped.deepclone_multigpu(comfy.model_management.get_torch_device())
    assert isinstance(copy.control_model, torch.nn.Module) and copy.control_model is not original.control_model
    x = torch.randn(1, 16, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3))
    arguments = dict(x=x, hint=torch.rand(1, 3, HEIGHT * 8, WIDTH * 8, generator=torch.Generator().manual_seed(4)),
                     timesteps=torch.tensor([0.5]), context=torch.randn(1, TEXT, 32, generator=torch.Generator().manual_seed(5)),
                     y=torch.zeros(1, 32), guidance=torch.tensor([3.5]))
    with torch.no_grad():
        mine, theirs = copy.control_model(**arguments), original.control_model(**arguments)
    assert all(torch.equal(a, b) for a, b in zip(mine["output"], theirs["output"]))
