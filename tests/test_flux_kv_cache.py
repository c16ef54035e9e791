"""ComfyUI's "Flux KV Cache" node (newer ComfyUI: `FluxKVCache`, experimental) with region-adaptive sampling, on tiny
random-weight Flux 2, Qwen-Image edit and Krea 2 models with a reference image (CPU, fp32).

The node keeps the reference images' keys and values of every block from the first forward of a run and, on later
forwards, takes the references' tokens out of the sequence after the input layer and hands attention their kept keys
and values (more keys than queries; the references at timestep 0). The engine's cache path takes those keys as they
are: the queries are the keys' first rows, the kept keys the references' (ForwardCall.dropped_extras). Checked: every
token active == the node alone; a sparse forward after a dense one exact on the tokens that ran, and the dense one
== the node alone, with the references' kept keys stale (the precondition: they change the result); both sampler
nodes and both Model Patch nodes end to end, the model untouched; the node applied before or after the Model Patch
node; another family refused with a clear error."""
import importlib

import pytest
import torch

import nodes as comfy_nodes

from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from sdit_testkit import (assert_exact_on_active_tokens, random_active, ras_model_patch, ras_sample, sample_with,
                          text_conditioning, tiny_flux2, tiny_qwen_image)
from test_engine_exactness import repeated_evals
from test_ras_sampler import ras_args
from test_video import (RecordingPolicy, a_patch_runs_with_every_token_active, assert_within,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end)

flux_nodes = importlib.import_module("comfy_extras.nodes_flux")
if not hasattr(flux_nodes, "FluxKVCache"):
    pytest.skip("this ComfyUI has no Flux KV Cache node", allow_module_level=True)

TOL = 1e-5


def flux2_case():
    """A tiny Flux 2 (128 channels, a token per latent pixel) with a 4 x 4 reference: an 8 x 6 latent."""
    g = torch.Generator().manual_seed(3)
    reference = dict(reference_latents=[torch.randn(1, 128, 4, 4, generator=g)], guidance=None, pooled_output=None)
    prompts = dict(positive=text_conditioning(1, 7, **reference), negative=text_conditioning(2, 7, **reference))
    return tiny_flux2, (128, 8, 6), 8 * 6, 4 * 4, prompts


def qwen_image_case():
    """A tiny Qwen-Image edit (16 channels, 2 x 2 patches) with an 8 x 8 reference: an 8 x 12 single-frame latent."""
    g = torch.Generator().manual_seed(4)
    reference = dict(reference_latents=[torch.randn(1, 16, 1, 8, 8, generator=g)])
    # prompts of two lengths: ComfyUI runs them apart, and the negative's first forward finds the positive's kept keys
    prompts = dict(positive=text_conditioning(1, 5, **reference), negative=text_conditioning(2, 3, **reference))
    return tiny_qwen_image, (16, 1, 8, 12), 4 * 6, 4 * 4, prompts


def krea2_case():
    """A tiny Krea 2 (its adapter gathers at the first block, after the node took the references out) with a 4 x 8
    reference: an 8 x 12 single-frame latent; its prompts of two lengths run apart."""
    from test_krea2 import TOKENS, latent, tiny_krea2, with_reference
    return tiny_krea2, tuple(latent().shape[1:]), TOKENS, 2 * 4, with_reference()


CASES = {"flux2": flux2_case, "qwen_image": qwen_image_case, "krea2": krea2_case}


def with_kv_cache(model):
    return flux_nodes.FluxKVCache.execute(model)[0]


def latent_of(shape, batch: int) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(11))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_every_token_active_equals_the_kv_cache_alone(case, batch, cfg):
    build, shape, tokens, _, prompts = CASES[case]()
    model = build(seed=5)
    a_patch_runs_with_every_token_active(model, with_kv_cache(model), latent_of(shape, batch), cfg, prompts, tokens,
                                         assert_within(TOL))


