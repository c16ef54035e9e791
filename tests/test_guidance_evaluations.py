"""Guidance beyond cond + uncond. Nodes that evaluate a perturbed network inside a sampler step (ComfyUI's
Skip Layer Guidance: the same prompt again with some blocks replaced): that forward is another network, it
must get its own stream (K/V cache, cached output) and belong to the step's evaluation, never overwrite the
caches of the plain network's forward of the same prompt (at cfg 1 that one runs the same conditioning
alone). Guiders that run three prompts in one call (DualCFGGuider, PerpNegGuider): each prompt's rows of an
image compute that image's tokens."""
import importlib

import pytest
import torch

import comfy.model_patcher
import comfy.samplers

from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from comfyui_sdit.sdit_core.tokens import index_to_mask
from test_neighbours import ksampler, ras_patch
from test_ras_sampler import latent, ras_args
from test_sdit_sampler import defaults
from test_video import conds as video_conds, video_latent
from test_wan_vace import tiny_vace, vace_prompts
from sdit_testkit import (flux_conditioning, pooled_conditioning, random_active, ras_sample, sdit_model_patch,
                          tiny_flux, tiny_sd3, tiny_wan)

slg_nodes = importlib.import_module("comfy_extras.nodes_slg")
custom_sampling = importlib.import_module("comfy_extras.nodes_custom_sampler")
perp_neg = importlib.import_module("comfy_extras.nodes_perpneg")


def skip_block(args, extra):
    return args


def with_discarded_skip_layer_evaluation(model, block: int):
    """Skip Layer Guidance's extra evaluation (the cond prompt with `block` skipped), its result dropped:
    with every stream kept apart, sampling gives exactly what it gives without it."""
    m = model.clone()

    def post_cfg(args):
        options = comfy.model_patcher.set_model_options_patch_replace(args["model_options"].copy(), skip_block,
                                                                       "dit", "double_block", block)
        comfy.samplers.calc_cond_batch(args["model"], [args["cond"]], args["input"], args["sigma"], options)
        return args["denoised"]
    m.set_model_sampler_post_cfg_function(post_cfg)
    return m


def sd3_args(**overrides):
    return ras_args(positive=pooled_conditioning(1), negative=pooled_conditioning(2), **overrides)


def wan_args(**overrides):
    return ras_args(**video_conds(), **overrides)


def vace_args(**overrides):
    return ras_args(**vace_prompts(2, strengths=[0.7, 1.3]), **overrides)


CASES = {   # model, sampler arguments, latent, the block the perturbed network skips
    "flux": (tiny_flux, ras_args, lambda: latent(1), 1),
    "sd3": (tiny_sd3, sd3_args, lambda: latent(1), 1),
    # Wan's tokens enter sparse at the first block that runs: skipping block 0 must not skip that
    "wan-block0": (tiny_wan, wan_args, lambda: {"samples": video_latent(1)}, 0),
    "wan-block1": (tiny_wan, wan_args, lambda: {"samples": video_latent(1)}, 1),
    # ... and Wan VACE's first VACE block then runs on the whole video, before the tokens are gathered
    "wan-vace-block0": (tiny_vace, vace_args, lambda: {"samples": video_latent(1)}, 0),
}


@pytest.mark.parametrize("cfg", [1.0, 3.0])
@pytest.mark.parametrize("case", sorted(CASES))
def test_an_evaluation_of_a_perturbed_network_leaves_the_sampling_of_the_plain_one_unchanged(case, cfg):
    build, make_args, make_latent, block = CASES[case]
    model = build(seed=60)
    a, lat = make_args(cfg=cfg, sample_ratio=0.25), make_latent()
    for patch in (lambda m: ras_patch(m, sample_ratio=0.25),
                  lambda m: sdit_model_patch(m, **defaults(sample_ratio=0.25))[0]):
        alone = ksampler(patch(model), a, lat)
        with_extra = ksampler(with_discarded_skip_layer_evaluation(patch(model), block), a, lat)
        assert torch.equal(with_extra, alone)
    # one evaluation per step: the extra forward joins the step's evaluation, it does not start one
    _, trace = ras_sample(with_discarded_skip_layer_evaluation(model, block), latent_image=lat, **a)
    assert len(trace.steps) == a["steps"]


def skip_layer_guidance(model, simple: bool):
    if simple:
        return slg_nodes.SkipLayerGuidanceDiTSimple.execute(model, 0.0, 1.0, "1", "1")[0]
    return slg_nodes.SkipLayerGuidanceDiT.execute(model, 3.0, 0.0, 0.5, "1", "1", 0.0)[0]


