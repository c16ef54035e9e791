"""ComfyUI's TorchCompileModel node on a patched model: the model's code is compiled, the engine's
per-forward bookkeeping runs eagerly (comfy_compat.compiler_opaque). Dynamo tracing it guarded on lists
that grow per layer and recompiled layer after layer until its recompile limit ("hit
config.recompile_limit"). Backend aot_eager: dynamo and AOTAutograd without inductor's C++ compile, so
the compiled run equals the eager one exactly and the test stays fast on the CPU. Backend inductor (the
node's default, what users run): generated C++ on the CPU, its fused kernels round differently, so the
comparison is to a tolerance."""
import importlib
import logging
import shutil

import pytest
import torch

from test_flux_controlnet import flux_controlnet, prompts as controlnet_prompts
from test_neighbours import ksampler, ras_patch
from test_ras_sampler import latent, ras_args
from test_video import conds as video_conds, video_latent
from sdit_testkit import tiny_flux, tiny_wan

compile_nodes = importlib.import_module("comfy_extras.nodes_torch_compile")

CASES = {
    "flux": (tiny_flux, ras_args, lambda: latent(1)),       # forward_orig patched as a whole
    # with a Flux ControlNet beside it (not compiled by the node), token-sparse with the model
    "flux-controlnet": (tiny_flux, lambda **o: ras_args(**controlnet_prompts((flux_controlnet(5), 0.0, 1.0)), **o),
                        lambda: latent(1)),
    "wan": (tiny_wan, lambda **o: ras_args(**video_conds(), **o), lambda: {"samples": video_latent(1)}),   # every block
}


@pytest.mark.parametrize("family", sorted(CASES))
def test_a_compiled_patched_model_samples_as_the_eager_one_without_recompiling_the_engine(family, caplog):
    build, make_args, make_latent = CASES[family]
    model = build(seed=70)
    a, lat = make_args(cfg=3.0, sample_ratio=0.25), make_latent()
    eager = ksampler(ras_patch(model, sample_ratio=0.25), a, lat)
    out, limits = compiled_ksampler(ras_patch(model, sample_ratio=0.25), a, lat, caplog)
    assert torch.equal(out, eager)
    # older PyTorch (2.7) recompiles ComfyUI's own wrapper executor every step on a bound method's identity,
    # with the pack or without it: the pack may hit no recompile limit the model compiled alone does not
    assert limits <= compiled_ksampler(model, a, lat, caplog)[1], limits


def compiled_ksampler(model, a, lat, caplog):
    """KSampler on the model compiled by ComfyUI's TorchCompileModel (aot_eager): the output, and the
    functions (`name (file:line)`) that hit dynamo's recompile limit."""
    torch._dynamo.reset()
    caplog.clear()
    try:
        compiled = compile_nodes.TorchCompileModel.execute(model, "aot_eager")[0]
        with caplog.at_level(logging.WARNING, logger="torch._dynamo"):
            out = ksampler(compiled, a, lat)
    finally:
        torch._dynamo.reset()
    messages = [r.getMessage() for r in caplog.records if "recompile_limit" in r.getMessage()]
    return out, {line.strip() for m in messages for line in m.splitlines() if line.strip().startswith("function:")}


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="inductor compiles C++ on the CPU")
def test_the_inductor_backend_samples_a_patched_model_as_eager_does_and_as_it_compiles_the_model_alone():
    model = tiny_flux(seed=71)
    lat = latent(1)

    def with_inductor(m, a):
        torch._dynamo.reset()
        try:
            return ksampler(compile_nodes.TorchCompileModel.execute(m, "inductor")[0], a, lat)
        finally:
            torch._dynamo.reset()

    def close(out, reference, rel):
        return (out - reference).abs().max().item() <= rel * reference.abs().max().item()
    try:
        alone = with_inductor(model, ras_args(cfg=3.0))
    except Exception as error:      # noqa: BLE001 (ComfyUI 0.33's node hands inductor an option PyTorch 2.7 lacks)
        pytest.skip(f"ComfyUI's TorchCompileModel cannot compile the model alone with this PyTorch: {error!s:.200}")
    compiled = {}
    for ratio in (1.0, 0.25):
        a = ras_args(cfg=3.0, sample_ratio=ratio)
        compiled[ratio] = with_inductor(ras_patch(model, sample_ratio=ratio), a)
        assert close(compiled[ratio], ksampler(ras_patch(model, sample_ratio=ratio), a, lat), 1e-4)
    assert close(compiled[1.0], alone, 1e-5), "all active: the model alone"
    assert (compiled[0.25] - compiled[1.0]).abs().max().item() > 1e-2, "the sparse run skipped tokens"


@pytest.mark.parametrize("keys", ["whole", "per-block"])
@pytest.mark.parametrize("family", ["flux", "wan"])
def test_a_model_compiled_before_the_patch_samples_as_eager(family, keys):
    """The compile node applied before ours (its APPLY_MODEL wrapper then puts the compiled modules in place before
    ours runs): the whole diffusion model, or block by block as some custom nodes compile (keys of each block). The
    pack's check of the model's code sees through the compiled modules; the samples are the eager ones."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    build, make_args, make_latent = CASES[family]
    model = build(seed=72)
    a, lat = make_args(cfg=3.0, sample_ratio=0.25), make_latent()
    blocks = {"flux": "double_blocks", "wan": "blocks"}[family]
    count = len(getattr(model.model.diffusion_model, blocks))
    compiled_keys = (["diffusion_model"] if keys == "whole"
                     else [f"diffusion_model.{blocks}.{i}" for i in range(count)])
    torch._dynamo.reset()
    try:
        compiled = model.clone()
        set_torch_compile_wrapper(compiled, backend="aot_eager", keys=compiled_keys)
        out = ksampler(ras_patch(compiled, sample_ratio=0.25), a, lat)
    finally:
        torch._dynamo.reset()
    eager = ksampler(ras_patch(model, sample_ratio=0.25), a, lat)
    assert (out - eager).abs().max().item() <= 1e-5 * max(1.0, eager.abs().max().item())
