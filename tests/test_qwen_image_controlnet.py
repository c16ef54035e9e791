"""Qwen-Image with ComfyUI's DiffSynth ControlNet ("Apply Qwen Image DiffSynth ControlNet": a blockwise ControlNet of
"Load Model Patch" that adds, after every block, a per-token network of each image token and the control image's
embedding of that token), on a tiny random-weight Qwen-Image and a tiny instance of ComfyUI's own
QwenImageBlockWiseControlNet (CPU, fp32): every token active == the ControlNet alone; a sparse step after a dense one
exact on the tokens that ran (batch 2 with CFG, other tokens per image, one control image for the batch); the
inpainting form with a mask; the node applied before or after the pack's Model Patch; the sampler nodes end to end;
the patch on the model untouched."""
import importlib

import pytest
import torch

import comfy.model_patcher
import comfy.supported_models
import comfy.ops
import nodes as comfy_nodes

from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.families.base import is_patch_of
from sdit_testkit import (assert_exact_on_active_tokens, init_weights_, random_active, ras_model_patch, ras_sample,
                          text_conditioning, tiny_flux, tiny_qwen_image)
from test_ras_sampler import ras_args
from test_video import (a_patch_runs_with_every_token_active, assert_within, dense_then_sparse,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end)

model_patch_nodes = importlib.import_module("comfy_extras.nodes_model_patch")
if not hasattr(model_patch_nodes, "QwenImageBlockWiseControlNet"):
    pytest.skip("this ComfyUI has no Qwen-Image DiffSynth ControlNet", allow_module_level=True)

