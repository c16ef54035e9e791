"""Z-Image with ComfyUI's Fun ControlNet ("Apply Z-Image Fun ControlNet": a ZImage_Control of "Load Model Patch", a
transformer over the control image's tokens fed by the model's hidden states, whose blocks' outputs the patch adds to
the image tokens after some of the model's layers), on a tiny random-weight Z-Image (30 layers as Z-Image's, which the
patch's schedule assumes; a 4 x 6 grid padded to 32 tokens) and tiny instances of ComfyUI's own ZImage_Control in the four forms its loader builds (CPU, fp32): every
token active == the ControlNet alone; a sparse step after a dense one exact on the tokens that ran (batch 2 with CFG,
other tokens per image); the K/V cache as planned (the control blocks' layers over the grid's tokens alone); the
sampler and Model Patch nodes end to end with the model and the patch untouched; Z-Image Omni's references refused.
Skipped where the running ComfyUI has no Z-Image Fun ControlNet (0.3.75)."""
import importlib

import pytest
import torch

import comfy.model_patcher
import comfy.ops
import comfy.supported_models
import nodes as comfy_nodes

from comfyui_sdit.nodes.families.base import is_patch_of
from comfyui_sdit.nodes.families.zimage_fun_controlnet import OMNI
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from sdit_testkit import (TINY_ZIMAGE, assert_exact_on_active_tokens, build_tiny, init_weights_, ksample,
                          random_active, ras_model_patch, text_conditioning)
from test_video import (a_patch_runs_with_every_token_active, assert_within, dense_then_sparse,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end)

model_patch_nodes = importlib.import_module("comfy_extras.nodes_model_patch")
if not hasattr(model_patch_nodes, "ZImageControlPatch"):
    pytest.skip("this ComfyUI has no Z-Image Fun ControlNet", allow_module_level=True)
lumina_controlnet = importlib.import_module("comfy.ldm.lumina.controlnet")

