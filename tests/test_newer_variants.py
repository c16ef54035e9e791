"""Models newer ComfyUI runs on the classes the pack supports, tested where the running ComfyUI has them
(skipped on older ones): LongCat-Image on the Flux class (text with position ids, its positions shifted past
the text's through `rope_options`) and Wan FlowRVS on the plain Wan class (image-to-image flow: the model's
output is the prediction). Tiny random-weight instances of the real classes (CPU, fp32)."""
import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.comfy_compat import flux_unet_config
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from comfyui_sdit.sdit_core.tokens import index_to_mask
from sdit_testkit import TINY_FLUX, TINY_WAN, build_tiny, ksample, random_active, text_conditioning
from test_video import dense_then_sparse

TOL = 1e-5
HEIGHT, WIDTH = 8, 12


def longcat_config():
    return flux_unet_config(dict(TINY_FLUX, guidance_embed=False, vec_in_dim=None, txt_ids_dims=[1, 2]))


CASES = {   # name: (model config class name, unet config, latent shape)
    "longcat-image": ("LongCatImage", longcat_config, (16, HEIGHT, WIDTH)),
    "wan-flow-rvs": ("WAN21_FlowRVS", lambda: dict(TINY_WAN, model_type="flow_rvs"), (16, 3, HEIGHT, WIDTH)),
}


def case(name):
    class_name, config, shape = CASES[name]
    model_config = getattr(comfy.supported_models, class_name, None)
    if model_config is None:
        pytest.skip(f"this ComfyUI has no {class_name}")
    frames = shape[1] if len(shape) == 4 else 1
    return model_config, config(), shape, frames * (shape[-2] // 2) * (shape[-1] // 2)


def prompts():
    return dict(positive=text_conditioning(1, 7), negative=text_conditioning(2, 5))


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(name, batch, cfg):
    model_config, config, shape, tokens = case(name)
    model = build_tiny(model_config, config, seed=3)
    latent = 0.5 * torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))   # FlowRVS starts from it
    reference = ksample(model, latent, seed=5, steps=4, cfg=cfg, **prompts())
    policy = FixedPlanPolicy([None] + [torch.arange(tokens).expand(batch, -1)] * 3)
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    sparse = ksample(patched, latent, seed=5, steps=4, cfg=cfg, **prompts())
    assert (sparse - reference).abs().max().item() <= TOL
    assert [e.dense for e in slot.last_run.evals] == [True, False, False, False]


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(name, batch, cfg):
    model_config, config, shape, tokens = case(name)
    active = random_active(batch, tokens, tokens // 3, seed=1)
    by_stream = dense_then_sparse(build_tiny(model_config, config, seed=4), torch.zeros(batch, *shape), active, cfg,
                                  prompts())
    assert by_stream
    for (dense, _), (sparse, computed) in by_stream.values():
        mask = index_to_mask(computed, tokens)
        assert (sparse - dense).abs().amax(dim=-1)[mask].max().item() <= TOL
        assert torch.equal(sparse[~mask], dense[~mask])
