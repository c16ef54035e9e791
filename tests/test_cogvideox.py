"""CogVideoX (`comfy.ldm.cogvideo.model.CogVideoXTransformer3DModel`, newer ComfyUI) on tiny random-weight instances of
its real ComfyUI class (CPU, fp32): 1.0 with sine position embeddings (2B) and with RoPE (5B), 1.5 with a patch over
two latent frames; joint attention over [text | video]; the exactness set of test_video.py (an odd frame count,
non-square frames), image-to-video by channels, the memory plan, both sampler nodes and both Model Patch nodes, and a
batch of several videos refused clearly."""
import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.families import adapter_for
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from sdit_testkit import build_tiny, ksample, random_active, ras_sample, text_conditioning
from test_memory_plan import sample_patched
from test_ras_sampler import ras_args
from test_video import (assert_within, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end)

if not hasattr(comfy.supported_models, "CogVideoX_T2V"):
    pytest.skip("this ComfyUI has no CogVideoX", allow_module_level=True)

TOL = 1e-5
FRAMES, HEIGHT, WIDTH = 5, 8, 12                 # an odd frame count (1.5 pads it to 6), non-square frames
# ComfyUI's detected CogVideoX configs (model_detection.py), made tiny: 2 blocks of 3 heads of 32 (RoPE over 8 / 12 /
# 12 channels; the sine position embeddings split 96 channels in thirds)
TINY = dict(image_model="cogvideox", num_attention_heads=3, attention_head_dim=32, in_channels=16, out_channels=16,
            time_embed_dim=32, text_embed_dim=32, num_layers=2, patch_size=2, sample_width=12, sample_height=8,
            sample_frames=17)
VARIANTS = {"1.0-sincos": dict(TINY), "1.0-rope": dict(TINY, use_rotary_positional_embeddings=True),
            "1.5": dict(TINY, use_rotary_positional_embeddings=True, patch_size_t=2)}


def tiny_cogvideox(seed, variant="1.0-rope", image_to_video=False):
    config = dict(VARIANTS[variant], in_channels=32) if image_to_video else VARIANTS[variant]
    model_type = comfy.supported_models.CogVideoX_I2V if image_to_video else comfy.supported_models.CogVideoX_T2V
    return build_tiny(model_type, config, seed)


def tokens(variant):
    frames = -(-FRAMES // 2) if variant == "1.5" else FRAMES
    return frames * (HEIGHT // 2) * (WIDTH // 2)


def latent(batch=1):
    return torch.zeros(batch, 16, FRAMES, HEIGHT, WIDTH)


def prompts(**extra):
    """T5 tokens; prompts of different lengths run as two streams at cfg > 1."""
    return dict(positive=text_conditioning(1, 7, 32, **extra), negative=text_conditioning(2, 5, 32, **extra))


def test_cogvideox_is_its_own_adapter():
    for variant in VARIANTS:
        assert adapter_for(tiny_cogvideox(0, variant), "test").names == ("CogVideoX",)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_all_tokens_active_equals_unpatched(variant, cfg):
    run = every_token_active(tiny_cogvideox(3, variant), latent(), cfg, prompts(), tokens(variant), assert_within(TOL))
    assert run.grid == (tokens(variant) // ((HEIGHT // 2) * (WIDTH // 2)), HEIGHT // 2, WIDTH // 2)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_dense_then_sparse_matches_dense_on_active_tokens(variant, cfg):
    """A third of the tokens, in random order."""
    exact_on_a_third_of_the_tokens(tiny_cogvideox(4, variant), latent(), cfg, prompts(), tokens(variant))


def test_image_to_video_by_channels():
    """The start image's latent and the frames' mask enter as channels beside the latent (gathered with the tokens)."""
    image = torch.randn(1, 16, 1, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    conditioning = prompts(concat_latent_image=image)
    model = tiny_cogvideox(6, image_to_video=True)
    assert (ksample(model, latent(), steps=3, cfg=3.0, **conditioning)
            - ksample(model, latent(), steps=3, cfg=3.0, **prompts())).abs().max().item() > 1e-4
    every_token_active(model, latent(), 3.0, conditioning, tokens("1.0-rope"), assert_within(TOL))
    exact_on_a_third_of_the_tokens(model, latent(), 3.0, conditioning, tokens("1.0-rope"))


def test_a_batch_of_videos_running_other_tokens_is_refused_clearly():
    """By the sampler nodes before sampling; under a Model Patch node at the first sparse step."""
    with pytest.raises(SDiTInputError, match=r"RAS Sampler: input 'latent_image'.*batch size 1"):
        ras_sample(tiny_cogvideox(7), latent_image={"samples": latent(2)}, **ras_args(**prompts()))
    n = tokens("1.0-rope")
    policy = FixedPlanPolicy([None, random_active(2, n, n // 3, seed=1)])
    patched, _ = apply_token_sparse(tiny_cogvideox(7), lambda run: policy, node="test")
    with pytest.raises(NotImplementedError, match="batch size 1"):
        ksample(patched, latent(2), steps=3, cfg=3.0, **prompts())


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Joint attention over [text | video] in every block."""
    run = sample_patched(tiny_cogvideox(0, "1.5"), latent(1), cfg, prompts())
    width, layers = 3 * 32, 2
    per_row = {7: 1, 5: 1 if cfg > 1 else 0}                    # text tokens -> rows of that prompt (batch 1)
    expected = sum(layers * rows * (tokens("1.5") + text) * width * 2 * 4 for text, rows in per_row.items())
    assert run.kv_planned_bytes == run.kv_peak_bytes == expected


@pytest.mark.parametrize("variant", ["1.0-rope", "1.5"])
@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method, variant):
    _, _, trace, _ = sampler_node_end_to_end(tiny_cogvideox(8, variant), {"samples": latent(1)}, prompts(), method,
                                             tokens(variant))
    assert trace.batch == 1


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_cogvideox(9), {"samples": latent(1)}, prompts(), assert_within(TOL))


def test_region_visualizer_draws_the_token_frames_of_a_two_frame_patch():
    """CogVideoX 1.5's SDiT trace is over its token frames (5 latent frames -> 3): the visualiser draws each."""
    from comfyui_sdit.nodes.visual_nodes import RegionVisualizer
    from sdit_testkit import sdit_sample
    from test_sdit_sampler import defaults as sdit_defaults
    from test_video import SDIT_END_TO_END
    a = prompts()
    _, trace = sdit_sample(tiny_cogvideox(10, "1.5"), 3, 5, 1.0, "euler", "simple", a["positive"], a["negative"],
                           {"samples": latent()}, 1.0, **sdit_defaults(**SDIT_END_TO_END))
    assert trace.grid == (3, HEIGHT // 2, WIDTH // 2) and trace.steps[-1].labels.shape == (1, 3, HEIGHT // 2, WIDTH // 2)
    images = RegionVisualizer().draw(trace, -1, 0, 0.6)["result"][0]
    frame_px, gap = 2 * 8, 4
    assert images.shape[1] == (HEIGHT // 2) * frame_px and images.shape[2] >= 3 * (WIDTH // 2) * frame_px + 2 * gap
