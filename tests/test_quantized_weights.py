"""Models loaded with quantized weights, as most users run the large ones: ComfyUI's Load Diffusion Model with
`weight_dtype` fp8_e4m3fn (fp8 weights, cast to the compute dtype layer by layer), and the published fp8_scaled
checkpoints (an fp8 weight and a scale per linear layer: ComfyUI 0.3.75 computes them through its scaled-fp8 ops,
newer ComfyUI converts them to QuantizedTensor weights). Each file is written from a family's tiny model and
loaded by ComfyUI's own UNETLoader node; only the config detection, which reads the full-size widths off the
weights, is handed the tiny model's config. What holds for full-precision weights must hold here: every token
active equals KSampler on the same loaded model, a sparse step after a dense one is exact on the tokens that ran,
the K/V cache is kept in the compute dtype (not the weights' fp8) and as planned, and the loaded weights stay as
they were."""
import contextlib
import importlib
import itertools

import pytest
import safetensors.torch
import torch

import comfy.model_detection
import folder_paths

from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from sdit_testkit import FAMILIES, TinyFamily, ksample, random_active, ras_sample, sample_with, tiny_wan
from test_engine_exactness import patch, repeated_evals
from test_families import ras_values
from test_memory_plan import sample_patched
from test_video import FRAMES, conds as wan_conds

comfy_nodes = importlib.import_module("nodes")   # ComfyUI's nodes.py
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
TOL = 1e-5


class TinyVideoFamily(TinyFamily):
    """Wan 2.1's tiny model on a video latent of FRAMES latent frames (patch 1 x 2 x 2)."""

    def latent(self, batch, height, width):
        return torch.zeros(batch, self.channels, FRAMES, height, width)

    def tokens(self, height, width):
        return FRAMES * super().tokens(height, width)


CASES = {**FAMILIES,
         "wan": TinyVideoFamily(tiny_wan, lambda: wan_conds()["positive"], lambda: wan_conds()["negative"],
                                cfg_streams=2, attention_layers=2)}
FORMATS = ("fp8_e4m3fn", "fp8_scaled")
_counter = itertools.count()


def scaled_fp8_file(diffusion_model, state: dict) -> dict:
    """The fp8_scaled checkpoints' layout: each linear layer's weight in fp8 over a per-tensor scale (its largest
    magnitude onto fp8's 448), `scale_weight` and `scale_input` beside it, and the `scaled_fp8` marker."""
    out = dict(state)
    for name, module in diffusion_model.named_modules():
        if isinstance(module, torch.nn.Linear):
            weight = state[f"{name}.weight"].float()
            scale = weight.abs().amax() / 448.0
            out[f"{name}.weight"] = (weight / scale).to(torch.float8_e4m3fn)
            out[f"{name}.scale_weight"] = scale.reshape(())
            out[f"{name}.scale_input"] = torch.ones(())
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


@contextlib.contextmanager
def tiny_config_detected(model_config):
    """ComfyUI's detection reads a full-size model's widths and head counts off its weights; a tiny one gets its
    own config (and config class) back. Everything after detection (the scaled-fp8 marker, the dtypes, the ops,
    the weights' loading) is ComfyUI's."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(comfy.model_detection, "detect_unet_config",
                            lambda *args, **kwargs: dict(model_config.unet_config))
        monkeypatch.setattr(comfy.model_detection, "model_config_from_unet_config",
                            lambda unet_config, *args, **kwargs: type(model_config)(dict(unet_config)))
        yield


def load_quantized(family: str, weight_format: str, directory, seed: int = 3):
    """The family's tiny model (seeded) written as a file of `weight_format` and loaded by ComfyUI's UNETLoader."""
    model = CASES[family].build(seed=seed)
    diffusion_model = model.model.diffusion_model
    state = {name: tensor.contiguous() for name, tensor in diffusion_model.state_dict().items()}
    if weight_format == "fp8_scaled":
        state = scaled_fp8_file(diffusion_model, state)
    name = f"tiny_{family}_{weight_format}_{next(_counter)}.safetensors"
    safetensors.torch.save_file(state, str(directory / name))
    folder_paths.add_model_folder_path("diffusion_models", str(directory))
    with tiny_config_detected(model.model.model_config):
        return comfy_nodes.UNETLoader().load_unet(name, "fp8_e4m3fn" if weight_format == "fp8_e4m3fn" else "default")[0]


def raw(tensor):
    """A weight's bits (fp8 tensors compared as bytes: torch.equal has no fp8 kernel on every device)."""
    return tensor.view(torch.uint8) if tensor.dtype in FP8 else tensor


def stored_weights(model) -> dict:
    state = model.model.diffusion_model.state_dict()
    return {name: raw(tensor).clone() for name, tensor in state.items()}


