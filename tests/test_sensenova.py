"""SenseNova U1.5 (`comfy.ldm.sensenova.model.SenseNovaU15`, newer ComfyUI) on tiny random-weight instances of its real
class (CPU, fp32): pixel space, one token per 32 x 32 patch; a language model's layers with generation weights run
the image's tokens against [prompt's keys | image's keys]; a 3x3-convolution head over the token grid. The prompt's
keys and values come from the model's conditioning (computed once per run) or, where the conditioning has hooks,
from the forward itself. Prompts from its own tokenizer. The exactness set of the image families (a non-square image,
batch 2 with CFG, prompts of different lengths: two streams), a reference image, the memory plan, both sampler nodes
and both Model Patch nodes.

The real class's sizes are module constants (4096 hidden channels, which its convolution head's fixed channels
require, 42 layers of 32 heads); the tests shrink the layers (2 layers, 4 heads of 16 channels, 2 key/value heads)
and keep the hidden size and the vocabulary. The vocabulary's embedding is allocated and never written but for the
rows of the tokens the tests use (the rest of its 2.5 GB stays untouched memory)."""
import importlib

import pytest
import torch

from comfyui_sdit.nodes.families import adapter_for
from sdit_testkit import assert_exact_on_active_tokens, init_weights_, ksample, make_patcher, random_active
from test_memory_plan import sample_patched
from test_video import (assert_within, dense_then_sparse, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("comfy.ldm.sensenova") is None,
                                reason="this ComfyUI has no SenseNova U1.5")
TOL = 1e-4     # the model divides its prediction's difference to the image by 1 - t (down to 0.02): round-off x 50
PATCH, ROWS, COLS = 32, 4, 6                     # a non-square 128 x 192 pixel image: 24 patches
TOKENS = ROWS * COLS
TINY = dict(NUM_LAYERS=2, NUM_HEADS=4, NUM_KV_HEADS=2, HEAD_DIM=16, INTERMEDIATE_SIZE=64)


@pytest.fixture(autouse=True, scope="module")
def tiny_sizes():
    """The model's sizes are read from its module while it is built and while it runs: shrunk for this module."""
    module = importlib.import_module("comfy.ldm.sensenova.model")
    before = {name: getattr(module, name) for name in TINY}
    for name, value in TINY.items():
        setattr(module, name, value)
    yield
    for name, value in before.items():
        setattr(module, name, value)


def tiny_sensenova(seed, thinking=False):
    """`thinking`: with the language model's head (never written: every token it picks is token 0, so thinking runs
    to its budget)."""
    import comfy.supported_models
    config = {"image_model": "sensenova_u15", "has_lm_head": True} if thinking else {"image_model": "sensenova_u15"}
    model = comfy.supported_models.SenseNovaU15(config).get_model({})
    network = model.diffusion_model
    for i, part in enumerate((network.vision_model, network.fm_modules, network.language_model.model.layers,
                              network.language_model.model.norm, network.language_model.model.norm_mot_gen)):
        init_weights_(part, seed + i)
    embedding = network.language_model.model.embed_tokens.weight
    rows = torch.tensor(sorted(_used_token_ids()))
    with torch.no_grad():   # only the rows the prompts use: the rest of the table is never read
        embedding[rows] = torch.randn(len(rows), embedding.shape[1], generator=torch.Generator().manual_seed(seed))
    return make_patcher(model)


def _tokenizer():
    import comfy.supported_models
    return comfy.supported_models.SenseNovaU15({"image_model": "sensenova_u15"}).clip_target().tokenizer()


def _ids(text: str) -> torch.Tensor:
    return torch.tensor([[int(t[0]) for t in _tokenizer().tokenize_with_weights(text)["sensenova_u15"][0]]])


TEXTS = ("a red fox in fresh snow, morning light", "blurry", "")