def evaluations(model, latent, cfg: float, prompts: dict, inputs) -> list:
    """The model's denoised outputs at sigma 0.8 for each of `inputs` (functions of the sampler's x), in one sampling
    run through ComfyUI (CFG and all): the Flux KV Cache keeps the references' keys of the first."""
    sampler, denoised = repeated_evals(inputs)
    sample_with(model, latent, sampler, torch.tensor([0.8, 0.0]), cfg=cfg, seed=9, **prompts)
    return denoised


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_a_sparse_step_after_a_dense_one_is_exact_with_the_kv_cache(case, batch, cfg):
    """Forwards at x, then x + a change, twice: the second and third take the references' keys kept from the first
    (stale: the precondition is that this differs from running the references). Dense at the second == the node alone;
    sparse at the third == the dense second on the tokens that ran."""
    build, shape, tokens, reference_tokens, prompts = CASES[case]()
    model = build(seed=6)
    latent = latent_of(shape, batch)
    change = 0.5 * torch.randn(latent.shape, generator=torch.Generator().manual_seed(12))
    inputs = [lambda x: x, lambda x: x + change, lambda x: x + change]
    cached = with_kv_cache(model)
    alone = evaluations(cached, latent, cfg, prompts, inputs[:2])[1]
    fresh = evaluations(model, latent, cfg, prompts, inputs[:2])[1]
    assert (alone - fresh).abs().max().item() > 1e-3, "the kept keys of the references matter"

    active = random_active(batch, tokens, tokens // 3, seed=1)
    policy = RecordingPolicy([None, None, active])
    patched, slot = apply_token_sparse(cached, lambda run: policy, node="test")
    dense_first, dense, sparse = evaluations(patched, latent, cfg, prompts, inputs)
    assert (dense - alone).abs().max().item() <= TOL
    by_stream = {}
    for stream, out, computed in policy.outputs[-2 * len({s for s, _, _ in policy.outputs}):]:
        by_stream.setdefault(stream, []).append((out, computed))
    assert len(by_stream) == (2 if cfg > 1 and case != "flux2" else 1)
    assert_exact_on_active_tokens(by_stream, tokens, extra=reference_tokens)
    # the node took the references out of the queries on the second and third forwards: their rows came back zero
    last = policy.outputs[-1][1]
    assert last.shape[1] == tokens + reference_tokens and torch.count_nonzero(last[:, tokens:]) == 0
    assert [e.dense for e in slot.last_run.evals] == [True, True, False]


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_with_the_kv_cache_end_to_end(method):
    build, shape, tokens, _, prompts = CASES["flux2"]()
    model = with_kv_cache(build(seed=7))
    sampler_node_end_to_end(model, {"samples": latent_of(shape, 1)}, prompts, method, tokens)


def test_model_patch_nodes_with_the_kv_cache_under_ksampler():
    build, shape, _, _, prompts = CASES["qwen_image"]()
    model_patch_nodes_under_ksampler(with_kv_cache(build(seed=8)), {"samples": latent_of(shape, 1)}, prompts,
                                     assert_within(TOL))


def test_the_kv_cache_before_or_after_the_model_patch_node():
    """Flux KV Cache applied after RAS Model Patch (the pack's wrapper then sees the node's patches at sampling) gives
    what it gives applied before."""
    build, shape, _, _, prompts = CASES["flux2"]()
    model, latent = build(seed=9), {"samples": latent_of(shape, 1)}

    def ksampler(m):
        return comfy_nodes.KSampler().sample(m, 4, 5, 2.0, "euler", "simple", prompts["positive"], prompts["negative"],
                                             latent)[0]["samples"]
    before = ksampler(ras_model_patch(with_kv_cache(model), 0.3, 1, "", 0.1, "std", False)[0])
    after = ksampler(with_kv_cache(ras_model_patch(model, 0.3, 1, "", 0.1, "std", False)[0]))
    assert torch.isfinite(before).all() and torch.equal(before, after)
    assert (before - ksampler(with_kv_cache(model))).abs().max().item() > 1e-4, "the patch samples sparse"


def test_the_kv_cache_on_another_family_is_refused_clearly():
    """Mage-Flow (a Qwen-Image edit model of its own, whose blocks take no attention patches): the families that run
    with the node are named, by the sampler nodes and, the node applied after the Model Patch node, when sampling
    starts."""
    from test_mage_flow import latent, tiny_mage_flow, with_reference
    model = tiny_mage_flow(seed=1)
    a = dict(ras_args(steps=3, cfg=1.0, sample_ratio=0.3, reset_steps=""), **with_reference())
    with pytest.raises(SDiTInputError, match="RAS Sampler.*'Flux KV Cache'.*Flux, Qwen-Image and Krea 2 only"):
        ras_sample(with_kv_cache(model), latent_image={"samples": latent()}, **a)
    patched = with_kv_cache(ras_model_patch(model, 0.3, 1, "", 0.1, "std", False)[0])
    with pytest.raises(SDiTInputError, match="RAS Model Patch.*'Flux KV Cache'"):
        comfy_nodes.KSampler().sample(patched, 4, 3, 1.0, "euler", "simple", a["positive"], a["negative"],
                                      {"samples": latent()})
