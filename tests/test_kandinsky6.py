"""Kandinsky 6 (`comfy.ldm.kandinsky6.model.Kandinsky6NativeAVDiT`, newest ComfyUI) on tiny random-weight instances of
its real class (CPU, fp32): the video and its audio sampled together as one latent of two parts (Kandinsky 6 Empty
Latent's layout), the video's tokens sparse, the audio's always running and attending to every video token's keys
through the K/V cache. The exactness set of test_video.py (an odd frame count, non-square frames) on both parts, with
the model's cross-attention rotated and gated as released and in its other configurations; image-to-video through
Kandinsky 6 Image to Video+Audio (a reference frame after the generated ones, kept by a noise mask); the memory plan;
both sampler nodes and both Model Patch nodes; what is refused clearly. The search index has the model's file and the
nodes' but no `model_base` part for it: a stand-in hands the model the pooled prompt (`y`), the latent's parts and the
reference flag. Skipped where ComfyUI has no Kandinsky 6."""
import importlib.util
import inspect

import pytest
import torch

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.nested_tensor
import comfy.supported_models_base

from comfyui_sdit.nodes.families import adapter_for
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
import av_sampling
from av_sampling import assert_parts_within, outputs
from sdit_testkit import (assert_exact_on_active_tokens, build_tiny, random_active, ras_model_patch, ras_sample,
                          text_conditioning)
from test_ras_sampler import ras_args

pytestmark = pytest.mark.skipif(importlib.util.find_spec("comfy.ldm.kandinsky6") is None,
                                reason="this ComfyUI has no Kandinsky 6")
TOL = 2e-5
FRAMES, HEIGHT, WIDTH = 3, 6, 8              # latent frames and pixels (9 frames of 48x64 pixels)
TOKENS = FRAMES * (HEIGHT // 2) * (WIDTH // 2)
FPS = 24.0
AUDIO_TOKENS = 17                            # 9 frames at 24 fps, 44.1 kHz, 1024 samples a token (the node's count)
AUDIO_CHANNELS = 40
TINY_K6 = dict(image_model="kandinsky6", in_visual_dim=16, out_visual_dim=16, in_audio_dim=AUDIO_CHANNELS,
               in_text_dim=32, in_text_dim2=32, time_dim=32, model_dim=64, ff_dim=128, time_dim_a=32, model_dim_a=32,
               ff_dim_a=64, head_dim_a=16, visual_embed_dim=(2 * 16 + 1) * 4, patch_size=(1, 2, 2),
               num_text_blocks=1, num_visual_blocks=2, axes_dims=(8, 4, 4), visual_token_type_num_embeddings=2)
# the released configuration (cross-attention rotated, its gates crossed) and the others the class takes
MODELS = {"as released": {}, "plain cross-attention": dict(cross_gates=False, fix_modulation=False, ca_rope=False)}


class Kandinsky6StandIn(comfy.model_base.BaseModel):
    """model_base's part of Kandinsky 6 (not in the search index): a flow model handing the diffusion model the pooled
    prompt as `y`, the latent's parts (ComfyUI unpacks them for the model) and the image-to-video reference flag."""

    def __init__(self, model_config, model_type=comfy.model_base.ModelType.FLOW, device=None):
        k6 = importlib.import_module("comfy.ldm.kandinsky6.model")
        super().__init__(model_config, model_type, device=device, unet_model=k6.Kandinsky6NativeAVDiT)

    def encode_adm(self, **kwargs):
        return kwargs.get("pooled_output")

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        for name in ("latent_shapes", "k6_reference_tail"):
            if kwargs.get(name) is not None:
                out[name] = comfy.conds.CONDConstant(kwargs[name])
        if kwargs.get("k6_reference") is not None:          # the other form's start image, one per row
            out["k6_reference"] = comfy.conds.CONDRegular(kwargs["k6_reference"])
        return out


class TinyKandinsky6Config(comfy.supported_models_base.BASE):
    unet_config = {"image_model": "kandinsky6"}
    unet_extra_config = {}
    sampling_settings = {"shift": 1.0}
    latent_format = comfy.latent_formats.LatentFormat       # scale 1: the packed latent of two parts as it is
    supported_inference_dtypes = [torch.float32]

    def get_model(self, state_dict, prefix="", device=None):
        return Kandinsky6StandIn(self, device=device)


def tiny_k6(seed, **overrides):
    return build_tiny(TinyKandinsky6Config, dict(TINY_K6, **overrides), seed)


def joint_latent(batch=1):
    """What Kandinsky 6 Empty Latent makes (at a size below its inputs' minimum): an empty video and its audio as one
    latent of two parts."""
    video = torch.zeros(batch, 16, FRAMES, HEIGHT, WIDTH)
    audio = torch.zeros(batch, AUDIO_TOKENS, AUDIO_CHANNELS)
    return {"samples": comfy.nested_tensor.NestedTensor((video, audio)), "frame_rate": FPS, "sample_rate": 44100}


def prompts(**values):
    """Prompts of different lengths (two streams at cfg > 1), each with its pooled vector."""
    g = torch.Generator().manual_seed(7)
    return dict(positive=text_conditioning(1, 7, pooled_output=torch.randn(1, 32, generator=g), **values),
                negative=text_conditioning(2, 5, pooled_output=torch.randn(1, 32, generator=g), **values))


def image_to_video():
    """Kandinsky 6 Image to Video+Audio (ComfyUI's node) with a start image's latent: (conditioning, the latent with
    the reference frame after the generated ones and the noise mask that keeps it)."""
    node = importlib.import_module("comfy_extras.nodes_kandinsky6").Kandinsky6ImageToVideoAudio()
    reference = {"samples": torch.randn(1, 16, 1, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))}
    conditioning = prompts()
    positive, negative, latent = outputs(node.apply(conditioning["positive"], conditioning["negative"], joint_latent(),
                                                    reference))
    return dict(positive=positive, negative=negative), latent


