"""The other models ComfyUI 0.3.75 runs on the HunyuanVideo class (`comfy.ldm.hunyuan_video.model.HunyuanVideo`),
each a tiny random-weight instance of its real ComfyUI class (CPU, fp32): HunyuanVideo image-to-video by
channels (and SkyReels'), HunyuanVideo 1.5 (a CLIP-vision image's tokens and ByT5 glyph tokens joined to
the text, image channels, a padded prompt mask, the meanflow step input, the super-resolution model) and
HunyuanImage 2.1 (image latents with a 2-D patch) with its refiner. The same exactness set as
test_video.py's HunyuanVideo, the memory plan and the sampler nodes."""
import importlib
import math
import types

import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.comfy_compat import hunyuan_video_unet_config
from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.visual_nodes import ComplexityMap, RegionVisualizer
from sdit_testkit import TINY_HUNYUAN_VIDEO, build_tiny, ras_sample, text_conditioning
from test_memory_plan import sample_patched
from test_ras_sampler import ras_args
from test_video import assert_within, every_token_active, exact_on_a_third_of_the_tokens, sampler_node_end_to_end

comfy_nodes = importlib.import_module("nodes")   # ComfyUI's nodes.py
TOL = 1e-5
FRAMES, HEIGHT, WIDTH = 3, 8, 12

# 1.5: no pooled vector and no guidance input, patch 1 in every axis; the image (32 channels) and a mask
# concatenated to the 32-channel latent (65 in); `byt5_in` maps 1472-wide glyph features
HV15 = dict(TINY_HUNYUAN_VIDEO, in_channels=65, out_channels=32, vec_in_dim=None, patch_size=[1, 1, 1],
            guidance_embed=False, vision_in_dim=16, use_cond_type_embedding=True, byt5=True)
HI21 = dict(TINY_HUNYUAN_VIDEO, in_channels=64, out_channels=64, vec_in_dim=None, patch_size=[1, 1], axes_dim=[8, 8],
            byt5=True)


def prompts(**values):
    """A positive and a negative prompt of different lengths (two streams at cfg > 1) with these values."""
    g = torch.Generator().manual_seed(11)
    pooled = dict(pooled_output=torch.randn(1, 32, generator=g))
    return dict(positive=text_conditioning(1, 7, **pooled, **values),
                negative=text_conditioning(2, 5, **pooled, **values))


def randn(*shape, seed=3):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def glyphs():
    """ByT5 glyph features (the text encoder's `conditioning_byt5small`), 6 tokens."""
    return randn(1, 6, 1472, seed=4)


def hv15_i2v():
    vision = types.SimpleNamespace(last_hidden_state=randn(1, 9, 16))        # a CLIP-vision image, 9 tokens
    return prompts(clip_vision_output=vision, concat_latent_image=randn(1, 32, FRAMES, HEIGHT, WIDTH),
                   conditioning_byt5small=glyphs())


def hv15_t2v_padded():
    """The prompt mask of a padded prompt (the last two tokens are padding)."""
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    return dict(positive=text_conditioning(1, 7, pooled_output=randn(1, 32), attention_mask=mask),
                negative=text_conditioning(2, 7, pooled_output=randn(1, 32), attention_mask=mask))