@pytest.mark.parametrize("weight_format", FORMATS)
def test_the_weights_load_quantized(weight_format, tmp_path):
    """The files are what they say: fp8 weights (newer ComfyUI's QuantizedTensor reports its compute dtype, so its
    stored weights are read from the state dict it saves)."""
    model = load_quantized("flux", weight_format, tmp_path)
    stored = model.model.diffusion_model.state_dict()
    assert stored["double_blocks.0.img_attn.qkv.weight"].dtype == torch.float8_e4m3fn
    assert model.model.manual_cast_dtype == torch.float32 or weight_format == "fp8_scaled"


@pytest.mark.parametrize("weight_format", FORMATS)
@pytest.mark.parametrize("family", sorted(CASES))
def test_every_token_active_equals_ksampler_on_the_loaded_model(family, weight_format, tmp_path):
    spec = CASES[family]
    model = load_quantized(family, weight_format, tmp_path)
    size = spec.same_grid((8, 12))
    latent = spec.latent(2, *size)
    everything = torch.arange(spec.tokens(*size)).expand(2, -1)
    conds = dict(positive=spec.positive(), negative=spec.negative())
    reference = ksample(model, latent, seed=5, steps=4, cfg=3.0, **conds)
    patched, slot = apply_token_sparse(model, lambda run: FixedPlanPolicy([None] + [everything] * 3), node="test")
    sparse = ksample(patched, latent, seed=5, steps=4, cfg=3.0, **conds)
    assert [e.dense for e in slot.last_run.evals] == [True, False, False, False]
    assert (sparse - reference).abs().max().item() <= TOL * max(1.0, reference.abs().max().item())


@pytest.mark.parametrize("weight_format", FORMATS)
@pytest.mark.parametrize("family", sorted(CASES))
def test_a_sparse_step_after_a_dense_one_is_exact_on_the_tokens_that_ran(family, weight_format, tmp_path):
    """Batch 2 with CFG, a different active set per image; the same input evaluated dense and then sparse."""
    spec = CASES[family]
    model = load_quantized(family, weight_format, tmp_path)
    size = spec.same_grid((8, 12))
    latent = spec.latent(2, *size)
    tokens = spec.tokens(*size)
    active = random_active(2, tokens, tokens // 3, seed=1)
    patched, slot, policy = patch(model, [None, active])
    sampler, _ = repeated_evals([lambda x: x, lambda x: x])
    sample_with(patched, latent, sampler, torch.tensor([0.8, 0.0]), cfg=3.0, seed=9,
                positive=spec.positive(), negative=spec.negative())
    by_stream = {}
    for index, stream, out, computed in policy.outputs:
        by_stream.setdefault(stream, []).append((out[:, :tokens], computed))
    assert len(by_stream) == spec.cfg_streams
    for (dense, _), (sparse, computed) in by_stream.values():
        ran = torch.zeros_like(dense[..., 0], dtype=torch.bool).scatter_(1, computed, True)
        assert not ran.all()
        assert (sparse - dense).abs().amax(dim=-1)[ran].max().item() <= TOL * max(1.0, dense.abs().max().item())
        assert torch.equal(sparse[~ran], dense[~ran])


@pytest.mark.parametrize("weight_format", FORMATS)
@pytest.mark.parametrize("family", ["flux", "wan", "zimage"])
def test_the_cache_is_kept_in_the_compute_dtype_as_planned(family, weight_format, tmp_path):
    """fp8 weights compute in float32 here (ComfyUI's manual cast on the CPU): the K/V cache holds what the
    full-precision model's holds, byte for byte in size, and the memory plan said so before sampling."""
    spec = CASES[family]
    conds = dict(positive=spec.positive(), negative=spec.negative())
    latent = spec.latent(2, *spec.same_grid((8, 12)))
    quantized = sample_patched(load_quantized(family, weight_format, tmp_path), latent, 3.0, conds)
    full = sample_patched(spec.build(seed=3), latent, 3.0, conds)
    assert quantized.kv_peak_bytes > 0
    assert quantized.kv_planned_bytes == quantized.kv_peak_bytes == full.kv_peak_bytes


@pytest.mark.parametrize("weight_format", FORMATS)
def test_the_loaded_weights_stay_as_they_were(weight_format, tmp_path):
    """Through the RAS Sampler node twice: the fp8 weights, their scales and the other weights are unchanged, and
    the second run (starting clean) gives the first one's samples."""
    spec = CASES["flux"]
    model = load_quantized("flux", weight_format, tmp_path)
    before = stored_weights(model)
    latent = {"samples": spec.latent(1, *spec.same_grid((8, 12)))}
    common = (4, 6, 2.5, "euler", "simple", spec.positive(), spec.negative(), latent, 1.0)
    first, trace = ras_sample(model, *common, **ras_values())
    second, _ = ras_sample(model, *common, **ras_values())
    assert any(0 < t < trace.tokens_per_step[0] for t in trace.tokens_per_step), "sparse steps ran"
    assert torch.equal(first["samples"], second["samples"])
    after = stored_weights(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