def appends_its_reference() -> bool:
    """The form of the model (Comfy-Org 4ab48ce) that appends the start image's latent itself (`k6_reference`, a
    condition) after the video's frames and cuts it from its output; the other form (0b61ce5) finds it in the latent,
    where Kandinsky 6 Image to Video+Audio puts it."""
    k6 = importlib.import_module("comfy.ldm.kandinsky6.model")
    return "k6_reference" in inspect.signature(k6.Kandinsky6NativeAVDiT._forward).parameters


REFERENCE_TOKENS = (HEIGHT // 2) * (WIDTH // 2)      # one frame


def with_reference():
    """Prompts carrying the start image's latent for the form of the model that appends it itself."""
    return prompts(k6_reference=torch.randn(1, 16, 1, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4)))


def sample(model, cfg, latent=None, conditioning=None, steps=4, seed=5):
    return av_sampling.sample(model, latent or joint_latent(), cfg, conditioning or prompts(), steps, seed)


def test_kandinsky6_is_its_own_adapter():
    model = tiny_k6(seed=0)
    assert adapter_for(model, "test").names == ("Kandinsky 6",)
    video, audio = av_sampling.sample(model, joint_latent(), 1.0, prompts(), steps=1)
    assert video.shape == (1, 16, FRAMES, HEIGHT, WIDTH) and audio.shape == (1, AUDIO_TOKENS, AUDIO_CHANNELS)


