"""Cosmos Predict2 (`comfy.ldm.cosmos.predict2.MiniTrainDIT`: Text2Image and Video2World) and Anima (the same
network behind an LLM text adapter, newer ComfyUI) on tiny random-weight instances of their real ComfyUI classes
(CPU, fp32): the exactness set of test_video.py on images (one-frame latents) and videos, the 2B layout (AdaLN-LoRA)
and the 14B one (learned position embeddings added in every block), image-to-video with a given first frame (the
timestep, and so the modulation, per frame), the memory plan, both sampler nodes and both Model Patch nodes; Anima with
its LLLite control (features per token added inside every block)."""
import functools
import importlib

import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import build_tiny, ksample, ras_sample, text_conditioning
from test_memory_plan import sample_patched
from test_ras_sampler import ras_args
from test_video import (a_given_first_frame_is_kept, assert_within, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end)

comfy_nodes = importlib.import_module("nodes")   # ComfyUI's nodes.py
TOL = 1e-5
FRAMES, HEIGHT, WIDTH = 5, 8, 12                 # an odd frame count, non-square frames
FRAME_TOKENS = (HEIGHT // 2) * (WIDTH // 2)
CONTEXT = 32
# ComfyUI's detected Cosmos Predict2 config (model_detection.py), made tiny
TINY_COSMOS = dict(image_model="cosmos_predict2", max_img_h=240, max_img_w=240, max_frames=128, in_channels=16,
                   out_channels=16, patch_spatial=2, patch_temporal=1, model_channels=64, concat_padding_mask=True,
                   crossattn_emb_channels=CONTEXT, pos_emb_cls="rope3d", pos_emb_learnable=True,
                   pos_emb_interpolation="crop", min_fps=1, max_fps=30, use_adaln_lora=True, adaln_lora_dim=16,
                   num_blocks=2, num_heads=4, extra_per_block_abs_pos_emb=False, rope_h_extrapolation_ratio=4.0,
                   rope_w_extrapolation_ratio=4.0, rope_t_extrapolation_ratio=1.0)
LAYOUTS = {"2B": (comfy.supported_models.CosmosT2IPredict2, TINY_COSMOS),
           # the 14B models add learned per-block position embeddings
           "14B": (comfy.supported_models.CosmosT2IPredict2,
                   dict(TINY_COSMOS, extra_per_block_abs_pos_emb=True, rope_h_extrapolation_ratio=2.0,
                        rope_w_extrapolation_ratio=2.0, extra_h_extrapolation_ratio=2.0,
                        extra_w_extrapolation_ratio=2.0)),
           # Video2World: the latent's mask of given frames concatenated as a channel
           "image-to-video": (comfy.supported_models.CosmosI2VPredict2, dict(TINY_COSMOS, in_channels=17))}


def tiny_cosmos(seed, layout="2B"):
    model_config, config = LAYOUTS[layout]
    return build_tiny(model_config, config, seed)


def latent(batch=1, frames=FRAMES):
    return torch.zeros(batch, 16, frames, HEIGHT, WIDTH)


def prompts():
    """Prompts of different lengths: ComfyUI runs them as two streams at cfg > 1."""
    return dict(positive=text_conditioning(1, 7, CONTEXT), negative=text_conditioning(2, 5, CONTEXT))


def first_frame_given(batch=1):
    """What CosmosPredict2ImageToVideoLatent hands the sampler for a start image: its latent in frame 0 and a
    noise mask that keeps that frame (the model then gets a timestep per frame)."""
    samples = torch.randn(batch, 16, FRAMES, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(batch, 1, FRAMES, HEIGHT, WIDTH)
    mask[:, :, 0] = 0.0
    return {"samples": samples, "noise_mask": mask}


def test_cosmos_is_its_own_adapter():
    for layout in LAYOUTS:
        assert adapter_for(tiny_cosmos(seed=0, layout=layout), "test").names == ("Cosmos Predict2", "Anima")


@pytest.mark.parametrize("layout", ["2B", "14B"])
@pytest.mark.parametrize("frames", [1, FRAMES])
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(layout, frames, batch, cfg):
    run = every_token_active(tiny_cosmos(seed=3, layout=layout), latent(batch, frames), cfg, prompts(),
                             frames * FRAME_TOKENS, assert_within(TOL))
    assert run.grid == ((HEIGHT // 2, WIDTH // 2) if frames == 1 else (frames, HEIGHT // 2, WIDTH // 2))


@pytest.mark.parametrize("layout", ["2B", "14B"])
@pytest.mark.parametrize("frames", [1, FRAMES])
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(layout, frames, batch, cfg):
    """A third of the tokens, in random order and different per image."""
    exact_on_a_third_of_the_tokens(tiny_cosmos(seed=4, layout=layout), latent(batch, frames), cfg, prompts(),
                                   frames * FRAME_TOKENS)


@pytest.mark.parametrize("batch", [1, 2])
def test_image_to_video_with_a_timestep_per_frame(batch):
    """Video2World with a given first frame: the model's timestep, and so its modulation, is per frame and is
    gathered with the tokens (every token through the sparse path == KSampler); the given frame never runs on a
    sparse step and is kept."""
    a_given_first_frame_is_kept(tiny_cosmos(seed=6, layout="image-to-video"), first_frame_given(batch), prompts(),
                                FRAMES * FRAME_TOKENS, cfg=3.0)


def test_per_frame_modulation_matters():
    """The precondition of the test above: the timestep per frame reaches the model (a per-video timestep
    gives another result), so a sparse step that modulated a token with another frame's row would fail it."""
    model = tiny_cosmos(seed=6, layout="image-to-video")
    given = first_frame_given()
    a = ras_args(**prompts())
    kept = comfy_nodes.KSampler().sample(model, a["seed"], 4, 1.0, "euler", "simple", a["positive"], a["negative"],
                                         given)[0]["samples"]
    free = comfy_nodes.KSampler().sample(model, a["seed"], 4, 1.0, "euler", "simple", a["positive"], a["negative"],
                                         {"samples": given["samples"]})[0]["samples"]
    assert (kept - free)[:, :, 1:].abs().amax(dim=(0, 1, 3, 4)).min().item() > 1e-3


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """Self-attention over the image tokens alone: one layer per block."""
    run = sample_patched(tiny_cosmos(seed=0), latent(2), cfg, prompts())
    rows = 2 if cfg == 1.0 else 4                  # batch 2; at cfg 3 the negative prompt's rows too
    tokens = FRAMES * FRAME_TOKENS
    assert run.kv_planned_bytes == run.kv_peak_bytes == 2 * rows * tokens * TINY_COSMOS["model_channels"] * 2 * 4


@pytest.mark.parametrize("frames", [1, FRAMES])
@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method, frames):
    _, _, trace, _ = sampler_node_end_to_end(tiny_cosmos(seed=7), {"samples": latent(2, frames)}, prompts(), method,
                                             frames * FRAME_TOKENS)
    assert trace.grid == ((HEIGHT // 2, WIDTH // 2) if frames == 1 else (frames, HEIGHT // 2, WIDTH // 2))


def test_an_empty_image_latent_of_four_dimensions_samples():
    """ComfyUI's Empty Latent Image gives a 4-D latent of 4 channels; the sampler makes it the model's one-frame
    16-channel latent (fix_empty_latent_channels)."""
    empty = comfy_nodes.EmptyLatentImage().generate(WIDTH * 8, HEIGHT * 8, 1)[0]
    out, trace = ras_sample(tiny_cosmos(seed=8), latent_image=empty, **ras_args(sample_ratio=0.3, **prompts()))
    assert trace.grid == (HEIGHT // 2, WIDTH // 2)
    assert out["samples"].shape == (1, 16, 1, HEIGHT, WIDTH) and torch.isfinite(out["samples"]).all()


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_cosmos(seed=9), {"samples": latent(2)}, prompts(), assert_within(TOL))


# ---- Anima (newer ComfyUI) ---------------------------------------------------------------------------------
ANIMA_CONTEXT = 1024        # its LLM adapter's width, which the blocks' cross-attention takes


@functools.lru_cache(maxsize=1)
def tiny_anima():
    """Built once: its LLM adapter alone (a 32k-token embedding and six 1024-wide layers) is ~130M weights."""
    if not hasattr(comfy.supported_models, "Anima"):
        pytest.skip("this ComfyUI has no Anima")
    return build_tiny(comfy.supported_models.Anima, dict(TINY_COSMOS, image_model="anima",
                                                         crossattn_emb_channels=ANIMA_CONTEXT), seed=10)


def anima_prompts():
    """Anima's text encoder output with the T5 token ids its LLM adapter maps it through (model_base.Anima)."""
    def prompt(seed, tokens):
        ids = torch.randint(0, 32128, (tokens,), generator=torch.Generator().manual_seed(seed))
        return text_conditioning(seed, tokens, ANIMA_CONTEXT, t5xxl_ids=ids, t5xxl_weights=torch.ones(tokens))
    return dict(positive=prompt(1, 7), negative=prompt(2, 5))


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_anima_every_token_active_and_a_third_of_them(batch, cfg):
    model = tiny_anima()
    assert adapter_for(model, "test").names == ("Cosmos Predict2", "Anima")
    every_token_active(model, latent(batch, 1), cfg, anima_prompts(), FRAME_TOKENS, assert_within(TOL))
    exact_on_a_third_of_the_tokens(model, latent(batch, 1), cfg, anima_prompts(), FRAME_TOKENS)


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_anima_sampler_nodes_end_to_end(method):
    sampler_node_end_to_end(tiny_anima(), {"samples": latent(2, 1)}, anima_prompts(), method, FRAME_TOKENS)


def test_region_visualizer_and_complexity_map_draw_an_image_run():
    """An image model on one-frame 5-D latents: the maps are the image's, one frame, as for any image model."""
    from comfyui_sdit.nodes.visual_nodes import ComplexityMap, RegionVisualizer
    from test_sdit_sampler import defaults as sdit_defaults
    from test_video import SDIT_END_TO_END
    from sdit_testkit import sdit_sample
    out, trace = sdit_sample(tiny_cosmos(seed=11), 3, 5, 1.0, "euler", "simple", prompts()["positive"],
                             prompts()["negative"], {"samples": latent(1, 1)}, 1.0, **sdit_defaults(**SDIT_END_TO_END))
    images = RegionVisualizer().draw(trace, -1, 0, 0.6)["result"][0]
    token_px = 2 * 8
    assert images.shape[0] == 2 + len(trace.steps) and images.shape[1] == HEIGHT * 8   # maps, each with a side panel
    mask = images[-1][::token_px, :WIDTH * 8:token_px, 0] > 0.5
    assert torch.equal(mask, trace.steps[-1].active[0])
    image, masks = ComplexityMap().compute({"samples": out["samples"]}, 2, 0.5, 1.0, 0.5, -1, 0)["result"]
    assert image.shape[1] == HEIGHT * 8 and masks.shape == (1, HEIGHT * 8, WIDTH * 8)     # heatmap + legend


# ---- Anima LLLite (newer ComfyUI's "Apply Anima LLLite") ------------------------------------------------------
LLLITE_TARGETS = ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "cross_attn_q_proj", "mlp_layer1")


def tiny_lllite(seed=12):
    """A random LLLite checkpoint for the tiny Anima (every block, every target), loaded as "Load Model Patch" loads
    one: it encodes the control image into one feature vector per token (16 x 16 pixels each)."""
    lllite = pytest.importorskip("comfy.ldm.anima.lllite")
    import comfy.model_management
    import comfy.model_patcher
    import comfy.ops
    from sdit_testkit import init_weights_
    operations = comfy.ops.manual_cast
    parts = {"lllite_conditioning1": lllite.AnimaLLLiteConditioning(3, 16, 8, 1, (), operations=operations)}
    for block in range(TINY_COSMOS["num_blocks"]):
        for target in LLLITE_TARGETS:
            parts[f"lllite_dit_blocks_{block}_{target}"] = lllite.AnimaLLLiteModule(TINY_COSMOS["model_channels"], 8,
                                                                                    8, operations=operations)
    state = {}
    for name, part in parts.items():
        init_weights_(part, seed)
        state.update({f"{name}.{key}": value for key, value in part.state_dict().items()})
    model = lllite.AnimaLLLite(state, {}, operations=operations)
    model.load_state_dict(state)
    return comfy.model_patcher.CoreModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                                offload_device=comfy.model_management.unet_offload_device())


def with_lllite(model, strength=1.0):
    control = torch.rand(1, HEIGHT * 8, WIDTH * 8, 3, generator=torch.Generator().manual_seed(13))
    apply = importlib.import_module("comfy_extras.nodes_model_patch").AnimaLLLiteApply()
    return apply.apply_patch(model, tiny_lllite(), control, strength, 0.0, 1.0)[0]


def test_anima_lllite_changes_every_token():
    """The precondition of the tests below: the control features reach the model's output everywhere."""
    model = tiny_anima()
    plain, controlled = (ksample(m, latent(1, 1), seed=5, steps=3, **anima_prompts())
                         for m in (model, with_lllite(model)))
    assert (plain - controlled).abs().amax(dim=1).min().item() > 1e-4


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_anima_with_lllite_every_token_active_and_a_third_of_them(batch, cfg):
    """Each running token gets its own control features (the negative prompt's rows too: one control image)."""
    model = with_lllite(tiny_anima())
    every_token_active(model, latent(batch, 1), cfg, anima_prompts(), FRAME_TOKENS, assert_within(TOL))
    exact_on_a_third_of_the_tokens(model, latent(batch, 1), cfg, anima_prompts(), FRAME_TOKENS)


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_anima_with_lllite_sampler_nodes_end_to_end(method):
    sampler_node_end_to_end(with_lllite(tiny_anima()), {"samples": latent(2, 1)}, anima_prompts(), method, FRAME_TOKENS)
