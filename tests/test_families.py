"""Every supported model family through the pack's nodes: RAS Sampler and SDiT Sampler run end to end on a
tiny random-weight instance of ComfyUI's real class (CFG, batch 2, non-square latent), the model passed in
stays bit-identical, and unsupported models get a clear error from every node before any block runs.
Token-level exactness per family is in test_engine_exactness.py."""
import importlib

import pytest
import torch

from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.families import supported_family_names
from comfyui_sdit.nodes.sdit_nodes import SAMPLE_RATIO_INPUT, SDIT_OPTIONS
from sdit_testkit import FAMILIES, ras_model_patch, ras_sample, sdit_model_patch, sdit_sample, tiny_sd15

comfy_nodes = importlib.import_module("nodes")   # ComfyUI's nodes.py


def sdit_defaults(**overrides):
    values = {"sample_ratio": SAMPLE_RATIO_INPUT["sample_ratio"][1]["default"],
              **{name: spec[1].get("default") for name, (spec, _) in SDIT_OPTIONS.items()}}
    values.update(overrides)
    return values


def ras_values(**overrides):
    values = dict(sample_ratio=0.5, warmup_steps=2, reset_steps="", starvation_scale=0.1, metric="std",
                  dynamic_ratio=False)
    values.update(overrides)
    return values