@pytest.mark.parametrize("config", MODELS)
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_all_tokens_active_equals_unpatched(cfg, config):
    """Every video token through the sparse path after a dense first step: the video and the audio as without the
    pack."""
    model = tiny_k6(seed=3, **MODELS[config])
    reference = sample(model, cfg)
    policy = FixedPlanPolicy([None] + [torch.arange(TOKENS)[None]] * 3)
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    assert_parts_within(sample(patched, cfg), reference, TOL)
    assert [e.dense for e in slot.last_run.evals] == [True, False, False, False]
    assert slot.last_run.grid == (FRAMES, HEIGHT // 2, WIDTH // 2)


@pytest.mark.parametrize("config", MODELS)
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_dense_then_sparse_matches_dense_on_active_tokens_and_the_whole_audio(cfg, config):
    """A third of the video tokens (random order): they equal the dense forward's, and so does all of the audio,
    whose queries saw every video token's keys (the others' from the cache, though this form of the model calls that
    attention without ComfyUI's options)."""
    by_stream, audio = av_sampling.dense_then_sparse(tiny_k6(seed=4, **MODELS[config]), joint_latent(),
                                                     random_active(1, TOKENS, TOKENS // 3, seed=1), cfg, prompts(),
                                                     AUDIO_CHANNELS * AUDIO_TOKENS)
    assert len(by_stream) == (2 if cfg > 1 else 1)
    assert_exact_on_active_tokens(by_stream, TOKENS, tol=TOL)
    dense, sparse = audio
    assert dense.abs().max().item() > 0.1
    assert (sparse - dense).abs().max().item() <= TOL


def test_a_batch_of_two_videos_with_their_own_tokens():
    """Two videos in one batch, each running its own third of the tokens (cfg 3: four rows)."""
    active = torch.cat([random_active(1, TOKENS, TOKENS // 3, seed=s) for s in (1, 2)])
    by_stream, audio = av_sampling.dense_then_sparse(tiny_k6(seed=5), joint_latent(batch=2), active, 3.0, prompts(),
                                                     AUDIO_CHANNELS * AUDIO_TOKENS)
    assert_exact_on_active_tokens(by_stream, TOKENS, tol=TOL)
    dense, sparse = audio
    assert (sparse - dense).abs().max().item() <= TOL


def test_image_to_video_keeps_its_reference_frame_and_never_runs_it_sparse():
    if appends_its_reference():
        pytest.skip("this form of the model takes its start image as a condition (the next tests)")
    """Kandinsky 6 Image to Video+Audio puts the start image's latent after the generated frames, kept by a noise
    mask: every token active equals the model's own sampling; under RAS only the generated frames' tokens are ever
    picked (the reference frame's keys come from the cache), and the reference frame comes out as it went in (to ComfyUI's rounding of the mask)."""
    conditioning, latent = image_to_video()
    model = tiny_k6(seed=6)
    frames = FRAMES + 1
    tokens = frames * (HEIGHT // 2) * (WIDTH // 2)
    reference = av_sampling.sample(model, latent, 3.0, conditioning)
    policy = FixedPlanPolicy([None] + [torch.arange(tokens)[None]] * 3)
    patched, _ = apply_token_sparse(model, lambda run: policy, node="test")
    assert_parts_within(av_sampling.sample(patched, latent, 3.0, conditioning), reference, TOL)
    out, trace = ras_sample(model, latent_image=latent, **ras_args(steps=6, cfg=3.0, sample_ratio=0.3,
                                                                    reset_steps="", **conditioning))
    assert trace.grid == (frames, HEIGHT // 2, WIDTH // 2)
    assert any(0 < t < tokens for t in trace.tokens_per_step), trace.tokens_per_step
    generated = FRAMES * (HEIGHT // 2) * (WIDTH // 2)
    for step in trace.steps:
        if not step.dense:
            assert int(step.active.max()) < generated
    video = out["samples"].unbind()[0]
    assert (video[:, :, -1] - latent["samples"].unbind()[0][:, :, -1]).abs().max().item() <= 1e-6


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_a_reference_the_model_appends_always_runs(cfg):
    """The start image's latent as a condition, which that form of the model appends after the video's frames (its
    tokens the engine's extra tokens, running on every step): every token active equals the model's own sampling, a
    sparse step after a dense one is exact on the running tokens and the whole audio."""
    if not appends_its_reference():
        pytest.skip("this form of the model finds its start image in the latent (the test before)")
    model = tiny_k6(seed=7)
    reference = sample(model, cfg, conditioning=with_reference())
    policy = FixedPlanPolicy([None] + [torch.arange(TOKENS)[None]] * 3)
    patched, _ = apply_token_sparse(model, lambda run: policy, node="test")
    assert_parts_within(sample(patched, cfg, conditioning=with_reference()), reference, TOL)
    by_stream, audio = av_sampling.dense_then_sparse(model, joint_latent(), random_active(1, TOKENS, TOKENS // 3, seed=1),
                                                     cfg, with_reference(), AUDIO_CHANNELS * AUDIO_TOKENS)
    assert_exact_on_active_tokens(by_stream, TOKENS, tol=TOL)
    dense, sparse = audio
    assert (sparse - dense).abs().max().item() <= TOL


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Per fused block the video's self-attention and the audio's attention to the video: every video token's keys."""
    policy = FixedPlanPolicy([None] + [torch.arange(8)[None]] * 3)
    patched, slot = apply_token_sparse(tiny_k6(seed=0), lambda run: policy, node="test")
    sample(patched, cfg)
    run = slot.last_run
    rows = 1 if cfg == 1.0 else 2
    per_token = 2 * (TINY_K6["model_dim"] + TINY_K6["model_dim_a"])     # 2 fused blocks
    assert run.kv_planned_bytes == run.kv_peak_bytes == rows * TOKENS * per_token * 2 * 4
    if appends_its_reference():         # its start image's tokens too
        patched, slot = apply_token_sparse(tiny_k6(seed=0), lambda run: policy, node="test")
        sample(patched, cfg, conditioning=with_reference())
        run = slot.last_run
        assert run.kv_planned_bytes == run.kv_peak_bytes == rows * (TOKENS + REFERENCE_TOKENS) * per_token * 2 * 4


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    av_sampling.sampler_node_end_to_end(tiny_k6(seed=9), joint_latent(), prompts(), method,
                                        (FRAMES, HEIGHT // 2, WIDTH // 2), TOKENS)


def test_model_patch_nodes_under_ksampler():
    av_sampling.model_patch_nodes_under_ksampler(tiny_k6(seed=10), joint_latent(), prompts(), TOL)


class StandInMagCache:
    """What the model asks of its MagCache state (`k6_magcache` in the options): never skip."""

    def begin(self, **kwargs):
        return type("Decision", (), {"skip": False})()

    def record_computed(self, *args):
        pass


def test_magcache_and_a_replaced_last_block_are_refused_clearly():
    """The model's own MagCache skips every block on steps of its choosing, and a node replacing the last fused block
    keeps it from handing back every token's row: each stops with an error naming it."""
    model = tiny_k6(seed=11).clone()
    model.model_options["transformer_options"]["k6_magcache"] = StandInMagCache()
    sample(model, 1.0, steps=1)                    # the model alone takes it
    with pytest.raises(NotImplementedError, match="MagCache"):
        sample(ras_model_patch(model, 0.3, 1, "", 0.1, "std", False)[0], 1.0)
    model = tiny_k6(seed=11).clone()
    model.set_model_patch_replace(lambda args, extra: extra["original_block"](args), "dit", "double_block", 1)
    with pytest.raises(NotImplementedError, match="last fused block"):
        sample(ras_model_patch(model, 0.3, 1, "", 0.1, "std", False)[0], 3.0)