def _used_token_ids() -> set:
    """The prompts' tokens, and those the model's conditioning splices in for reference images (its image, label and
    chat-template tokens)."""
    ids = {int(i) for text in TEXTS for i in _ids(text)[0]}
    return ids | set(range(151640, 151680)) | {0, 12, 25, 198, 271, 872, 1906, 77091} | set(range(15, 25))


def prompt(text: str):
    """What ComfyUI's SenseNova text encoder hands the sampler: the prompt's token ids in its chat template."""
    ids = _ids(text)
    return [[ids.unsqueeze(-1).float(), {"text_input_ids": ids}]]


def prompts(hooks=False):
    """Prompts of different lengths: two streams at cfg > 1. `hooks`: a hook in the conditioning (a LoRA hook without
    weights), with which the model builds the prompt's keys in every forward instead of once in its conditioning."""
    out = dict(positive=prompt(TEXTS[0]), negative=prompt(TEXTS[1]))
    if hooks:
        import comfy.hooks
        group = comfy.hooks.create_hook_lora({}, strength_model=1.0, strength_clip=1.0)
        for entries in out.values():
            entries[0][1]["hooks"] = group
    return out


def image(batch=1):
    return torch.zeros(batch, 3, ROWS * PATCH, COLS * PATCH)


def test_sensenova_is_its_own_adapter():
    assert adapter_for(tiny_sensenova(seed=0), "test").names == ("SenseNova U1.5",)


@pytest.mark.parametrize("hooks", [False, True])
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(batch, cfg, hooks):
    run = every_token_active(tiny_sensenova(seed=3), image(batch), cfg, prompts(hooks), TOKENS, assert_within(TOL))
    assert run.grid == (ROWS, COLS)


@pytest.mark.parametrize("hooks", [False, True])
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(batch, cfg, hooks):
    """A third of the patches, in random order and different per image: each layer's queries see the prompt's keys
    and every patch's (the others' from the K/V cache); the head's convolution sees the skipped patches' hidden
    states as the dense forward left them."""
    exact_on_a_third_of_the_tokens(tiny_sensenova(seed=4), image(batch), cfg, prompts(hooks), TOKENS)


@pytest.mark.parametrize("hooks", [False, True])
def test_generation_layers_replay_what_eager_layers_compute(monkeypatch, hooks):
    """Each layer's generation pass replays from a CUDA graph of its own (the CPU stand-in of test_forward_graphs):
    the prompt's keys and values, its RoPE tables (a pair per axis) in static buffers; equal to eager, no host read
    inside a capture, every layer captured once per stream (two prompts of different lengths)."""
    from comfyui_sdit.sdit_core import forward_graphs
    from test_forward_graphs import collecting, ksample_planned, random_plans
    monkeypatch.setenv(forward_graphs.MIN_USES_FLAG, "1")
    model, latent, conditioning = tiny_sensenova(seed=3), {"samples": image(2)}, prompts(hooks)
    plans = random_plans(TOKENS, TOKENS // 3)
    eager, _ = ksample_planned(model, latent, conditioning, plans)
    backends = []
    graphed, _ = ksample_planned(model, latent, conditioning, plans, collecting(backends))
    assert torch.equal(graphed, eager) and backends[0].syncs == []
    layers = len(model.model.diffusion_model.language_model.model.layers)
    assert backends[0].captures == 2 * layers and backends[0].replays == 4 * 2 * layers


def test_prompts_of_one_length_run_batched():
    """Prompts of equal length: ComfyUI batches the positive and negative passes into one forward (the prompt's keys
    one row per guidance branch, the model repeating each for its images): one stream of 4 rows."""
    model = tiny_sensenova(seed=3)
    conditioning = dict(positive=prompt("a red fox"), negative=prompt("a red cat"))
    every_token_active(model, image(2), 3.0, conditioning, TOKENS, assert_within(TOL))
    by_stream = dense_then_sparse(model, image(2), random_active(2, TOKENS, TOKENS // 3, seed=1), 3.0, conditioning)
    assert [key[1] for key in by_stream] == [4]
    assert_exact_on_active_tokens(by_stream, TOKENS)


def _prefix_length(model, values, prompt_type) -> int:
    """The prompt's length as the model's own conditioning builds it (its keys' rows)."""
    out = model.model.extra_conds(device=torch.device("cpu"), noise=image(), **dict(values, prompt_type=prompt_type))
    return out["prefix_keys"].cond[0].shape[2]


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg, reference):
    """Per layer, the keys and values (the key/value heads') of the prompt and every patch; with a reference image,
    the prompt with the reference's tokens spliced in (the negative: an image-only prompt), counted here by the
    model's own conditioning."""
    model = tiny_sensenova(seed=0)
    conditioning = with_a_reference_image() if reference else prompts()
    run = sample_patched(model, image(2), cfg, conditioning)
    width = TINY["NUM_KV_HEADS"] * TINY["HEAD_DIM"]
    names = ("positive", "negative") if cfg > 1 else ("positive",)
    lengths = [_prefix_length(model, conditioning[name][0][1], name) for name in names]
    if reference:
        assert lengths[0] > conditioning["positive"][0][1]["text_input_ids"].shape[1], "the reference's tokens count"
    expected = sum(TINY["NUM_LAYERS"] * 2 * (length + TOKENS) * width * 2 * 4 for length in lengths)  # batch 2, K and V
    assert run.kv_planned_bytes == run.kv_peak_bytes == expected


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_sensenova(seed=7), {"samples": image(2)}, prompts(), method, TOKENS)
    assert trace.grid == (ROWS, COLS)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_sensenova(seed=9), {"samples": image(2)}, prompts(), assert_within(TOL))