@pytest.mark.parametrize("cfg", [1.0, 3.0])
@pytest.mark.parametrize("simple", [False, True], ids=["SkipLayerGuidanceDiT", "SkipLayerGuidanceDiTSimple"])
def test_skip_layer_guidance_with_every_token_active_equals_it_alone(simple, cfg):
    model = tiny_flux(seed=61)
    a, lat = ras_args(cfg=cfg), latent(1)
    reference = ksampler(skip_layer_guidance(model, simple), a, lat)
    everything = ksampler(skip_layer_guidance(ras_patch(model, sample_ratio=1.0, warmup_steps=1), simple), a, lat)
    assert (everything - reference).abs().max().item() <= 1e-5
    out, trace = ras_sample(skip_layer_guidance(model, simple), latent_image=lat, **dict(a, sample_ratio=0.25))
    assert torch.isfinite(out["samples"]).all() and len(trace.steps) == a["steps"]
    assert any(0 < step.tokens < 64 for step in trace.steps), "sparse steps ran"


class StreamRecorder(FixedPlanPolicy):
    """Plays back plans; records how many streams (caches) the run holds at each forward."""

    def __init__(self, plans):
        super().__init__(plans)
        self.run, self.held = None, []      # (eval index, streams held)

    def on_output(self, stream, info, output, computed):
        self.held.append((info.index, len(self.run.streams)))


def test_the_perturbed_network_has_its_own_stream_dropped_when_its_guidance_stops():
    steps = 8
    policy = StreamRecorder([None] + [random_active(1, 64, 16, seed=i) for i in range(steps - 1)])

    def make(run):
        policy.run = run
        return policy
    patched, slot = apply_token_sparse(tiny_flux(seed=62), make, node="test")
    guided = slg_nodes.SkipLayerGuidanceDiT.execute(patched, 3.0, 0.0, 0.5, "1", "1", 0.0)[0]
    ksampler(guided, dict(ras_args(cfg=3.0), steps=steps), latent(1))
    run = slot.last_run
    assert len(run.evals) == steps
    main = run.evals[0].calls[0].stream
    perturbed = [[c for c in e.calls if c.stream != main] for e in run.evals]
    guided_evals = [i for i, calls in enumerate(perturbed) if calls]
    assert guided_evals == list(range(len(guided_evals))) and 2 <= len(guided_evals) < steps - 2
    calls = [c for cs in perturbed for c in cs]
    assert calls[0].dense and not any(c.dense for c in calls[1:]), "dense once, then sparse on its own cache"
    assert all(len(e.calls) == 1 + bool(p) for e, p in zip(run.evals, perturbed))
    # the eval after the guidance stopped still holds its stream; the ones after it do not
    assert {held for index, held in policy.held if index > guided_evals[-1] + 1} == {1}


THREE_PROMPT_GUIDERS = {   # guiders that run three prompts in one model call (rows: a chunk of images per prompt)
    "DualCFGGuider-regular": lambda m, c: custom_sampling.DualCFGGuider.execute(m, *c, 3.0, 2.0, "regular")[0],
    "DualCFGGuider-nested": lambda m, c: custom_sampling.DualCFGGuider.execute(m, *c, 3.0, 2.0, "nested")[0],
    "PerpNegGuider": lambda m, c: perp_neg.PerpNegGuider.execute(m, *c, 3.0, 1.0)[0],
}


@pytest.mark.parametrize("guider", sorted(THREE_PROMPT_GUIDERS))
def test_guiders_with_three_prompts_are_exact_on_the_active_tokens_of_each_image(guider):
    """Evaluation 0 dense, evaluation 1 sparse on the same input with a different active set per image:
    every prompt's rows of an image compute that image's tokens, exactly, and the guided result equals
    the dense one (inactive tokens reuse outputs of the same input)."""
    batch, tokens, n = 2, 64, 16
    active = random_active(batch, tokens, n, seed=3)
    recorded = []

    class Recorder(FixedPlanPolicy):
        def on_output(self, stream, info, output, computed):
            recorded.append((info.index, output.clone(), computed))
    patched, slot = apply_token_sparse(tiny_flux(seed=63), lambda run: Recorder([None, active]), node="test")
    denoised = []

    def evaluate_twice(model, x, sigmas, extra_args=None, callback=None, disable=None):
        for _ in range(2):
            denoised.append(model(x, sigmas[0] * x.new_ones([x.shape[0]]), **extra_args))
        return x
    prompts = (flux_conditioning(1), flux_conditioning(2), flux_conditioning(3))
    custom_sampling.SamplerCustomAdvanced.execute(
        custom_sampling.RandomNoise.execute(5)[0], THREE_PROMPT_GUIDERS[guider](patched, prompts),
        comfy.samplers.KSAMPLER(evaluate_twice), torch.tensor([0.8, 0.0]), latent(batch))
    assert [(index, out.shape[0]) for index, out, _ in recorded] == [(0, 3 * batch), (1, 3 * batch)], "one call"
    (_, dense, _), (_, sparse, computed) = recorded
    assert torch.equal(computed, active.sort(dim=1).values.repeat(3, 1)), "each row computes its image's tokens"
    on_active = index_to_mask(computed, tokens)
    assert (sparse - dense).abs().amax(dim=-1)[on_active].max().item() <= 1e-5
    assert torch.equal(sparse[~on_active], dense[~on_active])
    assert (denoised[1] - denoised[0]).abs().max().item() <= 1e-5


