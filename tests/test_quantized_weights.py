"""Models loaded with quantized weights, as most users run the large ones: ComfyUI's Load Diffusion Model with
`weight_dtype` fp8_e4m3fn (fp8 weights, cast to the compute dtype layer by layer), and the published fp8_scaled
checkpoints (an fp8 weight and a scale per linear layer: ComfyUI 0.3.75 computes them through its scaled-fp8 ops,
newer ComfyUI converts them to QuantizedTensor weights), newer ComfyUI's mixed-precision checkpoints (nvfp4, mxfp8,
int8 layers named in per-layer `comfy_quant` entries, the rest in full precision), and GGUF files through the
ComfyUI-GGUF custom nodes (weights dequantized layer by layer; run where that pack is installed: in ComfyUI's custom_nodes, or at
SDIT_COMFYUI_GGUF, with the `gguf` package). Each file is written from a family's tiny model and loaded by the
loader node a user would use (UNETLoader, Unet Loader (GGUF)); only the config detection, which reads the
full-size widths off the weights, is handed the tiny model's config. What holds for full-precision weights must hold here: every token
active equals KSampler on the same loaded model, a sparse step after a dense one is exact on the tokens that ran,
the K/V cache is kept in the compute dtype (not the weights' fp8) and as planned, and the loaded weights stay as
they were."""
import contextlib
import importlib
import importlib.util
import itertools
import json
import os
import pathlib
import sys

import pytest
import safetensors.torch
import torch

import comfy.model_detection
import folder_paths

from pack_host import comfyui_root
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core import forward_graphs
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from sdit_testkit import FAMILIES, TinyFamily, ksample, random_active, ras_sample, sample_with, tiny_wan
from test_engine_exactness import patch, repeated_evals
from test_families import ras_values
from test_forward_graphs import BACKENDS, GRAPHS_PER_FORWARD, assert_replays_equal, collecting, plans_for
from test_forward_graphs import sample as sample_planned
import test_forward_graphs
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
_counter = itertools.count()