class Case:
    def __init__(self, model_config, config, channels, make_prompts, frames=FRAMES, patch=2):
        self.model_config, self.config, self.make_prompts = model_config, config, make_prompts
        self.shape = (channels, HEIGHT, WIDTH) if frames is None else (channels, frames, HEIGHT, WIDTH)
        self.grid = ((frames,) if frames and frames > 1 else ()) + (HEIGHT // patch, WIDTH // patch)
        self.tokens = math.prod(self.grid)

    def build(self, seed):
        return build_tiny(self.model_config, hunyuan_video_unet_config(self.config), seed)

    def latent(self, batch):
        return torch.zeros(batch, *self.shape)


MODELS = comfy.supported_models
CASES = {
    "hunyuan-video-i2v": Case(MODELS.HunyuanVideoI2V, dict(TINY_HUNYUAN_VIDEO, in_channels=33), 16, lambda: prompts(
        guidance=3.5, concat_latent_image=randn(1, 16, FRAMES, HEIGHT, WIDTH),
        concat_mask=torch.ones(1, 1, FRAMES, HEIGHT, WIDTH))),
    "skyreels-i2v": Case(MODELS.HunyuanVideoSkyreelsI2V, dict(TINY_HUNYUAN_VIDEO, in_channels=32), 16, lambda: prompts(
        guidance=3.5, concat_latent_image=randn(1, 16, FRAMES, HEIGHT, WIDTH))),
    "hunyuan-video-1.5-i2v": Case(MODELS.HunyuanVideo15, HV15, 32, hv15_i2v, patch=1),
    "hunyuan-video-1.5-t2v-padded-prompt": Case(MODELS.HunyuanVideo15, HV15, 32, hv15_t2v_padded, patch=1),
    "hunyuan-video-1.5-meanflow": Case(MODELS.HunyuanVideo15, dict(HV15, meanflow=True), 32,
                                       lambda: prompts(conditioning_byt5small=glyphs()), patch=1),
    "hunyuan-video-1.5-sr": Case(MODELS.HunyuanVideo15_SR_Distilled, dict(HV15, in_channels=98), 32, prompts, patch=1),
    "hunyuan-image-2.1": Case(MODELS.HunyuanImage21, HI21, 64, lambda: prompts(conditioning_byt5small=glyphs()),
                              frames=None, patch=1),
    "hunyuan-image-2.1-refiner": Case(MODELS.HunyuanImage21Refiner, dict(HI21, in_channels=128, patch_size=[1, 1, 1],
                                                                         axes_dim=[4, 6, 6]),
                                      64, lambda: prompts(concat_latent_image=randn(1, 32, 1, HEIGHT, WIDTH)), frames=1,
                                      patch=1),
}
# a padded prompt mask is one row: ComfyUI's HunyuanVideo 1.5 forward takes it at batch 1 only
BATCHES = {name: [(1, 1.0)] if "padded" in name else [(1, 1.0), (2, 3.0)] for name in CASES}
BATCH_CASES = [(name, batch, cfg) for name in sorted(CASES) for batch, cfg in BATCHES[name]]


@pytest.mark.parametrize("name,batch,cfg", BATCH_CASES)
def test_all_tokens_active_equals_unpatched(name, batch, cfg):
    case = CASES[name]
    run = every_token_active(case.build(seed=3), case.latent(batch), cfg, case.make_prompts(), case.tokens,
                             assert_within(TOL))
    assert run.grid == case.grid


@pytest.mark.parametrize("name,batch,cfg", BATCH_CASES)
def test_dense_then_sparse_matches_dense_on_active_tokens(name, batch, cfg):
    case = CASES[name]
    by_stream = exact_on_a_third_of_the_tokens(case.build(seed=4), case.latent(batch), cfg, case.make_prompts(),
                                               case.tokens)
    assert all(computed.shape == (batch, case.tokens // 3) for _, (_, computed) in by_stream.values())


@pytest.mark.parametrize("name", sorted(CASES))
def test_planned_cache_is_what_the_streams_hold(name):
    """The memory plan counts the tokens these models join to the text (CLIP-vision, ByT5 glyphs)."""
    case = CASES[name]
    batch, cfg = BATCHES[name][-1]
    run = sample_patched(case.build(seed=0), case.latent(batch), cfg, case.make_prompts())
    assert run.kv_peak_bytes > 0
    assert run.kv_planned_bytes == run.kv_peak_bytes


@pytest.mark.parametrize("name", ["hunyuan-video-1.5-i2v", "hunyuan-image-2.1"])
@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method, name):
    case = CASES[name]
    latent = {"samples": case.latent(2)}
    _, samples, trace, _ = sampler_node_end_to_end(case.build(seed=7), latent, case.make_prompts(), method, case.tokens)
    out = {"samples": samples}
    assert trace.grid == case.grid
    if method == "SDiT":
        assert trace.steps[-1].labels.shape == (2, *case.grid)
    # maps at the picture's size: these VAEs downscale by 16 / 32 (where ComfyUI's latent formats say so)
    import comfy.latent_formats
    says = hasattr(comfy.latent_formats.LatentFormat, "spacial_downscale_ratio")
    pixels = {"hunyuan-video-1.5-i2v": 16, "hunyuan-image-2.1": 32}[name] if says else 8
    assert trace.pixels_per_latent == pixels
    drawn = RegionVisualizer().draw(trace, -1, 0, 0.6)["result"][0]
    assert drawn.shape[1] == HEIGHT * pixels                  # patch 1: a token is a latent pixel
    _, masks = ComplexityMap().compute(out, 1, 0.5, 1.0, 0.5, -1, 0, region_trace=trace)["result"]
    assert masks.shape[-2:] == (HEIGHT * pixels, WIDTH * pixels)


def test_hunyuan_image_refuses_a_video_latent_before_sampling():
    """HunyuanImage 2.1 patchifies in 2-D: a latent of several frames is named, not a shape error in a block."""
    case = CASES["hunyuan-image-2.1"]
    with pytest.raises(SDiTInputError, match=r"RAS Sampler: input 'latent_image'.*video latents need a video model"):
        ras_sample(case.build(seed=1), latent_image={"samples": torch.zeros(1, 64, FRAMES, HEIGHT, WIDTH)},
                   **dict(ras_args(), **case.make_prompts()))