TOL = 1e-5
HEIGHT, WIDTH = 8, 12                    # a non-square latent: a 4 x 6 grid of 24 tokens
TOKENS = (HEIGHT // 2) * (WIDTH // 2)
INNER_DIM = 64                           # the tiny Qwen-Image's (4 heads of 16), its 2 blocks


class StandInQwenImageVAE:
    """Qwen-Image's VAE (Wan 2.1's) as the ControlNet's node uses it: a single-frame latent of 16 channels, 8 pixels a
    latent pixel (random, fixed by the pixels' shape)."""

    def encode(self, pixels):
        generator = torch.Generator().manual_seed(pixels.shape[1] * 31 + pixels.shape[2])
        return torch.randn(pixels.shape[0], 16, 1, pixels.shape[1] // 8, pixels.shape[2] // 8, generator=generator)

    def spacial_compression_encode(self):
        return 8


def control_net(seed: int, mask_channels: int = 0):
    """ComfyUI's blockwise ControlNet, one control block per Qwen-Image block, as "Load Model Patch" gives it."""
    net = model_patch_nodes.QwenImageBlockWiseControlNet(num_layers=2, in_dim=64, additional_in_dim=mask_channels,
                                                         dim=INNER_DIM, operations=comfy.ops.disable_weight_init)
    init_weights_(net, seed)
    return comfy.model_patcher.ModelPatcher(net, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def control_image(height=HEIGHT * 8, width=WIDTH * 8):
    return torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(7))


def with_control(model, strength=1.0, mask_channels=0, mask=None, image=None):
    node = model_patch_nodes.QwenImageDiffsynthControlnet()
    image = control_image() if image is None else image
    with torch.no_grad():           # as ComfyUI runs its nodes
            return node.diffsynth_controlnet(model, control_net(11, mask_channels), StandInQwenImageVAE(), image, strength,
                                         mask=mask)[0]


def latent(batch=1):
    return torch.zeros(batch, 16, 1, HEIGHT, WIDTH)


def prompts():
    return dict(positive=text_conditioning(1, 7), negative=text_conditioning(2, 7))


def the_patch(model):
    return next(p for p in model.model_options["transformer_options"]["patches"]["double_block"]
                if is_patch_of(p, "DiffSynthCnetPatch"))


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_the_controlnet_alone(batch, cfg):
    model = tiny_qwen_image(seed=3)
    a_patch_runs_with_every_token_active(model, with_control(model), latent(batch), cfg, prompts(), TOKENS,
                                         assert_within(TOL))


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(batch, cfg):
    """A third of the tokens, in random order and other ones per image; the control image is one for the batch
    and of another size than the latent's pixels (the patch encodes it again at the latent's size)."""
    controlled = with_control(tiny_qwen_image(seed=4), image=control_image(40, 72))
    active = random_active(batch, TOKENS, TOKENS // 3, seed=1)
    assert_exact_on_active_tokens(dense_then_sparse(controlled, latent(batch), active, cfg, prompts()), TOKENS)


def test_the_inpainting_form_with_a_mask():
    """The ControlNet with mask channels (its inpainting checkpoints) and a mask over part of the image."""
    mask = torch.zeros(1, HEIGHT * 8, WIDTH * 8)
    mask[:, :32, 40:] = 1.0
    controlled = with_control(tiny_qwen_image(seed=5), mask_channels=4, mask=mask)
    active = random_active(2, TOKENS, TOKENS // 3, seed=2)
    assert_exact_on_active_tokens(dense_then_sparse(controlled, latent(2), active, 3.0, prompts()), TOKENS)


def test_a_strength_of_zero_equals_the_model_alone_on_sparse_steps_too():
    """The running rows are added, scaled as the patch scales them: at strength 0 the controlled model's sparse
    sampling equals the plain model's."""
    model = tiny_qwen_image(seed=6)
    a = dict(ras_args(cfg=3.0, sample_ratio=0.4), **prompts())
    plain, _ = ras_sample(model, latent_image={"samples": latent(1)}, **a)
    out, trace = ras_sample(with_control(model, strength=0.0), latent_image={"samples": latent(1)}, **a)
    assert any(0 < t < TOKENS for t in trace.tokens_per_step)
    assert (out["samples"] - plain["samples"]).abs().max().item() <= TOL


def test_the_node_before_or_after_the_model_patch():
    """Apply Qwen Image DiffSynth ControlNet on the model the RAS Model Patch node gets, or on its output: the same
    samples, every token active equal to the ControlNet alone."""
    model = tiny_qwen_image(seed=7)
    p = prompts()

    def sample(m):
        return comfy_nodes.KSampler().sample(m, 4, 5, 2.0, "euler", "simple", p["positive"], p["negative"],
                                             {"samples": latent(1)})[0]["samples"]
    reference = sample(with_control(model))
    assert_within(TOL)(sample(ras_model_patch(with_control(model), 1.0, 1, "", 0.1, "std", False)[0]), reference)
    before = sample(ras_model_patch(with_control(model), 0.3, 1, "", 0.1, "std", False)[0])
    after = sample(with_control(ras_model_patch(model, 0.3, 1, "", 0.1, "std", False)[0]))
    assert torch.isfinite(before).all() and (before - reference).abs().max().item() > 1e-4
    assert_within(TOL)(after, before)


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end(method):
    controlled = with_control(tiny_qwen_image(seed=8))
    encoded = the_patch(controlled).encoded_image.clone()
    sampler_node_end_to_end(controlled, {"samples": latent(2)}, prompts(), method, TOKENS)
    assert torch.equal(the_patch(controlled).encoded_image, encoded), "the patch on the model is unchanged"


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(with_control(tiny_qwen_image(seed=9)), {"samples": latent(1)}, prompts(),
                                     assert_within(TOL))


def test_on_another_family_it_is_still_refused():
    """Only Qwen-Image's adapter runs the patch token-sparse (its blocks hand it the image tokens it adds to)."""
    model, patch = tiny_flux(seed=10).clone(), object.__new__(model_patch_nodes.DiffSynthCnetPatch)
    patch.to = lambda *args, **kwargs: patch        # unbuilt: stays where it is when ComfyUI moves the patches
    model.set_model_double_block_patch(patch)
    with pytest.raises(SDiTInputError, match="RAS Model Patch.*'Apply Qwen Image DiffSynth ControlNet'"):
        ras_model_patch(model, 0.3, 1, "", 0.1, "std", False)


def test_on_layered_latents_the_first_sparse_step_names_the_node():
    """Qwen-Image-Layered's layers are frames of one token grid; the control image covers one layer, whose tokens the
    patch finds by position (the sequence's first ones): a token-sparse sequence has no such prefix."""
    from comfyui_sdit.nodes.comfy_compat import patchifies_frames
    from sdit_testkit import TINY_QWEN_IMAGE, build_tiny
    try:
        model = build_tiny(comfy.supported_models.QwenImage, dict(TINY_QWEN_IMAGE, use_additional_t_cond=True), seed=12)
    except TypeError:                               # a ComfyUI without Qwen-Image-Layered
        pytest.skip("this ComfyUI's Qwen-Image has no layers")
    if not patchifies_frames(model.model.diffusion_model):
        pytest.skip("this ComfyUI's Qwen-Image takes one frame")
    layers = {"samples": torch.zeros(1, 16, 3, HEIGHT, WIDTH)}
    a = dict(ras_args(cfg=1.0, sample_ratio=0.4), **prompts())
    with pytest.raises(NotImplementedError, match="DiffSynth ControlNet.*Apply Qwen Image DiffSynth ControlNet"):
        ras_sample(with_control(model), latent_image=layers, **a)
