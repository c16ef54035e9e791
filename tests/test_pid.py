"""PiD, the Pixel Diffusion Decoder (`comfy.ldm.pixeldit.pid.PidNet`, newer ComfyUI), on tiny random-weight instances of
its real class (CPU, fp32): PixelDiT's body with a low-quality latent's features gated into the patch stream before the
MMDiT blocks (v1) and into the pixel blocks' stream too (v1.5, a gate per token). The exactness set of the image
families with batch 1 (a non-square image, two prompts of other lengths: two streams), the features following the
running patches at every gated block, the memory plan, both sampler nodes and both Model Patch nodes, a batch of several
images refused clearly, and the default schedules' 4 dense steps of its 4-step run said."""
import importlib

import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import build_tiny, ras_sample, text_conditioning
from test_memory_plan import sample_patched
from test_pixeldit import COLS, ROWS, TINY_PIXELDIT, TOKENS, image
from test_ras_sampler import ras_args
from test_video import (assert_within, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("comfy.ldm.pixeldit") is None
                                or importlib.util.find_spec("comfy.ldm.pixeldit.pid") is None,
                                reason="this ComfyUI has no PiD")
TOL = 1e-5
# PidNet's config (ComfyUI detects it from the checkpoint), made tiny: PixelDiT's tiny body; a feature gated before each
# of its two MMDiT blocks (lq_interval 1: the second block's is gathered); v1.5 also gates the pixel blocks' stream
VARIANTS = {
    "v1": dict(TINY_PIXELDIT, image_model="pid", lq_hidden_dim=16, lq_num_res_blocks=1, lq_interval=1),
    "v1.5": dict(TINY_PIXELDIT, image_model="pid", lq_hidden_dim=16, lq_num_res_blocks=1, lq_interval=1,
                 lq_conv_padding_mode="replicate", lq_gate_per_token=True, pit_lq_inject=True),
}


def tiny_pid(variant, seed):
    return build_tiny(comfy.supported_models.PiD, VARIANTS[variant], seed)


def prompts():
    """What PiD Conditioning attaches (a 16-channel latent of the image at a quarter of its size in patches, here
    interpolated to the patch grid as the model does, and how degraded it is) to prompts of different lengths."""
    g = torch.Generator().manual_seed(7)
    lq = dict(lq_latent=torch.randn(1, 16, 2, 3, generator=g), degrade_sigma=torch.tensor([0.2]))
    return dict(positive=text_conditioning(1, 11, 32, **lq), negative=text_conditioning(2, 5, 32, **lq))


def test_pid_is_its_own_adapter():
    assert adapter_for(tiny_pid("v1", seed=0), "test").names == ("PiD",)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_all_tokens_active_equals_unpatched(variant, cfg):
    run = every_token_active(tiny_pid(variant, seed=3), image(), cfg, prompts(), TOKENS, assert_within(TOL))
    assert run.grid == (ROWS, COLS)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_dense_then_sparse_matches_dense_on_active_tokens(variant, cfg):
    """A third of the patches, in random order: each gated block's feature, and v1.5's pixel-stream feature, of those
    patches; both kinds of blocks read the others' keys and values from the K/V cache."""
    exact_on_a_third_of_the_tokens(tiny_pid(variant, seed=4), image(), cfg, prompts(), TOKENS)


def test_a_batch_of_images_is_refused_before_sampling():
    with pytest.raises(SDiTInputError, match=r"RAS Sampler: input 'latent_image'.*PiD.*batch size 1"):
        ras_sample(tiny_pid("v1", seed=7), latent_image={"samples": image(2)}, **ras_args(**prompts()))


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    run = sample_patched(tiny_pid("v1.5", seed=0), image(), cfg, prompts())
    assert run.kv_peak_bytes > 0 and run.kv_planned_bytes == run.kv_peak_bytes


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_pid("v1.5", seed=8), {"samples": image()}, prompts(), method, TOKENS)
    assert trace.grid == (ROWS, COLS) and trace.batch == 1


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_pid("v1", seed=9), {"samples": image()}, prompts(), assert_within(TOL))


def test_its_four_step_run_under_the_default_schedule_is_dense_and_said(caplog):
    """PiD decodes in 4 distilled steps: RAS's default warm-up (4 steps) takes them all; with a warm-up of 1 the
    other three run sparse."""
    from comfyui_sdit.sdit_core.ras import RASConfig
    d = RASConfig()
    a = ras_args(steps=4, cfg=1.0, warmup_steps=d.warmup_steps, reset_steps=", ".join(map(str, d.reset_steps)),
                 **prompts())
    with caplog.at_level("WARNING"):
        _, trace = ras_sample(tiny_pid("v1", seed=5), latent_image={"samples": image()}, **a)
    assert all(s.dense for s in trace.steps) and "every step of this 4-step run dense (4 warm-up)" in caplog.text
    _, trace = ras_sample(tiny_pid("v1", seed=5), latent_image={"samples": image()},
                          **dict(a, warmup_steps=1, reset_steps=""))
    assert [s.dense for s in trace.steps] == [True, False, False, False]