def test_a_network_with_self_attention_skipped_is_a_stream_of_its_own():
    """Newer ComfyUI's LTX-Video STG evaluates the cond prompt again with `stg_self_attn_blocks` in its
    transformer_options: those blocks skip self-attention, so its forward makes fewer attention calls (another
    network: its own K/V cache and cached output, as a block replaced by Skip Layer Guidance gives)."""
    from comfyui_sdit.nodes.sparse_patch import _stream_key
    plain = {"uuids": ["cond"], "cond_or_uncond": [0]}
    perturbed = dict(plain, stg_self_attn_blocks=frozenset({1}))
    assert _stream_key(perturbed) != _stream_key(plain)
    assert _stream_key(perturbed) == _stream_key(dict(plain, stg_self_attn_blocks={1}))
    assert _stream_key(dict(plain, stg_self_attn_blocks=frozenset())) == _stream_key(plain)


def prompt_with_scheduled_lora(model, switch_at: float):
    """The positive prompt with a conditioning hook (ComfyUI's "Create Hook Model as LoRA" and "Set Hook
    Keyframes": a LoRA made of weights 0.9 x the model's own) at strength 1 until `switch_at` of the run, 0.2 after."""
    import comfy.hooks
    weights = {key: value * 0.9 for key, value in model.model.state_dict().items() if value.ndim == 2}
    hooks = comfy.hooks.create_hook_model_as_lora(weights, None, 1.0, 1.0)
    keyframes = comfy.hooks.HookKeyframeGroup()
    keyframes.add(comfy.hooks.HookKeyframe(strength=1.0, start_percent=0.0))
    keyframes.add(comfy.hooks.HookKeyframe(strength=0.2, start_percent=switch_at))
    hooks.set_keyframes_on_hooks(keyframes)
    return comfy.hooks.set_hooks_for_conditioning(flux_conditioning(1), hooks)


def test_a_hook_keyframe_that_changes_the_weights_starts_the_prompts_streams_afresh():
    """A LoRA hook on the positive prompt whose keyframe lowers its strength halfway: from that step the prompt runs
    another network, whose first forward is dense (the keys, values and outputs cached under the old weights are
    not read again) and whose later forwards are sparse on its own cache; the negative prompt, without hooks,
    keeps one stream throughout."""
    steps = 8
    model = tiny_flux(seed=64)
    policy = StreamRecorder([None] + [random_active(1, 64, 16, seed=i) for i in range(steps - 1)])

    def make(run):
        policy.run = run
        return policy
    patched, slot = apply_token_sparse(model, make, node="test")
    a = dict(ras_args(cfg=3.0, positive=prompt_with_scheduled_lora(model, 0.5)), steps=steps)
    ksampler(patched, a, latent(1))
    by_prompt = {}
    for call in (c for e in slot.last_run.evals for c in e.calls):
        by_prompt.setdefault(call.stream[0][0], []).append(call)      # its lineage: prompts, conditions, device
    hooked, plain = sorted(by_prompt.values(), key=lambda calls: len({c.stream for c in calls}), reverse=True)
    assert len(hooked) == len(plain) == steps
    assert len({c.stream for c in hooked}) == 2 and len({c.stream for c in plain}) == 1
    switch = next(i for i, c in enumerate(hooked) if c.stream != hooked[0].stream)
    assert 2 <= switch < steps - 1
    assert [c.dense for c in hooked] == [True] + [False] * (switch - 1) + [True] + [False] * (steps - switch - 1)
    assert [c.dense for c in plain] == [True] + [False] * (steps - 1)
    assert {held for index, held in policy.held if index > 0} == {2}, "the old weights' stream dropped at once"
