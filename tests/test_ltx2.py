"""LTX-2 (`comfy.ldm.lightricks.av_model.LTXAVModel`, newer ComfyUI) on tiny random-weight instances of its real class
(CPU, fp32): video and audio sampled together as one latent of two parts (ComfyUI's NestedTensor, made by its own
LTXVConcatAVLatent node); the video's tokens sparse, the audio's always running and attending to every video token's
keys through the K/V cache. The exactness set of test_video.py (an odd frame count, non-square frames) on both
parts, image-to-video through LTXVImgToVideo, the memory plan, both sampler nodes and both Model Patch nodes, and
context windows refused clearly."""
import importlib

import pytest
import torch

import comfy.samplers
import comfy.supported_models

from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.families import adapter_for
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
import av_sampling
from av_sampling import assert_parts_within, noise_for, outputs
from sdit_testkit import (assert_exact_on_active_tokens, build_tiny, random_active, ras_model_patch, ras_sample,
                          text_conditioning)
from test_ras_sampler import ras_args
from test_ltxv import (FRAMES, HEIGHT, PIXELS, TOKENS, TOL, WIDTH, StandInVAE, guide_masks_built,  # its video's sizes
                       image)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("comfy.ldm.lightricks.av_model") is None,
                                reason="this ComfyUI has no LTX-2")
comfy_nodes = importlib.import_module("nodes")   # ComfyUI's nodes.py
nodes_lt = importlib.import_module("comfy_extras.nodes_lt")
AUDIO_FRAMES = 7                                 # the audio latent: (batch, 8 channels, frames, 16 frequency bins)
# ComfyUI's LTX-2 config (model_detection.py), made tiny: the text arrives projected for both streams (the video's
# and the audio's halves side by side), the audio's heads as wide as its cross-attention RoPE
TINY_LTX2 = dict(image_model="ltxav", in_channels=128, num_layers=2, attention_head_dim=16, num_attention_heads=4,
                 cross_attention_dim=64, caption_channels=32, audio_in_channels=128, audio_attention_head_dim=8,
                 audio_num_attention_heads=4, audio_cross_attention_dim=32,
                 # its text connectors (unused: the text arrives processed) small (the defaults: 2.6 GB of fp32)
                 connector_attention_head_dim=8, connector_num_attention_heads=4, connector_num_layers=1)


def tiny_ltx2(seed):
    return build_tiny(comfy.supported_models.LTXAV, TINY_LTX2, seed)


def av_latent(batch=1, video=None):
    """ComfyUI's LTXVConcatAVLatent over an empty LTX-Video latent (or `video`, a LATENT) and an audio latent."""
    video = video if video is not None else outputs(nodes_lt.EmptyLTXVLatentVideo.execute(batch_size=batch,
                                                                                          **PIXELS))[0]
    audio = {"samples": torch.zeros(batch, 8, AUDIO_FRAMES, 16), "type": "audio"}
    return outputs(nodes_lt.LTXVConcatAVLatent.execute(video_latent=video, audio_latent=audio))[0]


def prompts():
    """Projected text for both streams (2 x caption_channels); prompts of different lengths run as two streams."""
    return dict(positive=text_conditioning(1, 7, 64), negative=text_conditioning(2, 5, 64))


def sample(model, latent: dict, cfg, steps=4, seed=5, conditioning=None):
    """ComfyUI's sampling over the video and audio latent: (video, audio)."""
    return av_sampling.sample(model, latent, cfg, conditioning or prompts(), steps, seed)


def test_ltx2_is_its_own_adapter():
    assert adapter_for(tiny_ltx2(seed=0), "test").names == ("LTX-2",)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(batch, cfg):
    """Every video token through the sparse path after a dense first step: the video and the audio as without the
    pack."""
    model, latent = tiny_ltx2(seed=3), av_latent(batch)
    reference = sample(model, latent, cfg)
    policy = FixedPlanPolicy([None] + [torch.arange(TOKENS).expand(batch, -1)] * 3)
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    assert_parts_within(sample(patched, latent, cfg), reference, TOL)
    assert [e.dense for e in slot.last_run.evals] == [True, False, False, False]
    assert slot.last_run.grid == (FRAMES, HEIGHT, WIDTH)


