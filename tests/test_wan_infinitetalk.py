"""Wan with InfiniteTalk's audio (newer ComfyUI's "WanInfiniteTalkToVideo" puts a MultiTalkCrossAttnPatch of an
InfiniteTalk model of "Load Model Patch" on the model: after each block's cross-attention every video token attends to
the audio tokens of its latent frame), on a tiny random-weight Wan 2.1 (160 wide: the audio blocks have 40 heads) and a
tiny instance of ComfyUI's own MultiTalkModelPatch (CPU, fp32), the patch put on as the node puts it: every token
active == the audio patch alone; a sparse step after a dense one exact on the tokens that ran; both sampler nodes and
both Model Patch nodes end to end; a speaker map (MultiTalkGetAttnMapPatch) still refused. One video per forward, as
ComfyUI's audio attention takes it (prompts of different lengths: cond and uncond run apart). Skipped where the
running ComfyUI has no InfiniteTalk (0.3.75)."""
import importlib

import pytest
import torch

import comfy.model_patcher
import comfy.ops
import comfy.supported_models

from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.families import infinitetalk_audio
from sdit_testkit import (TINY_WAN, assert_exact_on_active_tokens, build_tiny, init_weights_, random_active,
                          ras_sample)
from test_ras_sampler import ras_args
from test_video import (FRAMES, TOKENS, a_patch_runs_with_every_token_active, assert_within_scale, conds,
                        dense_then_sparse, model_patch_nodes_under_ksampler, sampler_node_end_to_end, video_latent)

model_patch_nodes = importlib.import_module("comfy_extras.nodes_model_patch")
if not hasattr(model_patch_nodes, "MultiTalkModelPatch"):
    pytest.skip("this ComfyUI has no InfiniteTalk", allow_module_level=True)
multitalk = importlib.import_module("comfy.ldm.wan.model_multitalk")

TOL = 1e-5
# Sampled runs compare to 4e-6 of the largest value: on sparse steps the running tokens' audio attention is restated
# (every frame's audio keys, masked to the query's own frame), which rounds otherwise than ComfyUI's frame by frame
assert_sampled_close = assert_within_scale(4e-6)
DIM, AUDIO_DIM, AUDIO_TOKENS = 160, 32, 4


def tiny_wan(seed: int):
    return build_tiny(comfy.supported_models.WAN21_T2V, dict(TINY_WAN, dim=DIM, ffn_dim=2 * DIM), seed)


def audio_model(seed: int):
    """ComfyUI's InfiniteTalk model, one audio block per Wan block, as "Load Model Patch" gives it."""
    net = model_patch_nodes.MultiTalkModelPatch(intermediate_dim=16, in_dim=DIM, out_dim=AUDIO_DIM,
                                                context_tokens=AUDIO_TOKENS, num_layers=TINY_WAN["num_layers"],
                                                operations=comfy.ops.disable_weight_init)
    init_weights_(net, seed)
    return comfy.model_patcher.ModelPatcher(net, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def with_audio(model, speaker_map: bool = False):
    """The audio patch and its projected audio (a frame's tokens per latent frame) as WanInfiniteTalkToVideo puts them
    on the model; `speaker_map`: with a speaker mask's map patch (several speakers)."""
    patched = model.clone()
    audio = torch.randn(1, FRAMES, AUDIO_TOKENS, AUDIO_DIM, generator=torch.Generator().manual_seed(3))
    patched.model_options["transformer_options"]["audio_embeds"] = audio
    patched.set_model_patch(multitalk.MultiTalkCrossAttnPatch(audio_model(11), 1.0), "attn2_patch")
    if speaker_map:
        patched.set_model_patch(multitalk.MultiTalkGetAttnMapPatch(torch.ones(2, 24, dtype=torch.bool)), "attn1_patch")
    return patched


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_all_tokens_active_equals_the_audio_alone(cfg):
    model = tiny_wan(seed=3)
    a_patch_runs_with_every_token_active(model, with_audio(model), video_latent(1), cfg, conds(), TOKENS,
                                         assert_sampled_close)


@pytest.mark.parametrize("restated", [False, True], ids=["checked", "restated"])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_dense_then_sparse_matches_dense_on_active_tokens(cfg, restated):
    """A third of the tokens, in random order: on a run's first sparse forward the patch runs on every token's row
    (and the restatement is checked against it), on later ones the running tokens' audio attention is restated."""
    active = random_active(1, TOKENS, TOKENS // 3, seed=1)
    model = with_audio(tiny_wan(seed=4))
    audio = next(p for p in model.model_options["transformer_options"]["patches"]["attn2_patch"]).model_patch.model
    if restated:
        infinitetalk_audio._CHECKED.add(audio)
    by_stream = dense_then_sparse(model, video_latent(1), active, cfg, conds())
    assert_exact_on_active_tokens(by_stream, TOKENS)
    assert audio in infinitetalk_audio._CHECKED


def test_a_comfyui_whose_audio_attention_differs_stops_with_a_clear_error(monkeypatch):
    """The restatement is checked against ComfyUI's patch on the first sparse forward."""
    original = multitalk.SingleStreamAttention.forward
    monkeypatch.setattr(multitalk.SingleStreamAttention, "forward",
                        lambda self, x, encoder_hidden_states, shape=None: 2 * original(self, x, encoder_hidden_states,
                                                                                        shape))
    active = random_active(1, TOKENS, TOKENS // 3, seed=1)
    with pytest.raises(NotImplementedError, match="InfiniteTalk: this ComfyUI's audio attention computes something"):
        dense_then_sparse(with_audio(tiny_wan(seed=5)), video_latent(1), active, 1.0, conds())


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end(method):
    sampler_node_end_to_end(with_audio(tiny_wan(seed=6)), {"samples": video_latent(1)}, conds(), method, TOKENS)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(with_audio(tiny_wan(seed=7)), {"samples": video_latent(1)}, conds(),
                                     assert_sampled_close)


def test_a_speaker_map_is_still_refused():
    """Several speakers with masks: the map patch reads every token's query, which a sparse step does not have."""
    with pytest.raises(SDiTInputError, match="RAS Sampler.*'WanInfiniteTalkToVideo'"):
        ras_sample(with_audio(tiny_wan(seed=8), speaker_map=True), latent_image={"samples": video_latent(1)},
                   **dict(ras_args(cfg=1.0), **conds()))


def test_the_wan_variants_still_refuse_it():
    """Only plain Wan's adapter runs the audio patch token-sparse; the variants' are untested with it."""
    from comfyui_sdit.nodes.families import FAMILIES, adapter_for
    wan = adapter_for(tiny_wan(seed=9), "test")
    variants = [f for f in FAMILIES if isinstance(f, type(wan)) and type(f) is not type(wan)]
    assert "MultiTalkCrossAttnPatch" in wan.handled_patches and len(variants) >= 7
    assert all("MultiTalkCrossAttnPatch" not in f.handled_patches for f in variants)