TOL = 1e-5
HEIGHT, WIDTH = 8, 12                    # a non-square latent: a 4 x 6 grid of 24 tokens (Z-Image pads it to 32)
TOKENS = (HEIGHT // 2) * (WIDTH // 2)
PADDED = 32
LAYERS = 30                              # ComfyUI's patch spreads the control blocks over 30 layers
DIM = TINY_ZIMAGE["dim"]
# The forms "Load Model Patch" builds: Union 1.0 (6 blocks, its own refiner blocks), 2.0 lite (3 blocks, refiner
# control, inpainting channels), 2.0 / 2.1 (15 blocks, refiner control) and its "broken" checkpoints
FORMS = {
    "union": dict(n_control_layers=6),
    "lite": dict(n_control_layers=3, additional_in_dim=17, refiner_control=True),
    "2.1": dict(n_control_layers=15, additional_in_dim=17, refiner_control=True),
    "broken": dict(n_control_layers=15, additional_in_dim=17, refiner_control=True, broken=True),
}
# the control blocks' attention calls per forward (2 refiner layers; then every block): the memory plan's count
CONTROL_CALLS = {"union": 2 + 6, "lite": 2 + 3, "2.1": 2 + 15, "broken": 1 + 14 + 15}


def tiny_zimage(seed: int):
    """30 layers with narrow feed-forwards (the attention is what the ControlNet's tokens go through)."""
    return build_tiny(comfy.supported_models.ZImage, dict(TINY_ZIMAGE, n_layers=LAYERS, multiple_of=16,
                                                          ffn_dim_multiplier=0.25), seed)


class StandInFluxVAE:
    """Z-Image's VAE (Flux's) as the ControlNet's node uses it: 16 channels, 8 pixels a latent pixel (random, fixed by
    the pixels)."""

    def encode(self, pixels):
        generator = torch.Generator().manual_seed(int(pixels.sum() * 1000) % 10007 + pixels.shape[1])
        return torch.randn(pixels.shape[0], 16, pixels.shape[1] // 8, pixels.shape[2] // 8, generator=generator)

    def spacial_compression_encode(self):
        return 8


def control_net(form: str, seed: int):
    net = lumina_controlnet.ZImage_Control(dim=DIM, n_heads=TINY_ZIMAGE["n_heads"], n_kv_heads=TINY_ZIMAGE["n_kv_heads"],
                                           multiple_of=16, ffn_dim_multiplier=0.25, qk_norm=True,
                                           operations=comfy.ops.disable_weight_init, **FORMS[form])
    init_weights_(net, seed)
    return comfy.model_patcher.ModelPatcher(net, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def control_image(height=HEIGHT * 8, width=WIDTH * 8, seed=7):
    return torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(seed))


def with_control(model, form="union", strength=1.0, image=None):
    node = model_patch_nodes.ZImageFunControlnet()
    image = control_image() if image is None else image
    with torch.no_grad():           # as ComfyUI runs its nodes
        return node.diffsynth_controlnet(model, control_net(form, 11), StandInFluxVAE(), image, strength)[0]


def the_patch(model):
    return next(p for p in model.model_options["transformer_options"]["patches"]["double_block"]
                if is_patch_of(p, "ZImageControlPatch"))


def latent(batch=1):
    return torch.zeros(batch, 16, HEIGHT, WIDTH)


def prompts(**values):
    return dict(positive=text_conditioning(1, 7, **values), negative=text_conditioning(2, 7, **values))


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_the_controlnet_alone(form, batch, cfg):
    model = tiny_zimage(seed=3)
    a_patch_runs_with_every_token_active(model, with_control(model, form), latent(batch), cfg, prompts(), TOKENS,
                                         assert_within(TOL))


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(form, batch, cfg):
    """A third of the tokens, in random order and other ones per image; the control image of another size than the
    latent's pixels (the patch encodes it again at the latent's size)."""
    controlled = with_control(tiny_zimage(seed=4), form, image=control_image(40, 72))
    active = random_active(batch, TOKENS, TOKENS // 3, seed=1)
    assert_exact_on_active_tokens(dense_then_sparse(controlled, latent(batch), active, cfg, prompts()), TOKENS,
                                  extra=PADDED - TOKENS)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_the_cache_is_as_planned(form):
    """The model's layers over the image with its padding (refiner) and the caption (joint), and one layer of every
    control block call over the grid's tokens alone."""
    policy = FixedPlanPolicy([None] + [random_active(2, TOKENS, TOKENS // 3, seed=3)] * 3)
    patched, slot = apply_token_sparse(with_control(tiny_zimage(seed=7), form), lambda run: policy, node="test")
    ksample(patched, latent(2), seed=5, steps=4, cfg=3.0, **prompts())
    run = slot.last_run
    model_tokens = 2 * PADDED + LAYERS * (PADDED + PADDED)      # the 7-token caption padded to 32 too
    rows = 4                                                   # batch 2, cond and uncond batched
    assert run.kv_planned_bytes == run.kv_peak_bytes == rows * (model_tokens + CONTROL_CALLS[form] * TOKENS) * DIM * 2 * 4
    assert all(len(c.attention_image_rows) == 2 + LAYERS + CONTROL_CALLS[form] for e in run.evals for c in e.calls)


def test_two_fun_controlnets_on_one_model():
    """Apply Z-Image Fun ControlNet twice (Union 1.0, then 2.0 lite): each patch runs on its own copy, both exact on
    the tokens that ran, their cache layers planned."""
    model = tiny_zimage(seed=12)
    twice = with_control(with_control(model, "union"), "lite", strength=0.5)
    a_patch_runs_with_every_token_active(model, twice, latent(2), 3.0, prompts(), TOKENS, assert_within(TOL))
    active = random_active(2, TOKENS, TOKENS // 3, seed=2)
    assert_exact_on_active_tokens(dense_then_sparse(twice, latent(2), active, 3.0, prompts()), TOKENS,
                                  extra=PADDED - TOKENS)
    policy = FixedPlanPolicy([None] + [active] * 2)
    patched, slot = apply_token_sparse(twice, lambda run: policy, node="test")
    ksample(patched, latent(2), seed=5, steps=3, cfg=3.0, **prompts())
    calls = CONTROL_CALLS["union"] + CONTROL_CALLS["lite"]
    assert slot.last_run.kv_planned_bytes == slot.last_run.kv_peak_bytes == \
        4 * (2 * PADDED + LAYERS * 2 * PADDED + calls * TOKENS) * DIM * 2 * 4


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end(method):
    controlled = with_control(tiny_zimage(seed=8), "2.1")
    encoded = the_patch(controlled).encoded_image.clone()
    sampler_node_end_to_end(controlled, {"samples": latent(2)}, prompts(), method, TOKENS)
    assert torch.equal(the_patch(controlled).encoded_image, encoded), "the patch on the model is unchanged"
    assert the_patch(controlled).temp_data is None


def test_the_node_before_or_after_the_model_patch():
    """Apply Z-Image Fun ControlNet on the model the RAS Model Patch node gets, or on its output: the same samples
    (the patch is found on every forward, wherever it was put)."""
    model = tiny_zimage(seed=13)
    p = prompts()

    def sample(m):
        return comfy_nodes.KSampler().sample(m, 4, 5, 1.0, "euler", "simple", p["positive"], p["negative"],
                                             {"samples": latent(1)})[0]["samples"]
    before = sample(ras_model_patch(with_control(model, "lite"), 0.3, 1, "", 0.1, "std", False)[0])
    after = sample(with_control(ras_model_patch(model, 0.3, 1, "", 0.1, "std", False)[0], "lite"))
    assert torch.isfinite(before).all() and (before - sample(with_control(model, "lite"))).abs().max().item() > 1e-4
    assert_within(TOL)(after, before)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(with_control(tiny_zimage(seed=9), "lite"), {"samples": latent(1)}, prompts(),
                                     assert_within(TOL))


def test_on_z_image_pixel_space_it_is_still_refused():
    """Only the latent Z-Image's adapter runs the patch token-sparse (untested on the pixel-space model)."""
    from comfyui_sdit.nodes.errors import SDiTInputError
    from test_zimage_pixel import tiny_zimage_pixel
    from test_ras_sampler import ras_args
    from sdit_testkit import ras_sample
    model = tiny_zimage_pixel(seed=14)
    with pytest.raises(SDiTInputError, match="RAS Sampler.*'Apply Z-Image Fun ControlNet'"):
        ras_sample(with_control(model), latent_image={"samples": torch.zeros(1, 3, 64, 96)},
                   **dict(ras_args(cfg=1.0), **prompts()))


def test_with_omni_reference_images_the_first_forward_names_the_node():
    references = [torch.randn(1, 16, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))]
    policy = FixedPlanPolicy([None] + [random_active(1, TOKENS, TOKENS // 3, seed=3)] * 3)
    patched, _ = apply_token_sparse(with_control(tiny_zimage(seed=10)), lambda run: policy, node="test")
    with pytest.raises(NotImplementedError, match="Apply Z-Image Fun ControlNet") as error:
        ksample(patched, latent(1), seed=5, steps=3, cfg=1.0, **prompts(reference_latents=references))
    assert str(error.value) == OMNI