def dense_then_sparse(model, latent: dict, active, cfg, conditioning=None):
    """A dense and then a sparse forward: the video's token outputs by stream and the audio's part of both outputs."""
    return av_sampling.dense_then_sparse(model, latent, active, cfg, conditioning or prompts(), 8 * AUDIO_FRAMES * 16)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens_and_the_whole_audio(batch, cfg):
    """A third of the video tokens (random order, other ones per video): they equal the dense forward's, and so does
    all of the audio, whose queries saw every video token's keys (the others' from the cache)."""
    active = random_active(batch, TOKENS, TOKENS // 3, seed=1)
    by_stream, audio = dense_then_sparse(tiny_ltx2(seed=4), av_latent(batch), active, cfg)
    assert len(by_stream) == (2 if cfg > 1 else 1)
    assert_exact_on_active_tokens(by_stream, TOKENS)
    dense, sparse = audio
    assert dense.abs().max().item() > 0.1
    assert (sparse - dense).abs().max().item() <= TOL


def image_to_video(batch=1):
    """LTXVImgToVideo: the start image's latent in frame 0 of the video, kept by a noise mask of 0 (its tokens'
    timestep 0), concatenated with the audio (the audio's mask all ones)."""
    positive, negative, video = outputs(nodes_lt.LTXVImgToVideo.execute(
        vae=StandInVAE(), image=image(), batch_size=batch, strength=1.0, **prompts(), **PIXELS))
    return dict(positive=positive, negative=negative), av_latent(batch, video)


def a_kept_frame_is_exact_and_never_computed(model, conditioning: dict, latent: dict, tokens: int, frame: int,
                                             seed: int):
    """A frame the video latent's noise mask keeps (timestep 0, a modulation of its own gathered with its tokens):
    every token through the sparse path equals the unpatched run, a third of them are exact and so is the audio; the
    RAS Sampler never computes the frame and keeps it."""
    reference = sample(model, latent, 3.0, conditioning=conditioning)
    policy = FixedPlanPolicy([None] + [torch.arange(tokens)[None]] * 3)
    patched, _ = apply_token_sparse(model, lambda run: policy, node="test")
    assert_parts_within(sample(patched, latent, 3.0, conditioning=conditioning), reference, TOL)
    by_stream, audio = dense_then_sparse(model, latent, random_active(1, tokens, tokens // 3, seed=seed), 3.0,
                                         conditioning)
    assert_exact_on_active_tokens(by_stream, tokens)
    assert (audio[1] - audio[0]).abs().max().item() <= TOL
    out, trace = ras_sample(model, latent_image=latent, **ras_args(steps=4, cfg=3.0, sample_ratio=0.4, reset_steps="",
                                                                    **conditioning))
    sparse = [s for s in trace.steps if not s.dense]
    assert sparse and not any(s.active[:, frame].any() for s in sparse), "the kept frame is never computed"
    video = out["samples"].unbind()[0]
    assert (video[:, :, frame] - reference[0][:, :, frame]).abs().max().item() <= TOL, "the frame is kept"


def test_image_to_video_keeps_its_start_frame():
    """LTXVImgToVideo's start frame, then the audio joined."""
    conditioning, latent = image_to_video()
    a_kept_frame_is_exact_and_never_computed(tiny_ltx2(seed=6), conditioning, latent, TOKENS, frame=0, seed=2)


def test_a_keyframe_guide_runs_and_is_kept():
    """LTXVAddGuide's end frame follows the video's frames (its own positions), then the audio is joined."""
    empty = outputs(nodes_lt.EmptyLTXVLatentVideo.execute(batch_size=1, **PIXELS))[0]
    positive, negative, video = outputs(nodes_lt.LTXVAddGuide.execute(
        vae=StandInVAE(), latent=empty, image=image(), frame_idx=-1, strength=1.0, **prompts()))
    a_kept_frame_is_exact_and_never_computed(tiny_ltx2(seed=7), dict(positive=positive, negative=negative),
                                             av_latent(1, video), (FRAMES + 1) * HEIGHT * WIDTH, frame=-1, seed=3)


@pytest.mark.parametrize("gated", [False, True])
def test_a_guide_of_strength_below_one_scales_attention_exactly(gated):
    """Newer ComfyUI: LTXVAddGuide's end frame at strength 0.5 scales the video self-attention to and from its tokens
    by position (a guide attention mask): the self-attention restated around the engine (ltxv_guide_attention.py),
    also with per-head gates on the attention's output (`apply_gated_attention`, LTX-2.3's checkpoints). Every token
    through the sparse path equals the unpatched run; a third of the tokens, guide tokens among them (its noise mask of
    0.5 lets them be picked), are exact, and so is the audio; the RAS Sampler samples it."""
    import comfy.ldm.lightricks.model as ltx
    empty = outputs(nodes_lt.EmptyLTXVLatentVideo.execute(batch_size=1, **PIXELS))[0]
    positive, negative, video = outputs(nodes_lt.LTXVAddGuide.execute(
        vae=StandInVAE(), latent=empty, image=image(), frame_idx=-1, strength=0.5, **prompts()))
    conditioning, latent, tokens = dict(positive=positive, negative=negative), av_latent(1, video), \
        (FRAMES + 1) * HEIGHT * WIDTH
    model = build_tiny(comfy.supported_models.LTXAV, dict(TINY_LTX2, apply_gated_attention=gated), seed=8)
    assert (model.model.diffusion_model.transformer_blocks[0].attn1.to_gate_logits is not None) == gated
    with guide_masks_built() as masks:
        reference = sample(model, latent, 3.0, conditioning=conditioning)
    assert masks and all(isinstance(m, ltx.GuideAttentionMask) for m in masks), "the model scales the guide's attention"
    policy = FixedPlanPolicy([None] + [torch.arange(tokens)[None]] * 3)
    patched, _ = apply_token_sparse(model, lambda run: policy, node="test")
    assert_parts_within(sample(patched, latent, 3.0, conditioning=conditioning), reference, TOL)
    active = random_active(1, tokens, tokens // 3, seed=4)
    assert (active >= FRAMES * HEIGHT * WIDTH).any(), "guide tokens among the running ones"
    by_stream, audio = dense_then_sparse(model, latent, active, 3.0, conditioning)
    assert_exact_on_active_tokens(by_stream, tokens)
    assert (audio[1] - audio[0]).abs().max().item() <= TOL
    out, trace = ras_sample(model, latent_image=latent, **ras_args(steps=4, cfg=3.0, sample_ratio=0.4, reset_steps="",
                                                                    **conditioning))
    assert any(not s.dense for s in trace.steps) and all(torch.isfinite(p).all() for p in out["samples"].unbind())


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Per block, the video's self-attention and the audio's attention to the video: every video token's keys."""
    policy = FixedPlanPolicy([None, torch.arange(8).expand(2, -1)])
    patched, slot = apply_token_sparse(tiny_ltx2(seed=0), lambda run: policy, node="test")
    sample(patched, av_latent(batch=2), cfg, steps=2)
    run = slot.last_run
    rows = 2 if cfg == 1.0 else 4
    video = TINY_LTX2["attention_head_dim"] * TINY_LTX2["num_attention_heads"]
    audio = TINY_LTX2["audio_attention_head_dim"] * TINY_LTX2["audio_num_attention_heads"]
    layers = TINY_LTX2["num_layers"]
    assert run.kv_planned_bytes == run.kv_peak_bytes == layers * rows * TOKENS * (video + audio) * 2 * 4


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    av_sampling.sampler_node_end_to_end(tiny_ltx2(seed=9), av_latent(2), prompts(), method, (FRAMES, HEIGHT, WIDTH), TOKENS)


def test_model_patch_nodes_under_ksampler():
    av_sampling.model_patch_nodes_under_ksampler(tiny_ltx2(seed=10), av_latent(2), prompts(), TOL)


def with_a_modality_isolated_pass(model):
    """As LTX-2's multimodal guiders (custom nodes) do after CFG: the cond prompt evaluated again with the attention
    between video and audio off, its difference to the cond prediction added."""
    def guide(args):
        options = dict(args["model_options"])
        options["transformer_options"] = dict(options.get("transformer_options", {}), a2v_cross_attn=False,
                                              v2a_cross_attn=False)
        isolated = comfy.samplers.calc_cond_batch(args["model"], [args["cond"]], args["input"], args["sigma"],
                                                  options)[0]
        return args["denoised"] + 0.5 * (args["cond_denoised"] - isolated)
    patched = model.clone()
    patched.set_model_sampler_post_cfg_function(guide)
    return patched


def test_a_modality_isolated_pass_is_a_network_of_its_own():
    """A guider's pass without the attention between video and audio gets its own K/V cache and cached output: with a
    third of the tokens, every network's sparse forward equals its dense one on the tokens that ran."""
    model = with_a_modality_isolated_pass(tiny_ltx2(seed=12))
    by_stream, _ = dense_then_sparse(model, av_latent(1), random_active(1, TOKENS, TOKENS // 3, seed=5), 3.0)
    assert len(by_stream) == 3 and all(len(outputs) == 2 for outputs in by_stream.values())
    assert_exact_on_active_tokens(by_stream, TOKENS)


COMFYUI_GUIDANCE = {"LTXVSpatioTemporalGuidance": dict(scale=1.0, blocks="1", start_percent=0.0, end_percent=1.0),
                    "LTXVModalityGuidance": dict(modality_scale=3.0, start_percent=0.0, end_percent=1.0)}


@pytest.mark.parametrize("node", sorted(COMFYUI_GUIDANCE))
def test_comfyui_guidance_passes_are_networks_of_their_own(node):
    """Newer ComfyUI's LTX-2 guidance nodes evaluate the cond prompt again after CFG: STG with block 1's
    self-attention a pass-through of its values (the video's and the audio's), modality guidance without the attention
    between video and audio. Every token through the sparse path equals the guided model's own sampling; with a third
    of the tokens all three networks' sparse forwards equal their dense ones on the tokens that ran, and the audio's."""
    if not hasattr(nodes_lt, node):
        pytest.skip(f"this ComfyUI has no {node}")
    model = tiny_ltx2(seed=14)
    guided = outputs(getattr(nodes_lt, node).execute(model, **COMFYUI_GUIDANCE[node]))[0]
    latent = av_latent(1)
    reference = sample(guided, latent, 3.0)
    assert (reference[0] - sample(model, latent, 3.0)[0]).abs().max().item() > 1e-3, "the guidance changes the video"
    policy = FixedPlanPolicy([None] + [torch.arange(TOKENS)[None]] * 3)
    patched, _ = apply_token_sparse(guided, lambda run: policy, node="test")
    assert_parts_within(sample(patched, latent, 3.0), reference, TOL)
    by_stream, audio = dense_then_sparse(guided, latent, random_active(1, TOKENS, TOKENS // 3, seed=7), 3.0)
    assert len(by_stream) == 3 and all(len(outputs) == 2 for outputs in by_stream.values())
    assert_exact_on_active_tokens(by_stream, TOKENS)


def test_comfyui_dual_cfg_guider():
    """Newer ComfyUI's LTXV Dual CFG Guider (its own CFG for the video and for the audio, on the packed latent) through
    SamplerCustomAdvanced: the RAS Model Patch at ratio 1 gives the guider's own samples, at 0.3 it samples."""
    if not hasattr(nodes_lt, "LTXVDualCFGGuider"):
        pytest.skip("this ComfyUI has no LTXVDualCFGGuider")
    custom = importlib.import_module("comfy_extras.nodes_custom_sampler")
    model, latent = tiny_ltx2(seed=15), av_latent(1)

    def run(m):
        guider = outputs(nodes_lt.LTXVDualCFGGuider.execute(m, video_cfg=2.0, audio_cfg=4.0, **prompts()))[0]
        sigmas = outputs(custom.BasicScheduler.execute(m, "simple", 4, 1.0))[0]
        sampler = outputs(custom.KSamplerSelect.execute("euler"))[0]
        noise = outputs(custom.RandomNoise.execute(5))[0]
        return outputs(custom.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, latent))[0]["samples"]
    reference = run(model).unbind()
    assert_parts_within(run(ras_model_patch(model, 1.0, 1, "", 0.1, "std", False)[0]).unbind(), reference, TOL)
    video, audio = run(ras_model_patch(model, 0.3, 1, "", 0.1, "std", False)[0]).unbind()
    assert torch.isfinite(video).all() and torch.isfinite(audio).all()
    assert (video - reference[0]).abs().max().item() > 1e-4


class StandInAudioVAE:
    """LTX-2's audio VAE as LTXVReferenceAudio uses it: its sample rate and a latent of the right shape (random, fixed
    by the samples it encodes)."""
    audio_sample_rate = 16000

    def encode(self, waveform):
        frames = waveform.shape[1] // 640          # 25 latent frames a second
        return torch.randn(1, 8, frames, 16, generator=torch.Generator().manual_seed(waveform.shape[1]))


def test_a_reference_voice_with_identity_guidance():
    """ComfyUI's LTXVReferenceAudio (ID-LoRA): the reference voice's tokens lead the audio's and always run; its
    identity guidance evaluates the cond prompt again without them each step, another network on the same prompt
    (its own K/V cache): every token through the sparse path equals the unpatched run, and with a third of the tokens
    all three networks' sparse forwards equal their dense ones on the tokens that ran."""
    model = tiny_ltx2(seed=13)
    voice = {"waveform": torch.randn(1, 1, 16000 * 3 // 25 * 4, generator=torch.Generator().manual_seed(1)),
             "sample_rate": 16000}
    guided, positive, negative = outputs(nodes_lt.LTXVReferenceAudio.execute(
        model, reference_audio=voice, audio_vae=StandInAudioVAE(), identity_guidance_scale=3.0, start_percent=0.0,
        end_percent=1.0, **prompts()))
    conditioning, latent = dict(positive=positive, negative=negative), av_latent(1)
    reference = sample(guided, latent, 3.0, conditioning=conditioning)
    assert (reference[1] - sample(model, latent, 3.0)[1]).abs().max().item() > 1e-3, "the voice changes the audio"
    policy = FixedPlanPolicy([None] + [torch.arange(TOKENS)[None]] * 3)
    patched, _ = apply_token_sparse(guided, lambda run: policy, node="test")
    assert_parts_within(sample(patched, latent, 3.0, conditioning=conditioning), reference, TOL)
    by_stream, _ = dense_then_sparse(guided, latent, random_active(1, TOKENS, TOKENS // 3, seed=6), 3.0, conditioning)
    assert len(by_stream) == 3 and all(len(outputs) == 2 for outputs in by_stream.values())
    assert_exact_on_active_tokens(by_stream, TOKENS)


def test_passes_with_the_video_switched_off_run_as_the_model_does():
    """Custom nodes sample LTX-2's audio alone (`run_vx` off for the run) or guide with an audio-only pass: no video
    token runs there, so the pack leaves those calls to the model. The RAS Sampler over an audio-only model gives
    KSampler's result; a guider's audio-only pass beside sparse steps samples (and every token active equals the
    unpatched run)."""
    model, latent = tiny_ltx2(seed=14), av_latent(1)
    audio_only = model.clone()
    audio_only.model_options["transformer_options"] = dict(run_vx=False, a2v_cross_attn=False, v2a_cross_attn=False)
    a = dict(ras_args(steps=4, cfg=3.0, sample_ratio=0.4, reset_steps=""), **prompts())
    plain = comfy_nodes.KSampler().sample(audio_only, a["seed"], 4, 3.0, "euler", "simple", a["positive"],
                                          a["negative"], latent)[0]["samples"]
    out, _ = ras_sample(audio_only, latent_image=latent, **a)
    assert all(torch.equal(x, y) for x, y in zip(out["samples"].unbind(), plain.unbind()))

    def guide(args):
        options = dict(args["model_options"])
        options["transformer_options"] = dict(options.get("transformer_options", {}), run_vx=False)
        audio_pass = comfy.samplers.calc_cond_batch(args["model"], [args["cond"]], args["input"], args["sigma"],
                                                    options)[0]
        return args["denoised"] + 0.5 * (args["cond_denoised"] - audio_pass)
    guided = model.clone()
    guided.set_model_sampler_post_cfg_function(guide)
    reference = sample(guided, latent, 3.0)
    policy = FixedPlanPolicy([None] + [torch.arange(TOKENS)[None]] * 3)
    patched, _ = apply_token_sparse(guided, lambda run: policy, node="test")
    assert_parts_within(sample(patched, latent, 3.0), reference, TOL)
    out, trace = ras_sample(guided, latent_image=latent, **a)
    assert any(not s.dense for s in trace.steps) and all(torch.isfinite(part).all() for part in out["samples"].unbind())


def test_context_windows_over_video_and_audio_are_refused_clearly():
    """ComfyUI's context windows (its LTXV Context Windows node) cut the video and the audio per window: the sampler
    nodes say so before sampling."""
    windows = importlib.import_module("comfy_extras.nodes_context_windows")
    schedules = importlib.import_module("comfy.context_windows")
    model = outputs(windows.LTXVContextWindowsNode.execute(
        tiny_ltx2(seed=11), context_length=17, context_overlap=8,
        context_schedule=schedules.ContextSchedules.STATIC_STANDARD, fuse_method=schedules.ContextFuseMethods.PYRAMID,
        freenoise=False))[0]
    with pytest.raises(SDiTInputError, match="RAS Sampler: input 'model'.*context windows over a latent of several"):
        ras_sample(model, latent_image=av_latent(1), **ras_args(steps=3, **prompts()))


def test_complexity_map_takes_the_video_of_a_video_and_audio_latent():
    visual = importlib.import_module("comfyui_sdit.nodes.visual_nodes")
    latent = av_latent(1)
    latent["samples"] = noise_for(latent["samples"], 1)
    image, mask = visual.ComplexityMap().compute(latent, 1, 0.5, 1.0, 1.0, -1, 0)["result"]
    assert mask.shape[0] == FRAMES and image.ndim == 4