def with_a_reference_image():
    """ComfyUI's reference-images node (HiDream-O1's, which SenseNova's workflows share) with one image: its tokens
    join the prompt (the negative becomes an image-only prompt)."""
    references = importlib.import_module("comfy_extras.nodes_hidream_o1").HiDreamO1ReferenceImages
    picture = torch.rand(1, 96, 64, 3, generator=torch.Generator().manual_seed(3))
    out = references.execute(**prompts(), images={"image_1": picture})
    positive, negative = tuple(out.result) if hasattr(out, "result") else out
    return dict(positive=positive, negative=negative)


def test_a_reference_image():
    """Every token through the sparse path == unpatched, a third of them exact: the reference lives in the prompt's
    keys."""
    model = tiny_sensenova(seed=5)
    conditioning = with_a_reference_image()
    assert (ksample(model, image(), steps=2, cfg=3.0, **conditioning)
            - ksample(model, image(), steps=2, cfg=3.0, **prompts())).abs().max().item() > 1e-3, "the reference counts"
    every_token_active(model, image(), 3.0, conditioning, TOKENS, assert_within(TOL))
    exact_on_a_third_of_the_tokens(model, image(), 3.0, conditioning, TOKENS)


def thinking(conditioning: dict, budget: int = 2) -> dict:
    """SenseNova's thinking on for the positive prompt: the model decodes up to `budget` tokens after it (and the
    tokens that close the thought) before the image's."""
    conditioning["positive"][0][1].update(sensenova_thinking=True, sensenova_max_think_tokens=budget)
    return conditioning


@pytest.mark.parametrize("hooks", [False, True])
def test_thinking(hooks):
    """With hooks the thought is decoded in every forward (its attention past the K/V cache); the plan counts the
    thinking budget, which a thought that never ends fills."""
    model = tiny_sensenova(seed=6, thinking=True)
    exact_on_a_third_of_the_tokens(model, image(), 3.0, thinking(prompts(hooks)), TOKENS)
    if not hooks:
        run = sample_patched(model, image(), 3.0, thinking(prompts()))
        assert run.kv_planned_bytes == run.kv_peak_bytes
