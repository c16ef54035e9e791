"""Models that take an image (and a mask) as extra latent channels, on the plain Flux and Wan classes: Flux Fill
(`FluxInpaint`: image + an 8x8-unshuffled mask), Flux Canny/Depth (the control image's channels) and Wan Fun
Control (`WAN21_FunControl2V`). ComfyUI concatenates those channels to the latent before the patch embedding,
so they travel with their tokens; tiny random-weight instances of the real classes (CPU, fp32)."""
import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.comfy_compat import flux_unet_config
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from comfyui_sdit.sdit_core.tokens import index_to_mask
from sdit_testkit import TINY_FLUX, TINY_WAN, build_tiny, flux_conditioning, ksample, random_active, text_conditioning
from test_video import dense_then_sparse

TOL = 1e-5
HEIGHT, WIDTH = 8, 12


def randn(*shape, seed=3):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def flux_prompts(**values):
    return dict(positive=[[t, dict(v, **values)] for t, v in flux_conditioning(1)],
                negative=[[t, dict(v, **values)] for t, v in flux_conditioning(2)])


def fill_mask():
    mask = torch.zeros(1, 1, 8 * HEIGHT, 8 * WIDTH)          # as InpaintModelConditioning hands it over
    mask[..., 16:48, 24:72] = 1.0                                     # repaint a box in the middle
    return mask


CASES = {   # name: (model config class, unet config, latent shape, prompts)
    "flux-fill": (comfy.supported_models.FluxInpaint, flux_unet_config(dict(TINY_FLUX, in_channels=96)),
                  (16, HEIGHT, WIDTH),
                  lambda: flux_prompts(concat_latent_image=randn(1, 16, HEIGHT, WIDTH), concat_mask=fill_mask())),
    "flux-canny-depth": (comfy.supported_models.Flux, flux_unet_config(dict(TINY_FLUX, in_channels=32)),
                         (16, HEIGHT, WIDTH), lambda: flux_prompts(concat_latent_image=randn(1, 16, HEIGHT, WIDTH))),
    "wan-fun-control": (comfy.supported_models.WAN21_FunControl2V, dict(TINY_WAN, model_type="i2v", in_dim=48),
                        (16, 3, HEIGHT, WIDTH),
                        lambda: dict(positive=text_conditioning(1, 7, concat_latent_image=randn(1, 32, 3, HEIGHT, WIDTH)),
                                     negative=text_conditioning(2, 5, concat_latent_image=randn(1, 32, 3, HEIGHT, WIDTH)))),
}


def tokens_of(shape):
    frames = shape[1] if len(shape) == 4 else 1
    return frames * (shape[-2] // 2) * (shape[-1] // 2)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(name, batch, cfg):
    model_config, config, shape, make_prompts = CASES[name]
    model = build_tiny(model_config, config, seed=3)
    latent, tokens = torch.zeros(batch, *shape), tokens_of(shape)
    reference = ksample(model, latent, seed=5, steps=4, cfg=cfg, **make_prompts())
    policy = FixedPlanPolicy([None] + [torch.arange(tokens).expand(batch, -1)] * 3)
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    sparse = ksample(patched, latent, seed=5, steps=4, cfg=cfg, **make_prompts())
    assert (sparse - reference).abs().max().item() <= TOL
    assert [e.dense for e in slot.last_run.evals] == [True, False, False, False]


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(name, batch, cfg):
    model_config, config, shape, make_prompts = CASES[name]
    tokens = tokens_of(shape)
    active = random_active(batch, tokens, tokens // 3, seed=1)
    by_stream = dense_then_sparse(build_tiny(model_config, config, seed=4), torch.zeros(batch, *shape), active, cfg,
                                  make_prompts())
    assert by_stream
    for (dense, _), (sparse, computed) in by_stream.values():
        mask = index_to_mask(computed, tokens)
        assert (sparse - dense).abs().amax(dim=-1)[mask].max().item() <= TOL
        assert torch.equal(sparse[~mask], dense[~mask])
