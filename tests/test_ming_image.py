"""Ming-Image (newer ComfyUI, 0.38+: Z-Image's `NextDiT` configured as `image_model="ming_image"`) on tiny random-weight
instances of the real class (CPU, fp32). What differs from Z-Image: no learned padding (the caption's length is only
rounded up for the image's positions, `masked_pad_multiple`), a latent with a frame axis (Wan 2.1 VAE latents: one
frame, or Ming-Image-Layer's composite and layers as frames), `direct_context` tokens appended to the caption, and
reference latents as clean frames after the target's tokens (`ref_frames`, which run on every step). The exactness
set on one frame and on several (the layers), with each of those inputs, the memory plan, both sampler nodes and
both Model Patch nodes. Skipped where the running ComfyUI has no Ming-Image."""
import pytest
import torch

import comfy.supported_models

from sdit_testkit import TINY_ZIMAGE, build_tiny, text_conditioning
from test_memory_plan import sample_patched
from test_video import (assert_within, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end)

if not hasattr(comfy.supported_models, "MingImage"):
    pytest.skip("this ComfyUI has no Ming-Image", allow_module_level=True)

TOL = 1e-5
HEIGHT, WIDTH = 8, 12                            # a non-square latent: 4 x 6 tokens a frame
GRID = (HEIGHT // 2) * (WIDTH // 2)
TINY_MING = {k: v for k, v in dict(TINY_ZIMAGE, image_model="ming_image", masked_pad_multiple=32).items()
             if k != "pad_tokens_multiple"}     # Ming-Image Design has no learned pad tokens


def tiny_ming(seed: int):
    return build_tiny(comfy.supported_models.MingImage, TINY_MING, seed)


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def latent(batch=1, frames=1):
    return torch.zeros(batch, 16, frames, HEIGHT, WIDTH)


def prompts(direct=False, reference=False):
    """Prompts of different lengths (two streams at cfg > 1); `direct`: the text encoder's direct tokens (at the
    model's width) for the caption's end; `reference`: an edit's reference latent of another size (two frames)."""
    values = {}
    if direct:
        values["direct_context"] = randn(1, 3, TINY_MING["dim"], seed=11)
    if reference:
        values["reference_latents"] = [randn(1, 16, 2, 4, 8, seed=12)]
    return dict(positive=text_conditioning(1, 7, **values), negative=text_conditioning(2, 5, **values))


REFERENCE_TOKENS = 2 * (4 // 2) * (8 // 2)      # its two frames' tokens, after the target's
CASES = {"text": {}, "direct context": dict(direct=True), "reference": dict(reference=True),
         "both": dict(direct=True, reference=True)}


def test_ming_image_is_sampled_by_the_lumina_adapter():
    from comfyui_sdit.nodes.families import adapter_for
    model = tiny_ming(seed=0)
    assert model.model.diffusion_model.masked_pad_multiple == 32
    assert "Z-Image" in adapter_for(model, "test").names


@pytest.mark.parametrize("name", ["direct context", "reference"])
def test_each_input_changes_the_image(name):
    from sdit_testkit import ksample
    model = tiny_ming(seed=4)
    plain = ksample(model, latent(), seed=5, steps=3, **prompts())
    assert (ksample(model, latent(), seed=5, steps=3, **prompts(**CASES[name])) - plain).abs().max().item() > 1e-3


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(case, batch, cfg):
    every_token_active(tiny_ming(seed=3), latent(batch), cfg, prompts(**CASES[case]), GRID, assert_within(TOL))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(case, batch, cfg):
    """A third of the tokens, in random order and different per image; the reference's frames run every step."""
    extra = REFERENCE_TOKENS if CASES[case].get("reference") else 0
    exact_on_a_third_of_the_tokens(tiny_ming(seed=4), latent(batch), cfg, prompts(**CASES[case]), GRID, extra=extra)


LAYERS = 3                                       # Ming-Image-Layer: a composite and two layers, as frames


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_layers_all_tokens_active_equals_unpatched(batch, cfg):
    every_token_active(tiny_ming(seed=5), latent(batch, LAYERS), cfg, prompts(direct=True), LAYERS * GRID,
                       assert_within(TOL))


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_layers_dense_then_sparse_matches_dense_on_active_tokens(batch, cfg):
    """The tokens numbered (layer, row, column) as the model embeds them; a third of them run, others per image."""
    exact_on_a_third_of_the_tokens(tiny_ming(seed=6), latent(batch, LAYERS), cfg, prompts(reference=True),
                                   LAYERS * GRID, extra=REFERENCE_TOKENS)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """The noise refiner over [image | reference frames], the joint layers over [caption | direct tokens | image |
    reference frames], nothing padded."""
    run = sample_patched(tiny_ming(seed=0), latent(2), cfg, prompts(direct=True, reference=True))
    layers = TINY_MING["n_refiner_layers"] + TINY_MING["n_layers"]
    streams = [7] + ([5] if cfg > 1 else [])
    expected = sum(2 * 4 * TINY_MING["dim"] * 2 * (
        TINY_MING["n_refiner_layers"] * (GRID + REFERENCE_TOKENS)
        + TINY_MING["n_layers"] * (text + 3 + GRID + REFERENCE_TOKENS)) for text in streams)
    assert layers and run.kv_planned_bytes == run.kv_peak_bytes == expected


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_ming(seed=7), {"samples": latent(2)}, prompts(direct=True), method,
                                             GRID)
    assert trace.grid == (HEIGHT // 2, WIDTH // 2)


def test_sampler_node_on_layers():
    _, _, trace, _ = sampler_node_end_to_end(tiny_ming(seed=9), {"samples": latent(2, LAYERS)}, prompts(), "SDiT",
                                             LAYERS * GRID)
    assert trace.grid == (LAYERS, HEIGHT // 2, WIDTH // 2)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_ming(seed=8), {"samples": latent(2)}, prompts(reference=True),
                                     assert_within(TOL))


def test_z_image_pixel_space_still_refuses_frames():
    """Z-Image pixel space shares the newer `unpatchify` but its own `_forward` takes an image latent only: a latent
    of several frames gets the clear error before sampling."""
    from comfyui_sdit.nodes.errors import SDiTInputError
    from sdit_testkit import ras_sample
    from test_ras_sampler import ras_args
    from test_zimage_pixel import prompts as pixel_prompts, tiny_zimage_pixel
    with pytest.raises(SDiTInputError, match="RAS Sampler: input 'latent_image'.*an image latent"):
        ras_sample(tiny_zimage_pixel(seed=0), latent_image={"samples": torch.zeros(1, 3, 3, 32, 32)},
                   **ras_args(**pixel_prompts()))
