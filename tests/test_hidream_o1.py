"""HiDream-O1 (`comfy.ldm.hidream_o1.model.HiDreamO1Transformer`, newer ComfyUI) on tiny random-weight instances of its
real class (CPU, fp32): pixel space, one token per 32 x 32 patch; a Qwen3-VL language model's layers over [prompt |
target | references], the prompt's autoregressive part attending causally on its own and the rest to every key, with
the model's own prefix cache of that part on (filled on the first forward, read after) and off; prompts from its own
tokenizer. The exactness set of the image families (a non-square image, batch 2 with CFG, prompts of different lengths:
two streams), a reference image, the memory plan, both sampler nodes and both Model Patch nodes, and its Patch Seam
Smoothing refused clearly."""
import importlib

import pytest
import torch

import comfy.supported_models

from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import build_tiny, ksample
from test_memory_plan import sample_patched
from test_video import (assert_within, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("comfy.ldm.hidream_o1") is None,
                                reason="this ComfyUI has no HiDream-O1")
TOL = 1e-5
PATCH, ROWS, COLS = 32, 4, 6                     # a non-square 128 x 192 pixel image: 24 patches
TOKENS = ROWS * COLS
# Qwen3-VL-8B's text decoder made tiny (its vocabulary kept: the prompt's token ids are the real tokenizer's), grouped
# key/value heads as the real one has; the vision tower (reference images) tiny too
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, rope_dims=[4, 2, 2])
TINY_VISION = dict(hidden_size=32, num_heads=2, intermediate_size=64, depth=1, num_position_embeddings=64,
                   deepstack_visual_indexes=())


def tiny_hidream_o1(seed, prefix_cache=True):
    """`prefix_cache` off: an identity block patch (as any node that patches the layers) makes the model run every
    forward over the whole sequence."""
    model = build_tiny(comfy.supported_models.HiDreamO1, dict(image_model="hidream_o1", text_config_overrides=TINY_TEXT,
                                                              vision_config_overrides=TINY_VISION), seed)
    if not prefix_cache:
        for i in range(TINY_TEXT["num_hidden_layers"]):
            model.set_model_patch_replace(lambda args, extra: extra["original_block"](args), "dit", "double_block", i)
    return model


def prompt(text: str):
    """What ComfyUI's HiDream-O1 text encoder hands the sampler: the prompt's token ids in its chat template."""
    tokenizer = comfy.supported_models.HiDreamO1({"image_model": "hidream_o1"}).clip_target().tokenizer()
    ids = torch.tensor([[int(t[0]) for t in tokenizer.tokenize_with_weights(text)["hidream_o1"][0]]])
    return [[ids.unsqueeze(-1).float(), {"text_input_ids": ids}]]


def prompts():
    """Prompts of different lengths: two streams at cfg > 1."""
    return dict(positive=prompt("a red fox in fresh snow, morning light"), negative=prompt("blurry"))


def image(batch=1):
    return torch.zeros(batch, 3, ROWS * PATCH, COLS * PATCH)


def test_hidream_o1_is_its_own_adapter():
    assert adapter_for(tiny_hidream_o1(seed=0), "test").names == ("HiDream-O1",)


@pytest.mark.parametrize("prefix_cache", [True, False])
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(batch, cfg, prefix_cache):
    model = tiny_hidream_o1(seed=3, prefix_cache=prefix_cache)
    run = every_token_active(model, image(batch), cfg, prompts(), TOKENS, assert_within(TOL))
    assert run.grid == (ROWS, COLS)