def gguf_nodes():
    """ComfyUI-GGUF's nodes module, imported as ComfyUI imports a custom node (a package of its folder), or None."""
    places = [os.environ.get("SDIT_COMFYUI_GGUF", ""),
              *(str(comfyui_root() / "custom_nodes" / name) for name in ("ComfyUI-GGUF", "comfyui-gguf"))]
    folder = next((pathlib.Path(p) for p in places if p and (pathlib.Path(p) / "nodes.py").is_file()), None)
    if folder is None or importlib.util.find_spec("gguf") is None:
        return None
    if "sdit_test_gguf" not in sys.modules:
        spec = importlib.util.spec_from_file_location("sdit_test_gguf", folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        package = importlib.util.module_from_spec(spec)
        sys.modules["sdit_test_gguf"] = package
        spec.loader.exec_module(package)
    return importlib.import_module("sdit_test_gguf.nodes")


GGUF_NODES = gguf_nodes()
# Newer ComfyUI's mixed-precision checkpoints: per layer a `comfy_quant` entry naming its format (the layers left
# out stay in full precision), the weight's data and scales as ComfyUI's QuantizedTensor saves them. Their kernels
# are CUDA's; ComfyUI's quantized tensors dequantize on the CPU.
MIXED_FORMATS = ("nvfp4", "mxfp8", "int8_tensorwise")
KNOWN_FORMATS = getattr(importlib.import_module("comfy.quant_ops"), "QUANT_ALGOS", {})
FORMATS = ("fp8_e4m3fn", "fp8_scaled",
           pytest.param("gguf_q8_0", marks=pytest.mark.skipif(GGUF_NODES is None, reason="ComfyUI-GGUF not installed")),
           *(pytest.param(name, marks=pytest.mark.skipif(name not in KNOWN_FORMATS, reason=f"this ComfyUI has no {name}"))
             for name in MIXED_FORMATS))


def scaled_fp8_file(diffusion_model, state: dict) -> dict:
    """The fp8_scaled checkpoints' layout: each linear layer's weight in fp8 over a per-tensor scale (its largest
    magnitude onto fp8's 448), `scale_weight` and `scale_input` beside it, and the `scaled_fp8` marker."""
    out = dict(state)
    for key in linear_weights(diffusion_model):
        layer = key[:-len(".weight")]
        weight = state[key].float()
        scale = weight.abs().amax() / 448.0
        out[key] = (weight / scale).to(torch.float8_e4m3fn)
        out[f"{layer}.scale_weight"] = scale.reshape(())
        out[f"{layer}.scale_input"] = torch.ones(())
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def mixed_precision_file(diffusion_model, state: dict, quant_format: str) -> dict:
    """Every linear layer inside a block in `quant_format`, quantized by ComfyUI's own layout class (the first and
    last layers stay in full precision, as the published mixed checkpoints keep them)."""
    from comfy.quant_ops import QuantizedTensor, get_layout_class
    layout = KNOWN_FORMATS[quant_format]["comfy_tensor_layout"]
    out = dict(state)
    for key in linear_weights(diffusion_model):
        if "blocks." not in key and "layers." not in key:
            continue
        layer = key[:-len(".weight")]
        data, params = get_layout_class(layout).quantize(state[key].float())
        del out[key]
        out.update(QuantizedTensor(data, layout, params).state_dict(f"{layer}.weight"))
        out[f"{layer}.comfy_quant"] = torch.tensor(list(json.dumps({"format": quant_format}).encode()), dtype=torch.uint8)
    return out


def linear_weights(diffusion_model) -> set:
    return {f"{name}.weight" for name, module in diffusion_model.named_modules() if isinstance(module, torch.nn.Linear)}


def write_gguf_q8_0(state: dict, quantized: set, path, architecture: str) -> None:
    """A GGUF file as ComfyUI-GGUF's converter lays one out: the `quantized` weights in Q8_0 (blocks of 32 values
    along a row) where they are larger than its threshold (1,024 values), everything else in float32."""
    import gguf
    writer = gguf.GGUFWriter(str(path), architecture)
    for name, tensor in state.items():
        values = tensor.float().numpy()
        if name in quantized and values.size > 1024 and values.shape[-1] % 32 == 0:
            blocks = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, blocks, raw_shape=blocks.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


GGUF_ARCHITECTURES = {"flux": "flux", "chroma": "flux", "flux2": "flux", "sd3": "sd3", "sd35": "sd3",
                      "lumina2": "lumina2", "zimage": "lumina2", "qwen_image": "qwen_image", "wan": "wan"}


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
    name = f"tiny_{family}_{weight_format}_{next(_counter)}"
    if weight_format == "gguf_q8_0":
        write_gguf_q8_0(state, linear_weights(diffusion_model), directory / f"{name}.gguf", GGUF_ARCHITECTURES[family])
    else:
        if weight_format == "fp8_scaled":
            state = scaled_fp8_file(diffusion_model, state)
        elif weight_format in MIXED_FORMATS:
            state = mixed_precision_file(diffusion_model, state, weight_format)
        safetensors.torch.save_file(state, str(directory / f"{name}.safetensors"))
    folder_paths.add_model_folder_path("diffusion_models", str(directory))
    with tiny_config_detected(model.model.model_config):
        if weight_format == "gguf_q8_0":
            return GGUF_NODES.UnetLoaderGGUF().load_unet(f"{name}.gguf")[0]
        return comfy_nodes.UNETLoader().load_unet(f"{name}.safetensors",
                                                  "fp8_e4m3fn" if weight_format == "fp8_e4m3fn" else "default")[0]


def raw(tensor):
    """A weight's bits: fp8 tensors as bytes (torch.equal has no fp8 kernel on every device), GGUF's blocks as the
    plain tensor holding them (its tensor class hands itself out for a clone)."""
    if type(tensor).__name__ == "GGMLTensor":
        tensor = tensor.as_subclass(torch.Tensor)
    return tensor.view(torch.uint8) if tensor.dtype in FP8 else tensor


def stored_weights(model) -> dict:
    """What the loaded model holds: its state dict (newer ComfyUI's QuantizedTensor saves its fp8 data and scales
    there); GGUF's layers save placeholders, so their parameters themselves."""
    diffusion_model = model.model.diffusion_model
    if isinstance(model, GGUF_NODES.GGUFModelPatcher if GGUF_NODES else ()):
        state = dict(diffusion_model.named_parameters())
    else:
        state = diffusion_model.state_dict()
    return {name: raw(tensor).clone() for name, tensor in state.items()}


@pytest.mark.parametrize("weight_format", FORMATS)
def test_the_weights_load_quantized(weight_format, tmp_path):
    """The files are what they say: fp8 weights (newer ComfyUI's QuantizedTensor reports its compute dtype, so its
    stored weights are read from the state dict it saves), GGUF's Q8_0 blocks, or the mixed-precision formats'
    storage in the blocks beside full-precision layers outside them."""
    model = load_quantized("flux", weight_format, tmp_path)
    if weight_format == "gguf_q8_0":
        import gguf
        weight = model.model.diffusion_model.double_blocks[0].img_attn.qkv.weight
        assert weight.tensor_type == gguf.GGMLQuantizationType.Q8_0
        return
    stored = model.model.diffusion_model.state_dict()
    if weight_format in MIXED_FORMATS:
        assert stored["double_blocks.0.img_attn.qkv.weight"].dtype == KNOWN_FORMATS[weight_format]["storage_t"]
        assert "double_blocks.0.img_attn.qkv.comfy_quant" in stored
        assert stored["img_in.weight"].dtype == torch.float32, "the layers outside the blocks stay in full precision"
        return
    assert stored["double_blocks.0.img_attn.qkv.weight"].dtype == torch.float8_e4m3fn
    assert model.model.manual_cast_dtype == torch.float32 or weight_format == "fp8_scaled"


def loaded_case(family: str, weight_format: str, directory, batch: int = 2):
    """The family, its quantized model, a latent of `batch` images and its token count, and the prompts."""
    spec = CASES[family]
    size = spec.same_grid((8, 12))
    return (spec, load_quantized(family, weight_format, directory), spec.latent(batch, *size), spec.tokens(*size),
            dict(positive=spec.positive(), negative=spec.negative()))


@pytest.mark.parametrize("weight_format", FORMATS)
@pytest.mark.parametrize("family", sorted(CASES))
def test_every_token_active_equals_ksampler_on_the_loaded_model(family, weight_format, tmp_path):
    spec, model, latent, tokens, conds = loaded_case(family, weight_format, tmp_path)
    everything = torch.arange(tokens).expand(2, -1)
    reference = ksample(model, latent, seed=5, steps=4, cfg=3.0, **conds)
    patched, slot = apply_token_sparse(model, lambda run: FixedPlanPolicy([None] + [everything] * 3), node="test")
    sparse = ksample(patched, latent, seed=5, steps=4, cfg=3.0, **conds)
    assert [e.dense for e in slot.last_run.evals] == [True, False, False, False]
    assert (sparse - reference).abs().max().item() <= TOL * max(1.0, reference.abs().max().item())


@pytest.mark.parametrize("weight_format", FORMATS)
@pytest.mark.parametrize("family", sorted(CASES))
def test_a_sparse_step_after_a_dense_one_is_exact_on_the_tokens_that_ran(family, weight_format, tmp_path):
    """Batch 2 with CFG, a different active set per image; the same input evaluated dense and then sparse."""
    spec, model, latent, tokens, conds = loaded_case(family, weight_format, tmp_path)
    active = random_active(2, tokens, tokens // 3, seed=1)
    patched, slot, policy = patch(model, [None, active])
    sampler, _ = repeated_evals([lambda x: x, lambda x: x])
    sample_with(patched, latent, sampler, torch.tensor([0.8, 0.0]), cfg=3.0, seed=9, **conds)
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


@pytest.mark.parametrize("weight_format", FORMATS)
def test_a_lora_on_the_quantized_weights_samples_as_without_the_pack(weight_format, tmp_path):
    """A weight patch (what a LoRA loader adds) on a quantized layer: ComfyUI applies it when the weights load (fp8:
    back into fp8) or as each layer dequantizes (GGUF). Every token active equals KSampler on the same patched
    model, and the patch shows in the samples. Under inference mode, as ComfyUI runs every node (0.3.75 rounds a
    patched fp8 weight with an in-place op that autograd refuses)."""
    with torch.inference_mode():
        sample_a_lora_on_quantized_weights(weight_format, tmp_path)


def sample_a_lora_on_quantized_weights(weight_format, directory):
    _, loaded, latent, tokens, conds = loaded_case("flux", weight_format, directory, batch=1)
    key = "diffusion_model.double_blocks.0.img_attn.qkv.weight"
    shape = tuple(loaded.model.diffusion_model.double_blocks[0].img_attn.qkv.weight.shape)
    with_lora = loaded.clone()
    with_lora.add_patches({key: (0.05 * torch.randn(shape, generator=torch.Generator().manual_seed(4)),)}, 1.0)
    without = ksample(loaded, latent, seed=5, steps=4, cfg=3.0, **conds)
    reference = ksample(with_lora, latent, seed=5, steps=4, cfg=3.0, **conds)
    everything = torch.arange(tokens).expand(1, -1)
    patched, _ = apply_token_sparse(with_lora, lambda run: FixedPlanPolicy([None] + [everything] * 3), node="test")
    sparse = ksample(patched, latent, seed=5, steps=4, cfg=3.0, **conds)
    assert (reference - without).abs().max().item() > 1e-2, "the weight patch applied"
    assert (sparse - reference).abs().max().item() <= TOL * max(1.0, reference.abs().max().item())


class NoSyncCount(contextlib.nullcontext):
    ops = ()

    def __enter__(self):
        return self


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weight_format", FORMATS)
@pytest.mark.parametrize("family", ["flux", "qwen_image", "zimage"])
def test_replayed_forwards_equal_eager_ones(family, weight_format, backend, tmp_path, monkeypatch):
    """Graph replay (test_forward_graphs.py's stand-in; CUDA graphs with SDIT_TESTS_ON_GPU=1 on a GPU) with the
    weights dequantized inside each graphed part: the samples of eager sampling, no host sync in a capture (every
    count that comes back captured, as there). GGUF's weight class cannot be rebuilt under the torch dispatch mode
    that counts host syncs (it loses its tensor type there), so with GGUF the stand-in counts none."""
    monkeypatch.setenv(forward_graphs.MIN_USES_FLAG, "1")
    if weight_format == "gguf_q8_0":
        monkeypatch.setattr(test_forward_graphs, "SyncCounter", NoSyncCount)
    model = load_quantized(family, weight_format, tmp_path)
    plans = plans_for(family)
    eager, _ = sample_planned(model, family, plans)
    backends = []
    graphed, _ = sample_planned(model, family, plans, collecting(backends, backend=backend))
    assert_replays_equal(graphed, eager, backend)
    assert not getattr(backends[0], "syncs", [])
    graphs = GRAPHS_PER_FORWARD[family] * CASES[family].cfg_streams
    assert [b.captures for b in backends] == [graphs] and backends[0].replays == 4 * graphs