def plain(model, spec, latent, steps, cfg):
    return comfy_nodes.KSampler().sample(model, 4, steps, cfg, "euler", "simple", spec.positive(), spec.negative(),
                                         latent)[0]["samples"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_ras_and_sdit_samplers_run_and_leave_the_model_untouched(family):
    spec = FAMILIES[family]
    model = spec.build(seed=31)
    height, width = spec.same_grid((12, 20))
    latent = {"samples": spec.latent(2, height, width)}
    tokens = spec.tokens(height, width)
    steps, cfg = 6, 2.5
    before = plain(model, spec, latent, steps, cfg)
    common = (4, steps, cfg, "euler", "simple", spec.positive(), spec.negative(), latent, 1.0)
    ras_out, ras_trace = ras_sample(model, *common, **ras_values())
    # no dilation ring: on these tiny grids (60 tokens) it can cover every token, and the test is about the sparse path
    sdit_out, sdit_trace = sdit_sample(model, *common, **sdit_defaults(warmup_steps=2, drift_threshold=0.0, sample_ratio=0.25,
                                                                       dilation=0))
    after = plain(model, spec, latent, steps, cfg)
    assert torch.equal(before, after), "the model passed in is unchanged"
    for out, trace in ((ras_out, ras_trace), (sdit_out, sdit_trace)):
        assert out["samples"].shape == latent["samples"].shape and torch.isfinite(out["samples"]).all()
        assert trace.grid == (height // spec.patch, width // spec.patch) and trace.batch == 2
        assert trace.tokens_per_step[:2] == [tokens, tokens]
        assert sum(0 < t < tokens for t in trace.tokens_per_step[2:]) >= 3, trace.tokens_per_step   # sparse steps
        assert (out["samples"] - before).abs().max().item() > 1e-4, "the sparse path changed the result"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_ratio_one_through_the_nodes_equals_ksampler(family):
    spec = FAMILIES[family]
    model = spec.build(seed=32)
    latent = {"samples": spec.latent(1, *spec.same_grid((8, 12)))}
    common = (4, 5, 2.0, "euler", "simple", spec.positive(), spec.negative(), latent, 1.0)
    reference = plain(model, spec, latent, 5, 2.0)
    ras_out, _ = ras_sample(model, *common, **ras_values(sample_ratio=1.0, warmup_steps=1))
    sdit_out, _ = sdit_sample(model, *common, **sdit_defaults(sample_ratio=1.0, warmup_steps=1,
                                                                        drift_threshold=0.0))
    assert (ras_out["samples"] - reference).abs().max().item() <= 1e-5
    assert (sdit_out["samples"] - reference).abs().max().item() <= 1e-5


def test_lumina2_prompt_padding_mask_stays_correct():
    """A padded prompt: the image tokens run sparse, all-active equals KSampler with the same prompt.
    ComfyUI 0.3.x attends the caption refiner under the mask (its CPU attention takes such a mask at
    batch 1 only); newer ComfyUI drops the caption mask. Either way the result must match KSampler's."""
    spec = FAMILIES["lumina2"]
    model = spec.build(seed=33)
    padded = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    positive = [[spec.positive()[0][0], {"attention_mask": padded}]]
    latent = {"samples": spec.latent(1, 8, 12)}
    reference = comfy_nodes.KSampler().sample(model, 4, 5, 1.0, "euler", "simple", positive, positive, latent)[0]
    common = (4, 5, 1.0, "euler", "simple", positive, positive, latent, 1.0)
    everything, trace = ras_sample(model, *common, **ras_values(sample_ratio=1.0, warmup_steps=1))
    assert (everything["samples"] - reference["samples"]).abs().max().item() <= 1e-5
    assert not all(s.dense for s in trace.steps)
    half, _ = ras_sample(model, *common, **ras_values())
    assert torch.isfinite(half["samples"]).all()


UNSUPPORTED = {"SD1.5 UNet": (tiny_sd15, "UNetModel")}


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_models_get_a_clear_error_from_every_node(name):
    build, class_name = UNSUPPORTED[name]
    model = build()
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    conditioning = [[torch.zeros(1, 4, 32), {}]]
    common = (0, 4, 1.0, "euler", "simple", conditioning, conditioning, latent, 1.0)
    calls = {"RAS Sampler": lambda: ras_sample(model, *common, **ras_values()),
             "RAS Model Patch": lambda: ras_model_patch(model, **ras_values()),
             "SDiT Sampler": lambda: sdit_sample(model, *common, **sdit_defaults()),
             "SDiT Model Patch": lambda: sdit_model_patch(model, **sdit_defaults())}
    for node, call in calls.items():
        with pytest.raises(SDiTInputError) as error:
            call()
        message = str(error.value)
        assert message.startswith(f"{node}: input 'model'") and class_name in message
        assert supported_family_names() in message


def test_supported_family_names_list_every_family():
    assert supported_family_names() == "Flux, Flux 2, Flux Kontext, Chroma, SD3, SD3.5, Lumina 2, Z-Image, Ming-Image, Qwen-Image, Wan 2.1, Wan 2.2, Wan VACE, Wan 2.2 Animate, Wan Animate 2, Wan HuMo, Wan S2V, Wan SCAIL, WanDancer, HunyuanVideo, Cosmos Predict2, Anima, HiDream-I1, HiDream-E1, Kandinsky 5, LTX-Video, LTX-2, Mochi, AuraFlow, Krea 2, Ideogram 4, Mage-Flow, Lens, JoyImage, CogVideoX, OmniGen2, Boogu-Image, ERNIE-Image, PixArt-α, PixArt-Σ, Qwen-Image 2.1, Chroma Radiance, HunyuanDiT, Z-Image pixel space, MiniMax H3, Cosmos 1.0, PixelDiT, PiD, HiDream-O1, SenseNova U1.5, Prism, Helios, Kandinsky 6"


# (module, ComfyUI's class, a method the family's adapter relies on, the family): a subclass overriding it is another
# model, e.g. newer ComfyUI's Z-Image pixel space (NextDiTPixelSpace, an adapter of its own: test_zimage_pixel.py) or
# Nunchaku's 4-bit Qwen-Image (its own forward and blocks, whose attention does not take transformer_options)
OWN_FORWARD_CASES = [("comfy.ldm.lumina.model", "NextDiT", "_forward", "Lumina 2"),
                     ("comfy.ldm.qwen_image.model", "QwenImageTransformer2DModel", "_forward", "Qwen-Image"),
                     ("comfy.ldm.flux.model", "Flux", "forward_orig", "Flux"),
                     ("comfy.ldm.chroma.model", "Chroma", "forward_orig", "Flux"),
                     ("comfy.ldm.modules.diffusionmodules.mmdit", "OpenAISignatureMMDITWrapper",
                      "forward_core_with_concat", "SD3")]


@pytest.mark.parametrize("module, class_name, method, family", OWN_FORWARD_CASES)
def test_a_subclass_with_a_forward_of_its_own_is_not_matched(module, class_name, method, family):
    """It gets the "not supported" error naming its class before sampling, not an error at the first sparse step (or a
    wrong image); ComfyUI's own class is matched."""
    import importlib
    import types

    from comfyui_sdit.nodes.families import adapter_for
    cls = getattr(importlib.import_module(module), class_name)
    own = type("OwnForward", (cls,), {method: lambda self, *args, **kwargs: None})
    patcher = types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=object.__new__(own)))
    with pytest.raises(SDiTInputError, match="OwnForward.* is not supported"):
        adapter_for(patcher, "SDiT Sampler")
    plain = types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=object.__new__(cls)))
    assert family in adapter_for(plain, "SDiT Sampler").names


def test_z_image_reference_latents_sample_in_either_comfyui():
    """Where the model takes reference latents (newer ComfyUI's Z-Image Omni: tests/test_zimage_omni.py) and where it
    ignores them (older ComfyUI), a prompt carrying them samples."""
    from sdit_testkit import text_conditioning
    spec = FAMILIES["zimage"]
    model = spec.build(seed=32)
    latent = {"samples": spec.latent(1, 8, 8)}
    positive = text_conditioning(1, 7, reference_latents=[torch.zeros(1, 16, 8, 8)])
    out, _ = ras_sample(model, 4, 3, 1.0, "euler", "simple", positive, spec.negative(), latent, 1.0, **ras_values())
    assert torch.isfinite(out["samples"]).all()
