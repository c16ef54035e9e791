"""Z-Image pixel space (`comfy.ldm.lumina.model.NextDiTPixelSpace`, newer ComfyUI) on tiny random-weight instances of
its real ComfyUI class (CPU, fp32): Lumina's noise refiner and joint layers over RGB patches (Z-Image's padding tokens
always run), then a per-patch decoder from each patch's pixels and hidden state; the exactness set of the image
families (a non-square image, batch 2 with CFG), the refusal of reference images, the memory plan, both sampler
nodes and both Model Patch nodes."""
import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import TINY_ZIMAGE, build_tiny, ras_sample, text_conditioning
from test_memory_plan import sample_patched
from test_ras_sampler import ras_args
from test_video import (assert_within, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end)

if not hasattr(comfy.supported_models, "ZImagePixelSpace"):
    pytest.skip("this ComfyUI has no Z-Image pixel space", allow_module_level=True)

TOL = 1e-5
HEIGHT, WIDTH = 8, 12                            # a non-square 8 x 12 pixel image at patch size 2: 24 tokens
TOKENS = (HEIGHT // 2) * (WIDTH // 2)
# Z-Image's tiny config of the other tests on RGB patches, with a decoder of one residual block 32 wide
TINY_ZIMAGE_PIXEL = dict(TINY_ZIMAGE, image_model="zimage_pixel", in_channels=3, decoder_hidden_size=32,
                         decoder_num_res_blocks=1, decoder_max_freqs=4)


def tiny_zimage_pixel(seed):
    return build_tiny(comfy.supported_models.ZImagePixelSpace, TINY_ZIMAGE_PIXEL, seed)


def image(batch=1):
    return torch.zeros(batch, 3, HEIGHT, WIDTH)


def prompts():
    """Prompts of the same length (Z-Image pads both to a multiple): one call, one stream at cfg > 1."""
    return dict(positive=text_conditioning(1, 7), negative=text_conditioning(2, 7))


def test_zimage_pixel_space_is_its_own_adapter():
    assert adapter_for(tiny_zimage_pixel(seed=0), "test").names == ("Z-Image pixel space",)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(batch, cfg):
    run = every_token_active(tiny_zimage_pixel(seed=3), image(batch), cfg, prompts(), TOKENS, assert_within(TOL))
    assert run.grid == (HEIGHT // 2, WIDTH // 2)


def test_dense_then_sparse_matches_dense_on_active_tokens():
    """A third of the patches, in random order (the padding tokens run on every step)."""
    exact_on_a_third_of_the_tokens(tiny_zimage_pixel(seed=4), image(1), 1.0, prompts(), TOKENS)


def test_reference_images_are_refused_before_sampling():
    reference = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    positive = text_conditioning(1, 7, reference_latents=[reference])
    with pytest.raises(SDiTInputError, match="Z-Image pixel space with reference images is not supported"):
        ras_sample(tiny_zimage_pixel(seed=0), latent_image={"samples": image(1)},
                   **dict(ras_args(), positive=positive, negative=prompts()["negative"]))


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_zimage_pixel(seed=7), {"samples": image(2)}, prompts(), method,
                                             TOKENS)
    assert trace.grid == (HEIGHT // 2, WIDTH // 2)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_zimage_pixel(seed=8), {"samples": image(2)}, prompts(), assert_within(TOL))


def test_planned_cache_is_what_the_streams_hold():
    """As Z-Image's: the noise refiner over the image (padded to 32), the joint layers over [caption | image], each
    padded to a multiple of 32."""
    run = sample_patched(tiny_zimage_pixel(seed=0), image(2), 3.0, prompts())
    assert run.kv_planned_bytes == run.kv_peak_bytes > 0