@pytest.mark.parametrize("prefix_cache", [True, False])
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(batch, cfg, prefix_cache):
    """A third of the patches, in random order and different per image: the generation pass's queries see every
    patch's keys (the others' from the K/V cache), with the prompt's keys from the model's prefix cache or computed."""
    model = tiny_hidream_o1(seed=4, prefix_cache=prefix_cache)
    model.model.diffusion_model.clear_kv_cache()
    exact_on_a_third_of_the_tokens(model, image(batch), cfg, prompts(), TOKENS)
    assert bool(model.model.diffusion_model._kv_cache_entries) == prefix_cache, "the prefix cache was (not) used"


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg, reference):
    """Per layer, the keys and values (the key/value heads') of the prompt and every patch; with a reference image,
    also its vision tower's tokens spliced into the prompt and its patches (counted here by the model's own
    conditioning: the sequence its forward gets)."""
    conditioning = with_a_reference_image()[0] if reference else prompts()
    run = sample_patched(tiny_hidream_o1(seed=0), image(2), cfg, conditioning)
    width = TINY_TEXT["num_key_value_heads"] * TINY_TEXT["head_dim"]

    def sequence(name):
        from comfy.ldm.hidream_o1.conditioning import build_extra_conds
        values = conditioning[name][0][1]
        model_inputs = build_extra_conds(values["text_input_ids"], image(2), ref_images=values.get("reference_latents"))
        references = model_inputs["ref_patches"].shape[1] if reference else 0
        return model_inputs["input_ids"].shape[1] + TOKENS + references
    rows = [(sequence("positive"), 2)] + ([(sequence("negative"), 2)] if cfg > 1 else [])   # (tokens, rows: batch 2)
    expected = sum(TINY_TEXT["num_hidden_layers"] * n * tokens * width * 2 * 4 for tokens, n in rows)
    if reference:
        assert expected > sum(TINY_TEXT["num_hidden_layers"] * n * (prompts()[name][0][1]["text_input_ids"].shape[1]
                                                                     + TOKENS) * width * 2 * 4
                              for name, n in zip(("positive", "negative"), (2, 2 if cfg > 1 else 0)))
    assert run.kv_planned_bytes == run.kv_peak_bytes == expected


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_hidream_o1(seed=7), {"samples": image(2)}, prompts(), method, TOKENS)
    assert trace.grid == (ROWS, COLS)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_hidream_o1(seed=9), {"samples": image(2)}, prompts(), assert_within(TOL))


def test_patch_seam_smoothing_is_refused_clearly():
    """ComfyUI's HiDream-O1 Patch Seam Smoothing runs the model again on the image rolled by part of a patch inside
    each model call: named in a clear error, applied before the pack's node or after it."""
    smoothing = importlib.import_module("comfy_extras.nodes_hidream_o1").HiDreamO1PatchSeamSmoothing
    from comfyui_sdit.nodes.errors import SDiTInputError
    from sdit_testkit import ras_model_patch, ras_sample
    from test_ras_sampler import ras_args

    def smoothed(model):
        out = smoothing.execute(model=model, start_percent=0.0, end_percent=1.0, pattern="single_shift", passes="2",
                                blend="average", strength=1.0)
        return tuple(out.result)[0] if hasattr(out, "result") else out[0]
    model = tiny_hidream_o1(seed=0)
    with pytest.raises(SDiTInputError, match="RAS Sampler: input 'model'.*'HiDream-O1 Patch Seam Smoothing'"):
        ras_sample(smoothed(model), latent_image={"samples": image()}, **ras_args(**prompts()))
    with pytest.raises(SDiTInputError, match="RAS Model Patch: input 'model'.*'HiDream-O1 Patch Seam Smoothing'"):
        ksample(smoothed(ras_model_patch(model, 0.5, 1, "", 0.1, "std", False)[0]), image(), steps=3, cfg=3.0,
                **prompts())


def with_a_reference_image():
    """HiDream-O1 Reference Images with one image (an instruction edit): its patches follow the target's and run on
    every step, its vision-tower tokens are spliced into the prompt. Returns the prompts and the reference's patches."""
    references = importlib.import_module("comfy_extras.nodes_hidream_o1").HiDreamO1ReferenceImages
    picture = torch.rand(1, 96, 64, 3, generator=torch.Generator().manual_seed(3))
    out = references.execute(**prompts(), images={"image_1": picture})
    positive, negative = tuple(out.result) if hasattr(out, "result") else out
    from comfy.ldm.hidream_o1.conditioning import build_extra_conds
    patches = build_extra_conds(positive[0][1]["text_input_ids"], image(), ref_images=[picture])["ref_patches"]
    return dict(positive=positive, negative=negative), patches.shape[1]


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_a_reference_image(prefix_cache):
    """Every token through the sparse path == unpatched, a third of them exact: the reference's patches (after the
    target's) and its tokens in the prompt run on every step."""
    model = tiny_hidream_o1(seed=5, prefix_cache=prefix_cache)
    conditioning, reference_tokens = with_a_reference_image()
    assert reference_tokens > 0
    assert (ksample(model, image(), steps=2, cfg=3.0, **conditioning)
            - ksample(model, image(), steps=2, cfg=3.0, **prompts())).abs().max().item() > 1e-3, "the reference counts"
    every_token_active(model, image(), 3.0, conditioning, TOKENS, assert_within(TOL))
    model.model.diffusion_model.clear_kv_cache()
    exact_on_a_third_of_the_tokens(model, image(), 3.0, conditioning, TOKENS)
