"""Inpainting-aware selection: with a latent noise_mask, sparse steps pick only tokens inside the mask and
the budget shrinks with the mask's area; outside the mask the result is KSampler's (the sampler keeps
the original latent there)."""
import importlib

import pytest
import torch

from comfyui_sdit.sdit_core.tokens import tokens_inside
from test_ras_sampler import ras_args
from test_sdit_sampler import defaults
from sdit_testkit import flux_conditioning, ras_sample, sdit_sample, tiny_flux

comfy_nodes = importlib.import_module("nodes")   # ComfyUI's nodes.py


def inpaint_latent():
    """16x16 latent (8x8 tokens) of an 'image', its top-left quarter (4x4 tokens) to repaint."""
    samples = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(8))
    mask = torch.zeros(1, 16, 16)
    mask[:, :8, :8] = 1.0
    return {"samples": samples, "noise_mask": mask}, mask


def sample(node, model, latent):
    if node == "RAS":
        return ras_sample(model, latent_image=latent, **ras_args(steps=12, sample_ratio=0.5, reset_steps=""))
    return sdit_sample(model, 3, 12, 1.0, "euler", "simple", flux_conditioning(1), flux_conditioning(2),
                                latent, 1.0, **defaults(sample_ratio=0.5, drift_threshold=0.0))


@pytest.mark.parametrize("node", ["RAS", "SDiT"])
def test_only_tokens_inside_the_mask_run_and_outside_equals_ksampler(node):
    model = tiny_flux(seed=50)
    latent, mask = inpaint_latent()
    out, trace = sample(node, model, latent)
    a = ras_args(steps=12)
    reference = comfy_nodes.KSampler().sample(model, 3, 12, 1.0, "euler", "simple", a["positive"], a["negative"],
                                              latent)[0]["samples"]
    outside = mask[0] == 0
    assert torch.equal(out["samples"][..., outside], reference[..., outside])
    inside_tokens = tokens_inside(mask, (1, 16, 16, 16), 2)[0].view(8, 8)
    assert int(inside_tokens.sum()) == 16
    sparse = [s for s in trace.steps if not s.dense]
    assert sparse
    for s in sparse:
        assert not (s.active[0] & ~inside_tokens).any(), "a token outside the mask ran on a sparse step"
    # the budget follows the mask's area: a quarter of the image, about a quarter of the work
    _, unmasked = sample(node, model, {"samples": latent["samples"]})
    masked_work = sum(s.tokens for s in sparse)
    full_work = sum(s.tokens for s in unmasked.steps if not s.dense)
    assert 0.15 < masked_work / full_work < 0.35, (masked_work, full_work)


def test_tokens_inside_takes_masks_at_any_resolution():
    pixel_mask = torch.zeros(1, 128, 128)
    pixel_mask[:, 64:, 64:] = 1.0                  # bottom-right quarter, at image resolution
    inside = tokens_inside(pixel_mask, (2, 16, 16, 16), 2)
    assert inside.shape == (2, 64) and torch.equal(inside[0], inside[1])
    grid = inside[0].view(8, 8)
    assert grid[4:, 4:].all() and not grid[:3, :].any() and not grid[:, :3].any()


@pytest.mark.parametrize("node", ["RAS", "SDiT"])
def test_differential_diffusion_with_a_soft_mask(node):
    """ComfyUI's Differential Diffusion turns a soft mask into a per-step binary one (a token repaints from the step
    where its mask value passes a falling threshold): sparse steps pick tokens inside the soft mask only (any value
    above 0), and outside it the result is KSampler's with the node."""
    dd = importlib.import_module("comfy_extras.nodes_differential_diffusion").DifferentialDiffusion
    model = dd.execute(tiny_flux(seed=51))[0]
    latent, _ = inpaint_latent()
    mask = torch.zeros(1, 16, 16)
    mask[:, 2:, :8] = torch.linspace(0.1, 1.0, 14)[:, None]      # left half but its top token row: 0.1 down to 1
    latent = dict(latent, noise_mask=mask)
    a = ras_args(steps=12)
    reference = comfy_nodes.KSampler().sample(model, 3, 12, 1.0, "euler", "simple", a["positive"], a["negative"],
                                              latent)[0]["samples"]
    out, trace = sample(node, model, latent)
    outside = mask[0] == 0
    assert torch.equal(out["samples"][..., outside], reference[..., outside])
    inside_tokens = tokens_inside(mask, (1, 16, 16, 16), 2)[0].view(8, 8)
    assert int(inside_tokens.sum()) == 28
    sparse = [s for s in trace.steps if not s.dense]
    assert sparse and all(not (s.active[0] & ~inside_tokens).any() for s in sparse)
    assert torch.isfinite(out["samples"]).all()


@pytest.mark.parametrize("node", ["RAS", "SDiT"])
def test_ratio_one_with_a_mask_samples_as_ksampler(node):
    """A sample ratio of 1 computes every token on every step, those outside the mask too (their keys and values
    change with the noise the sampler puts back there each step): the result is KSampler's."""
    model = tiny_flux(seed=52)
    latent, _ = inpaint_latent()
    a = ras_args(steps=12)
    reference = comfy_nodes.KSampler().sample(model, 3, 12, 1.0, "euler", "simple", a["positive"], a["negative"],
                                              latent)[0]["samples"]
    if node == "RAS":
        out, trace = ras_sample(model, latent_image=latent, **ras_args(steps=12, sample_ratio=1.0, reset_steps=""))
    else:
        out, trace = sdit_sample(model, 3, 12, 1.0, "euler", "simple", flux_conditioning(1), flux_conditioning(2),
                                 latent, 1.0, **defaults(sample_ratio=1.0, drift_threshold=0.0))
    assert (out["samples"] - reference).abs().max().item() <= 1e-5
    assert all(s.tokens == 64 for s in trace.steps)
