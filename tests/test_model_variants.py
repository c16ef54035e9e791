"""Models ComfyUI runs on the classes the pack supports, beyond each family's own tests: tiny random-weight
instances of their real ComfyUI classes (CPU, fp32), each where the running ComfyUI has it (skipped on older
ones). An image (and mask) as extra latent channels, concatenated before the patch embedding so they travel
with their tokens: Flux Fill (`FluxInpaint`: image + an 8x8-unshuffled mask), Flux Canny/Depth, Wan Fun
Control; Wan 2.1 / 2.2 Fun Camera (its own class, whose forward adds the camera's features to the embedded
video before the blocks). Newer ComfyUI: LongCat-Image on the Flux class (text with position ids, the image's positions shifted
past the text's through `rope_options`) and Wan FlowRVS on the plain Wan class (image-to-image flow: the
model's output is the prediction), Qwen-Image-Layered (its layers as the frames of a 5-D latent; older ComfyUI
refuses a latent of several frames for Qwen-Image clearly)."""
import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.comfy_compat import flux_unet_config, patchifies_frames
from comfyui_sdit.nodes.errors import SDiTInputError
from sdit_testkit import (TINY_FLUX, TINY_QWEN_IMAGE, TINY_WAN, assert_exact_on_active_tokens, build_tiny,
                          flux_conditioning, random_active, ras_sample, text_conditioning, tiny_qwen_image)
from test_ras_sampler import ras_args
from test_video import assert_within, dense_then_sparse, every_token_active

TOL = 1e-5
HEIGHT, WIDTH = 8, 12


def randn(*shape, seed=3):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def with_values(conditioning, **values):
    return [[text, dict(extra, **values)] for text, extra in conditioning]


def fill_mask():
    mask = torch.zeros(1, 1, 8 * HEIGHT, 8 * WIDTH)          # as InpaintModelConditioning hands it over
    mask[..., 16:48, 24:72] = 1.0                             # repaint a box in the middle
    return mask


def fill_prompts():
    image = randn(1, 16, HEIGHT, WIDTH)
    return dict(positive=with_values(flux_conditioning(1), concat_latent_image=image, concat_mask=fill_mask()),
                negative=with_values(flux_conditioning(2), concat_latent_image=image, concat_mask=fill_mask()))


def control_image_prompts():
    image = randn(1, 16, HEIGHT, WIDTH)
    return dict(positive=with_values(flux_conditioning(1), concat_latent_image=image),
                negative=with_values(flux_conditioning(2), concat_latent_image=image))


def fun_control_prompts():
    video = randn(1, 32, 3, HEIGHT, WIDTH)
    return dict(positive=text_conditioning(1, 7, concat_latent_image=video),
                negative=text_conditioning(2, 5, concat_latent_image=video))


def camera_prompts(mask=False):
    """Wan Fun Camera: the start image by channels (Wan 2.2's with a mask) and the camera's per-pixel Plucker
    features (WanCameraEmbedding: 24 channels a latent frame, at the picture's size)."""
    image, camera = randn(1, 16, 3, HEIGHT, WIDTH), randn(1, 24, 3, 8 * HEIGHT, 8 * WIDTH, seed=4)
    values = dict(concat_latent_image=image, camera_conditions=camera)
    if mask:
        values["concat_mask"] = torch.ones(1, 1, 3, HEIGHT, WIDTH)
    return dict(positive=text_conditioning(1, 7, **values), negative=text_conditioning(2, 5, **values))


def text_prompts():
    return dict(positive=text_conditioning(1, 7), negative=text_conditioning(2, 5))


IMAGE, VIDEO, LAYERS = (16, HEIGHT, WIDTH), (16, 3, HEIGHT, WIDTH), (16, 4, HEIGHT, WIDTH)
CASES = {   # name: (model config class name, unet config, latent shape, prompts)
    "flux-fill": ("FluxInpaint", lambda: flux_unet_config(dict(TINY_FLUX, in_channels=96)), IMAGE, fill_prompts),
    "flux-canny-depth": ("Flux", lambda: flux_unet_config(dict(TINY_FLUX, in_channels=32)), IMAGE,
                         control_image_prompts),
    "wan-fun-control": ("WAN21_FunControl2V", lambda: dict(TINY_WAN, model_type="i2v", in_dim=48), VIDEO,
                        fun_control_prompts),
    "wan-fun-camera": ("WAN21_Camera", lambda: dict(TINY_WAN, model_type="camera", in_dim=32), VIDEO, camera_prompts),
    "wan22-fun-camera": ("WAN22_Camera", lambda: dict(TINY_WAN, model_type="camera_2.2", in_dim=36), VIDEO,
                         lambda: camera_prompts(mask=True)),
    "longcat-image": ("LongCatImage", lambda: flux_unet_config(dict(TINY_FLUX, guidance_embed=False, vec_in_dim=None,
                                                                    txt_ids_dims=[1, 2])), IMAGE, text_prompts),
    "wan-flow-rvs": ("WAN21_FlowRVS", lambda: dict(TINY_WAN, model_type="flow_rvs"), VIDEO, text_prompts),
    "qwen-image-layered": ("QwenImage", lambda: dict(TINY_QWEN_IMAGE, use_additional_t_cond=True), LAYERS,
                           text_prompts),
}


def build(model_config, config, seed):
    """The tiny model, or a skip where this ComfyUI builds it but cannot run it (Qwen-Image with layers)."""
    try:
        model = build_tiny(model_config, config, seed)
    except TypeError as error:                      # a config field this ComfyUI's class does not know
        pytest.skip(f"this ComfyUI's {model_config.__name__} does not take it: {error}")
    if config.get("use_additional_t_cond") and not patchifies_frames(model.model.diffusion_model):
        pytest.skip("this ComfyUI's Qwen-Image takes one frame")
    return model


def case(name):
    class_name, config, shape, prompts = CASES[name]
    model_config = getattr(comfy.supported_models, class_name, None)
    if model_config is None:
        pytest.skip(f"this ComfyUI has no {class_name}")
    frames = shape[1] if len(shape) == 4 else 1     # (channels, frames, height, width) or (channels, height, width)
    return model_config, config(), shape, prompts, frames * (shape[-2] // 2) * (shape[-1] // 2)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(name, batch, cfg):
    model_config, config, shape, prompts, tokens = case(name)
    latent = 0.5 * randn(batch, *shape, seed=1)                # FlowRVS starts from the latent itself
    every_token_active(build(model_config, config, seed=3), latent, cfg, prompts(), tokens, assert_within(TOL))


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(name, batch, cfg):
    model_config, config, shape, prompts, tokens = case(name)
    active = random_active(batch, tokens, tokens // 3, seed=1)
    by_stream = dense_then_sparse(build(model_config, config, seed=4), torch.zeros(batch, *shape), active, cfg,
                                  prompts())
    assert_exact_on_active_tokens(by_stream, tokens)


def test_layers_for_a_qwen_image_that_takes_one_frame_are_refused_before_sampling():
    model = tiny_qwen_image(seed=2)
    if patchifies_frames(model.model.diffusion_model):
        pytest.skip("this ComfyUI's Qwen-Image takes layers (tested above)")
    with pytest.raises(SDiTInputError, match=r"RAS Sampler: input 'latent_image'.*layered ones Qwen-Image on a newer"):
        ras_sample(model, latent_image={"samples": torch.zeros(1, *LAYERS)},
                   **dict(ras_args(), positive=text_conditioning(1, 7), negative=text_conditioning(2, 5)))
