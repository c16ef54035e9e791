"""Video DiTs (Wan 2.1 / 2.2) on tiny random-weight instances of ComfyUI's real classes (CPU, fp32): the
same exactness set as the image families, over a 3-D token grid (frames, rows, cols)."""
import importlib
import types

import pytest
import torch

from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from sdit_testkit import (assert_exact_on_active_tokens, build_tiny, ksample, random_active, ras_model_patch, ras_sample,
                          sample_with, sdit_model_patch, sdit_sample, text_conditioning, tiny_hunyuan_video, tiny_wan,
                          tiny_wan22_ti2v, tiny_wan_i2v)
from test_engine_exactness import dense_sparse_plain
from test_ras_sampler import ras_args
from test_sdit_sampler import defaults as sdit_defaults

comfy_nodes = importlib.import_module("nodes")   # ComfyUI's nodes.py
TOL = 1e-5
FRAMES, HEIGHT, WIDTH = 5, 8, 12                   # an odd frame count, non-square frames
TOKENS = FRAMES * (HEIGHT // 2) * (WIDTH // 2)


def video_latent(batch=1, channels=16, frames=FRAMES, height=HEIGHT, width=WIDTH):
    return torch.zeros(batch, channels, frames, height, width)


def conds(**extra):
    return dict(positive=text_conditioning(1, 7, **extra), negative=text_conditioning(2, 5, **extra))


def i2v_conds():
    g = torch.Generator().manual_seed(9)
    extra = dict(concat_latent_image=torch.randn(1, 16, FRAMES, HEIGHT, WIDTH, generator=g),
                 concat_mask=torch.ones(1, 1, FRAMES, HEIGHT, WIDTH),
                 clip_vision_output=types.SimpleNamespace(penultimate_hidden_states=torch.randn(1, 257, 1280,
                                                                                               generator=g)))
    return conds(**extra)


def hunyuan_conds(**extra):
    g = torch.Generator().manual_seed(11)
    return dict(positive=text_conditioning(1, 7, pooled_output=torch.randn(1, 32, generator=g), guidance=3.5, **extra),
                negative=text_conditioning(2, 5, pooled_output=torch.randn(1, 32, generator=g), guidance=3.5, **extra))


def hunyuan_replace_conds():
    """HunyuanVideo image-to-video by token replacement: the first frame's tokens are modulated apart."""
    return hunyuan_conds(guiding_frame_index=0)


VARIANTS = {"wan-t2v": (tiny_wan, 16, conds), "wan-i2v": (tiny_wan_i2v, 16, i2v_conds),
            "hunyuan-t2v": (tiny_hunyuan_video, 16, hunyuan_conds)}


class RecordingPolicy(FixedPlanPolicy):
    def __init__(self, plans):
        super().__init__(plans)
        self.outputs = []

    def on_output(self, stream, info, output, computed):
        self.outputs.append((stream, output.clone(), computed))


def dense_then_sparse(model, latent, active, cfg, conds, noise_mask=None) -> dict:
    """One dense and then one sparse forward on the same input, through ComfyUI's sampling (CFG and all, and the
    latent's `noise_mask`): per stream, [(dense output, computed), (sparse output, computed)]."""
    policy = RecordingPolicy([None, active])
    patched, _ = apply_token_sparse(model, lambda run: policy, node="test")

    def twice(model, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        for _ in range(2):
            model(x, sigmas[0] * s_in, **extra_args)
        return x
    sample_with(patched, latent, twice, torch.tensor([0.8, 0.0]), cfg=cfg, seed=9, noise_mask=noise_mask, **conds)
    by_stream = {}
    for stream, out, computed in policy.outputs:
        by_stream.setdefault(stream, []).append((out, computed))
    return by_stream


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(variant, batch, cfg):
    build, channels, make_conds = VARIANTS[variant]
    model = build(seed=3)
    latent = video_latent(batch, channels)
    reference = ksample(model, latent, seed=5, steps=5, cfg=cfg, **make_conds())
    policy = FixedPlanPolicy([None] + [torch.arange(TOKENS).expand(batch, -1)] * 4)
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    sparse = ksample(patched, latent, seed=5, steps=5, cfg=cfg, **make_conds())
    assert (sparse - reference).abs().max().item() <= TOL
    assert [e.dense for e in slot.last_run.evals] == [True, False, False, False, False]
    assert slot.last_run.grid == (FRAMES, HEIGHT // 2, WIDTH // 2)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(variant, batch, cfg):
    build, channels, make_conds = VARIANTS[variant]
    model = build(seed=4)
    latent = video_latent(batch, channels)
    active = random_active(batch, TOKENS, TOKENS // 3, seed=1)
    if batch > 1:
        assert not torch.equal(active[0].sort().values, active[1].sort().values)
    assert_exact_on_active_tokens(dense_then_sparse(model, latent, active, cfg, make_conds()), TOKENS)


def a_given_first_frame_is_kept(model, latent: dict, prompts: dict, tokens: int, cfg: float, tol: float = TOL):
    """A latent whose noise mask keeps frame 0 (a given start image): every token through the sparse path equals
    KSampler (a modulation per frame or per token is gathered with the tokens); the RAS Sampler never computes that
    frame on a sparse step and keeps it. Returns the RAS Sampler's trace."""
    a = ras_args(steps=6, sample_ratio=0.5, warmup_steps=1, reset_steps="", cfg=cfg, **prompts)

    def ksampler(m):
        return comfy_nodes.KSampler().sample(m, a["seed"], 6, cfg, "euler", "simple", a["positive"], a["negative"],
                                             latent)[0]["samples"]
    reference = ksampler(model)
    policy = FixedPlanPolicy([None] + [torch.arange(tokens).expand(latent["samples"].shape[0], -1)] * 5)
    everything = ksampler(apply_token_sparse(model, lambda run: policy, node="test")[0])
    # fp32 rounding grows with the samples' size (a tiny Cosmos reaches 10, where the CPU's own matmul kernels
    # differ by 1.2e-5 between machines): `tol` per unit of the largest value above 1
    assert (everything - reference).abs().max().item() <= tol * max(1.0, reference.abs().max().item())
    out, trace = ras_sample(model, latent_image=latent, **a)
    sparse = [s for s in trace.steps if not s.dense]
    assert sparse and torch.isfinite(out["samples"]).all()
    for s in sparse:
        assert not s.active[:, 0].any(), "the given first frame is never computed on sparse steps"
    assert torch.equal(out["samples"][:, :, 0], reference[:, :, 0]), "the given frame is kept"
    return trace


def test_per_frame_timesteps_of_wan22_ti2v():
    """Wan 2.2 TI2V 5B: with a first-frame image the timestep is per frame, so the modulation is per token
    and is gathered with the tokens; the kept first frame is never picked (it is not repainted)."""
    samples = torch.randn(1, 48, FRAMES, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(1, 1, FRAMES, HEIGHT, WIDTH)
    mask[:, :, 0] = 0.0                                        # frame 0 is the given image
    trace = a_given_first_frame_is_kept(tiny_wan22_ti2v(seed=6), {"samples": samples, "noise_mask": mask}, conds(),
                                        TOKENS, cfg=1.0)
    assert all(s.active.shape == (1, FRAMES, HEIGHT // 2, WIDTH // 2) for s in trace.steps if not s.dense)


def phantom_conds(negative_too: bool = True):
    """Wan Phantom: subject images concatenated in time after the video's frames. With a plain negative
    the two prompts have different token counts: ComfyUI runs them apart (two streams)."""
    subject = torch.randn(1, 16, 2, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(10))
    prompts = conds(time_dim_concat=subject)
    return prompts if negative_too else dict(prompts, negative=conds()["negative"])


SDIT_END_TO_END = dict(sample_ratio=0.3, dilation=0, drift_threshold=0.0, warmup_steps=1, cooldown_steps=0)


def sampler_node_end_to_end(model, latent: dict, prompts: dict, method: str, tokens: int):
    """The RAS or SDiT Sampler node over `latent` (6 steps, cfg 2.5, ratio 0.3) beside a plain KSampler on
    the same model: checks the model passed in is unchanged, some step ran sparse and the result differs
    from full sampling and is finite. Returns (KSampler's samples, the node's samples, its trace, the
    sampling arguments)."""
    a = dict(ras_args(steps=6, cfg=2.5, sample_ratio=0.3, reset_steps=""), **prompts)

    def plain():
        return comfy_nodes.KSampler().sample(model, a["seed"], 6, 2.5, "euler", "simple", a["positive"], a["negative"],
                                             latent)[0]["samples"]
    before = plain()
    if method == "RAS":
        out, trace = ras_sample(model, latent_image=latent, **a)
    else:
        out, trace = sdit_sample(model, a["seed"], 6, 2.5, "euler", "simple", a["positive"], a["negative"], latent,
                                 1.0, **sdit_defaults(**SDIT_END_TO_END))
    assert torch.equal(before, plain()), "the model passed in is unchanged"
    assert trace.batch == latent["samples"].shape[0]
    assert any(0 < t < tokens for t in trace.tokens_per_step), trace.tokens_per_step
    assert torch.isfinite(out["samples"]).all() and (out["samples"] - before).abs().max().item() > 1e-4
    return before, out["samples"], trace, a


def assert_within(tol: float):
    """An assertion that samples equal a reference to `tol` (absolute)."""
    def check(out, reference):
        assert (out - reference).abs().max().item() <= tol
    return check


def assert_within_scale(rel_tol: float):
    """An assertion that samples equal a reference to `rel_tol` of the reference's largest value."""
    def check(out, reference):
        assert (out - reference).abs().max().item() <= rel_tol * reference.abs().max().item()
    return check


def exact_on_a_third_of_the_tokens(model, latent, cfg: float, prompts: dict, tokens: int, extra: int = 0) -> dict:
    """A dense and then a sparse forward with a third of the `tokens` grid tokens (random order, other ones per
    image) agree on the tokens that ran, one stream per prompt at cfg > 1 (`extra`: tokens after the grid).
    Returns dense_then_sparse's outputs by stream."""
    active = random_active(latent.shape[0], tokens, tokens // 3, seed=1)
    by_stream = dense_then_sparse(model, latent, active, cfg, prompts)
    assert len(by_stream) == (2 if cfg > 1 else 1)
    assert_exact_on_active_tokens(by_stream, tokens, extra=extra)
    return by_stream


def every_token_active(model, latent, cfg: float, prompts: dict, tokens: int, assert_same,
                       dense=(True, False, False, False)):
    """4 steps with every token active after a dense first one equal KSampler's (`assert_same(out, reference)`);
    `dense`: which steps ran dense. Returns the run."""
    reference = ksample(model, latent, seed=5, steps=4, cfg=cfg, **prompts)
    policy = FixedPlanPolicy([None] + [torch.arange(tokens).expand(latent.shape[0], -1)] * 3)
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    assert_same(ksample(patched, latent, seed=5, steps=4, cfg=cfg, **prompts), reference)
    assert [e.dense for e in slot.last_run.evals] == list(dense)
    return slot.last_run


def model_patch_nodes_under_ksampler(model, latent: dict, prompts: dict, assert_same) -> None:
    """RAS Model Patch at ratio 1 under a plain KSampler gives the model's own samples; the RAS and SDiT Model
    Patch nodes at a lower ratio sample; the model passed in is unchanged."""
    def sample(m):
        return comfy_nodes.KSampler().sample(m, 4, 5, 2.0, "euler", "simple", prompts["positive"],
                                             prompts["negative"], latent)[0]["samples"]
    reference = sample(model)
    assert_same(sample(ras_model_patch(model, 1.0, 1, "", 0.1, "std", False)[0]), reference)
    values = sdit_defaults(**SDIT_END_TO_END)
    for patched in (ras_model_patch(model, 0.3, 1, "", 0.1, "std", False)[0], sdit_model_patch(model, **values)[0]):
        out = sample(patched)
        assert torch.isfinite(out).all() and (out - reference).abs().max().item() > 1e-4
    assert torch.equal(sample(model), reference), "the model passed in is unchanged"


def skip_layer_guidance_skipping_block_0(model, latent, prompts: dict, tokens: int, assert_same) -> None:
    """Skip Layer Guidance skipping block 0 (its perturbed network gathers the tokens at block 1): every token
    active it equals Skip Layer Guidance alone; with a third of them all three networks (positive, negative,
    perturbed) run sparse."""
    slg = importlib.import_module("comfy_extras.nodes_slg")
    model = slg.SkipLayerGuidanceDiT.execute(model, 3.0, 0.0, 1.0, "0", "", 0.0)[0]
    reference = ksample(model, latent, seed=5, steps=4, cfg=3.0, **prompts)
    for active in (torch.arange(tokens)[None], random_active(1, tokens, tokens // 3, seed=3)):
        policy = FixedPlanPolicy([None] + [active] * 3)
        patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
        out = ksample(patched, latent, seed=5, steps=4, cfg=3.0, **prompts)
        streams = {c.stream for e in slot.last_run.evals[1:] for c in e.calls if not c.dense}
        assert len(streams) == 3
        assert torch.isfinite(out).all()
        if active.shape[1] == tokens:
            assert_same(out, reference)


def a_reference_runs_on_every_step(model, latent, cfg: float, prompts: dict, referenced: dict, tokens: int,
                                   extra: int, assert_same) -> None:
    """With a reference latent in the `referenced` prompts (which changes the result: the precondition), every token
    active equals the model's own sampling and a third of the tokens are exact (`extra`: the reference's tokens in the
    model's output, 0 where the model cuts them off first)."""
    plain = ksample(model, latent, seed=5, steps=3, cfg=cfg, **prompts)
    assert (ksample(model, latent, seed=5, steps=3, cfg=cfg, **referenced) - plain).abs().max().item() > 1e-4
    every_token_active(model, latent, cfg, referenced, tokens, assert_same)
    exact_on_a_third_of_the_tokens(model, latent, cfg, referenced, tokens, extra=extra)


def a_patch_runs_with_every_token_active(model, patched, latent, cfg: float, prompts: dict, tokens: int,
                                         assert_same) -> None:
    """Another node's patch on the model (`patched`), which changes the result (the precondition): every token active
    equals the patched model's own sampling."""
    plain = ksample(model, latent, seed=5, steps=4, cfg=cfg, **prompts)
    assert (ksample(patched, latent, seed=5, steps=4, cfg=cfg, **prompts) - plain).abs().max().item() > 1e-3
    every_token_active(patched, latent, cfg, prompts, tokens, assert_same)


def padding_is_masked(model, latent, prompts: dict) -> None:
    """The precondition of exactness tests with a padded negative prompt: its mask changes the result at cfg 3."""
    masked = ksample(model, latent, seed=5, steps=3, cfg=3.0, **prompts)
    negative = [[prompts["negative"][0][0], dict(prompts["negative"][0][1])]]
    negative[0][1]["attention_mask"] = torch.ones_like(negative[0][1]["attention_mask"])
    unmasked = ksample(model, latent, seed=5, steps=3, cfg=3.0, **dict(prompts, negative=negative))
    assert (unmasked - masked).abs().max().item() > 1e-4


@pytest.mark.parametrize("family", ["wan", "wan-phantom", "wan-phantom-plain-negative", "hunyuan"])
@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_and_patch_nodes_end_to_end_leave_the_model_untouched(method, family):
    model = (tiny_hunyuan_video if family == "hunyuan" else tiny_wan)(seed=7)
    latent = {"samples": video_latent(2)}
    make_conds = {"wan": conds, "wan-phantom": phantom_conds, "hunyuan": hunyuan_conds,
                  "wan-phantom-plain-negative": lambda: phantom_conds(negative_too=False)}[family]
    _, _, trace, a = sampler_node_end_to_end(model, latent, make_conds(), method, TOKENS)
    assert trace.grid == (FRAMES, HEIGHT // 2, WIDTH // 2)
    if method == "RAS":
        (patched,) = ras_model_patch(model, 0.3, 2, "", 0.1, "std", True)
    else:
        (patched,) = sdit_model_patch(model, **sdit_defaults(**SDIT_END_TO_END))
        assert trace.steps[-1].labels.shape == (2, FRAMES, HEIGHT // 2, WIDTH // 2)
    via_patch = comfy_nodes.KSampler().sample(patched, a["seed"], 6, 2.5, "euler", "simple", a["positive"],
                                              a["negative"], latent)[0]["samples"]
    assert torch.isfinite(via_patch).all()


def test_two_experts_each_start_with_a_dense_step():
    """Wan 2.2 A14B: a high-noise and a low-noise expert share one run through two KSamplerAdvanced; each
    is its own patched model, and the second starts with a dense step (its caches are new)."""
    high, low = tiny_wan(seed=8), tiny_wan(seed=9)
    a = dict(ras_args(), **conds())
    latent = {"samples": video_latent()}

    def two_stage(first, second):
        advanced = comfy_nodes.KSamplerAdvanced()
        mid = advanced.sample(first, "enable", 3, 8, 1.0, "euler", "simple", a["positive"], a["negative"], latent,
                              0, 4, "enable")[0]
        return advanced.sample(second, "disable", 3, 8, 1.0, "euler", "simple", a["positive"], a["negative"], mid,
                               4, 10000, "disable")[0]["samples"]
    reference = two_stage(high, low)
    patched = [ras_model_patch(m, 1.0, 1, "", 0.1, "std", False)[0] for m in (high, low)]
    assert (two_stage(*patched) - reference).abs().max().item() <= TOL
    patched = [ras_model_patch(m, 0.4, 1, "", 0.1, "std", False)[0] for m in (high, low)]
    out = two_stage(*patched)
    assert torch.isfinite(out).all() and (out - reference).abs().max().item() > 1e-4


def test_video_variants_with_their_own_forward_get_the_not_supported_error():
    import comfy.supported_models
    from sdit_testkit import TINY_WAN
    import comfy.ldm.wan.model

    class WanWithAForwardOfItsOwn(comfy.ldm.wan.model.WanModel):     # as newer ComfyUI's Animate 2, SCAIL, ...
        def forward_orig(self, *args, **kwargs):
            return super().forward_orig(*args, **kwargs)
    model = build_tiny(comfy.supported_models.WAN21_T2V, TINY_WAN, seed=0)
    model.model.diffusion_model.__class__ = WanWithAForwardOfItsOwn
    with pytest.raises(SDiTInputError, match=r"RAS Sampler: input 'model'.*WanWithAForwardOfItsOwn.*not supported.*Wan"):
        ras_sample(model, latent_image={"samples": video_latent()}, **dict(ras_args(), **conds()))


def test_image_models_refuse_video_latents_clearly():
    from sdit_testkit import tiny_flux
    with pytest.raises(SDiTInputError, match=r"latent_image.*video latents need a video model"):
        ras_sample(tiny_flux(seed=1), latent_image={"samples": video_latent()}, **ras_args())


def test_region_visualizer_and_complexity_map_take_videos():
    from comfyui_sdit.nodes.visual_nodes import ComplexityMap, RegionVisualizer
    model = tiny_wan(seed=10)
    latent = {"samples": video_latent()}
    values = sdit_defaults(**SDIT_END_TO_END)
    out, trace = sdit_sample(model, 3, 5, 1.0, "euler", "simple", conds()["positive"], conds()["negative"],
                                      latent, 1.0, **values)
    result = RegionVisualizer().draw(trace, -1, 0, 0.6)
    images = result["result"][0]
    frame_px, gap = 2 * 8, 4                                   # a token is 16 px; frames side by side
    strip_width = FRAMES * (WIDTH // 2) * frame_px + (FRAMES - 1) * gap
    assert images.shape[0] == 2 + len(trace.steps) and images.shape[1] == (HEIGHT // 2) * frame_px
    assert images.shape[2] >= strip_width
    assert result["ui"]["animated"] == (True,) and result["ui"]["images"][0]["filename"].endswith(".webp")
    # each frame of a mask strip shows exactly that frame's active tokens
    step = trace.steps[-1]
    mask = images[2 + len(trace.steps) - 1]
    for f in range(FRAMES):
        left = f * ((WIDTH // 2) * frame_px + gap)
        drawn = mask[::frame_px, left: left + (WIDTH // 2) * frame_px: frame_px, 0] > 0.5
        assert torch.equal(drawn, step.active[0, f])
    image, masks = ComplexityMap().compute({"samples": out["samples"]}, 2, 0.5, 1.0, 0.5, -1, 0)["result"]
    assert image.shape[0] == 1 and masks.shape == (FRAMES, HEIGHT * 8, WIDTH * 8)


def test_a_single_frame_video_selects_as_the_image_does():
    """The 2-D path is unchanged: a 1-frame 5-D latent has the image's token grid."""
    from comfyui_sdit.sdit_core.tokens import token_grid
    assert token_grid((1, 16, 1, 8, 12), 2) == token_grid((1, 16, 8, 12), 2) == (4, 6)
    assert token_grid((1, 16, 5, 8, 12), 2) == (5, 4, 6)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_hunyuan_token_replace_modulates_the_first_frame_apart(cfg):
    """Image-to-video by token replacement: the first frame's tokens get their own modulation, by position;
    the sparse forward maps those positions to the gathered sequence (ComfyUI runs it one video at a time;
    cond and uncond share the video's tokens)."""
    model = tiny_hunyuan_video(seed=12)
    latent = video_latent(1)
    active = random_active(1, TOKENS, TOKENS // 3, seed=2)
    assert_exact_on_active_tokens(dense_then_sparse(model, latent, active, cfg, hunyuan_replace_conds()), TOKENS)
    plain = ksample(model, latent, seed=5, steps=3, cfg=1.0, **hunyuan_conds())
    replaced = ksample(model, latent, seed=5, steps=3, cfg=1.0, **hunyuan_replace_conds())
    assert (plain - replaced).abs().max().item() > 1e-4, "the replacement matters"


def test_wan_phantom_subject_frames_run_on_every_step():
    """Wan Phantom concatenates its subject images in time after the video's frames: their tokens follow
    the grid and run on every sparse step, as Flux Kontext's references do."""
    model = tiny_wan(seed=13)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 16, FRAMES, HEIGHT, WIDTH, generator=g)
    subject = torch.randn(1, 16, 2, HEIGHT, WIDTH, generator=g)
    kwargs = dict(context=torch.randn(1, 7, 32, generator=g), time_dim_concat=subject)
    dense, sparse, plain, run = dense_sparse_plain(model, x, 0.6, 20, **kwargs)
    assert (dense - plain).abs().max().item() <= TOL and (sparse - plain).abs().max().item() <= TOL
    subject_tokens = 2 * (HEIGHT // 2) * (WIDTH // 2)
    assert run.evals[1].calls[0].attention_image_rows == [20 + subject_tokens] * 2
    without = model.model.diffusion_model(x, torch.full((1,), 0.6), transformer_options={},
                                          **dict(kwargs, time_dim_concat=None))
    assert (without - plain).abs().max().item() > 1e-3, "the subject frames count"


def test_wan_in_context_latents_run_on_every_step():
    """Newer ComfyUI's in-context references (`context_latents`) are embedded after the video's tokens."""
    import inspect
    import comfy.ldm.wan.model
    if "context_latents" not in inspect.getsource(comfy.ldm.wan.model.WanModel.forward_orig):
        pytest.skip("this ComfyUI's Wan has no in-context references")
    model = tiny_wan(seed=14)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 16, FRAMES, HEIGHT, WIDTH, generator=g)
    kwargs = dict(context=torch.randn(1, 7, 32, generator=g),
                  context_latents=[torch.randn(1, 16, 1, HEIGHT, 8, generator=g)])
    dense, sparse, plain, run = dense_sparse_plain(model, x, 0.6, 20, **kwargs)
    assert (dense - plain).abs().max().item() <= TOL and (sparse - plain).abs().max().item() <= TOL
    assert run.evals[1].calls[0].attention_image_rows == [20 + (HEIGHT // 2) * 4] * 2


def test_bernini_in_context_editing_through_its_node():
    """Bernini (ComfyUI's BerniniConditioning for Wan 2.2, 0.33): a source video to edit and a reference image of
    another aspect, each VAE-encoded into `context_latents` by the node; their tokens run on every step: every token
    active equals the model's own sampling, a third of the video's tokens are exact, and the planned K/V cache is
    what the stream holds."""
    bernini = importlib.import_module("comfy_extras.nodes_bernini") if importlib.util.find_spec(
        "comfy_extras.nodes_bernini") else None
    if bernini is None:
        pytest.skip("this ComfyUI has no Bernini node")
    from sdit_testkit import StandInWanVAE
    from test_memory_plan import sample_patched
    model, prompts = tiny_wan(seed=16), conds()
    source = torch.rand((FRAMES - 1) * 4 + 1, HEIGHT * 8, WIDTH * 8, 3, generator=torch.Generator().manual_seed(3))
    reference = torch.rand(1, 48, 32, 3, generator=torch.Generator().manual_seed(4))    # portrait, the video landscape
    positive, negative, latent = bernini.BerniniConditioning.execute(
        prompts["positive"], prompts["negative"], StandInWanVAE(), WIDTH * 8, HEIGHT * 8, (FRAMES - 1) * 4 + 1, 2,
        source_video=source, reference_images={"reference_image_0": reference})
    context = positive[0][1]["context_latents"]
    assert [tuple(c.shape[2:]) for c in context] == [(FRAMES, HEIGHT, WIDTH), (1, 6, 4)]
    extra = sum(c.shape[2] * (c.shape[3] // 2) * (c.shape[4] // 2) for c in context)
    a_reference_runs_on_every_step(model, latent["samples"], 3.0, prompts, dict(positive=positive, negative=negative),
                                   TOKENS, extra, assert_within(TOL))
    run = sample_patched(model, latent["samples"], 3.0, dict(positive=positive, negative=negative))
    assert run.kv_planned_bytes == run.kv_peak_bytes > sample_patched(model, latent["samples"], 3.0, prompts).kv_peak_bytes


def tiny_wan_fun(seed):
    """Wan Fun with a reference image (`ref_conv`): its tokens come before the video's."""
    import comfy.supported_models
    from sdit_testkit import TINY_WAN
    return build_tiny(comfy.supported_models.WAN21_T2V, dict(TINY_WAN, in_dim_ref_conv=16), seed=seed)


def test_wan_reference_image_before_the_video_runs_on_every_step():
    """Wan Fun's reference image (`ref_conv`) puts its tokens before the video's: they run on every sparse step
    (moved after the video's for the engine and back for the model), and both forwards equal the model's."""
    model = tiny_wan_fun(seed=15)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, 16, FRAMES, HEIGHT, WIDTH, generator=g)
    kwargs = dict(context=torch.randn(1, 7, 32, generator=g), reference_latent=torch.randn(1, 16, HEIGHT, WIDTH, generator=g))
    dense, sparse, plain, run = dense_sparse_plain(model, x, 0.6, 20, **kwargs)
    assert (dense - plain).abs().max().item() <= TOL and (sparse - plain).abs().max().item() <= TOL
    reference_tokens = (HEIGHT // 2) * (WIDTH // 2)
    assert run.evals[1].calls[0].attention_image_rows == [20 + reference_tokens] * 2
    # the policies see the video's tokens where the latent has them (the grid first, the reference after it)
    (stream,) = run.streams.values()
    tokens = plain.view(1, 16, FRAMES, 1, HEIGHT // 2, 2, WIDTH // 2, 2).permute(0, 2, 4, 6, 3, 5, 7, 1).flatten(4)
    assert (stream.last_output[:, :TOKENS] - tokens.flatten(1, 3)).abs().max().item() <= TOL
    without = model.model.diffusion_model(x, torch.full((1,), 0.6), transformer_options={}, context=kwargs["context"])
    assert (without - plain).abs().max().item() > 1e-3, "the reference image counts"


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_wan_reference_image_sampled_with_the_sampler_nodes(batch, cfg):
    """Through the prompt (`reference_latents`, as Wan's Fun nodes set it): every token active equals KSampler
    (to 4e-6 of the samples' scale: the reference's tokens attend in another place in the sequence, which rounds
    otherwise); a third of them equal the dense forward on the tokens that ran (the reference's always run); the
    K/V cache holds what the plan counted, the reference's tokens included."""
    from test_memory_plan import sample_patched
    reference = torch.randn(1, 16, 1, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3))
    prompts = conds(reference_latents=[reference])
    latent = video_latent(batch)
    every_token_active(tiny_wan_fun(seed=16), latent, cfg, prompts, TOKENS, assert_within_scale(4e-6))
    exact_on_a_third_of_the_tokens(tiny_wan_fun(seed=17), latent, cfg, prompts, TOKENS,
                                   extra=(HEIGHT // 2) * (WIDTH // 2))
    run = sample_patched(tiny_wan_fun(seed=18), latent, cfg, prompts)
    assert run.kv_planned_bytes == run.kv_peak_bytes > 0


def hunyuan_reference(batch=1):
    """HunyuanImageToVideo's "custom" guidance: the start image's latent, one frame, as `ref_latent`."""
    return torch.randn(batch, 16, 1, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3))


def test_hunyuan_video_reference_latent_runs_on_every_step():
    """HunyuanVideo's reference latent is embedded before the video's tokens: they run on every sparse step beside
    the text (not among the image tokens: [reference | video | text] image first, [text | reference | video] text
    first), and both forwards equal the model's."""
    model = tiny_hunyuan_video(seed=15)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, 16, FRAMES, HEIGHT, WIDTH, generator=g)
    kwargs = dict(context=torch.randn(1, 7, 32, generator=g), y=torch.randn(1, 32, generator=g),
                  guidance=torch.full((1,), 3.5), ref_latent=hunyuan_reference())
    dense, sparse, plain, run = dense_sparse_plain(model, x, 0.6, 20, **kwargs)
    assert (dense - plain).abs().max().item() <= TOL and (sparse - plain).abs().max().item() <= TOL
    blocks = len(model.model.diffusion_model.double_blocks) + len(model.model.diffusion_model.single_blocks)
    assert run.evals[1].calls[0].attention_image_rows == [20] * blocks
    without = model.model.diffusion_model(x, torch.full((1,), 0.6), transformer_options={},
                                          **dict(kwargs, ref_latent=None))
    assert (without - plain).abs().max().item() > 1e-3, "the reference latent counts"


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_hunyuan_video_reference_latent_sampled_with_the_sampler_nodes(cfg):
    """Through the prompt (`ref_latent`, as HunyuanImageToVideo's "custom" guidance sets it): every token active
    equals KSampler; a third of them equal the dense forward on the tokens that ran; the K/V cache holds what the
    plan counted, the reference's tokens included. One video, its prompts of other lengths run apart: ComfyUI's
    model writes into the reference's positions, a broadcast view where a forward has several rows (it fails
    there with or without the pack)."""
    batch = 1
    from test_memory_plan import sample_patched
    prompts = hunyuan_conds(ref_latent=hunyuan_reference())
    latent = video_latent(batch)
    every_token_active(tiny_hunyuan_video(seed=16), latent, cfg, prompts, TOKENS, assert_within_scale(4e-6))
    exact_on_a_third_of_the_tokens(tiny_hunyuan_video(seed=17), latent, cfg, prompts, TOKENS)
    run = sample_patched(tiny_hunyuan_video(seed=18), latent, cfg, prompts)
    assert run.kv_planned_bytes == run.kv_peak_bytes > 0


def test_hunyuan_video_reference_latent_with_token_replacement_is_refused():
    """A reference latent and token replacement together (the replaced frame's modulation spans count from the
    reference's first token): the sampler nodes name the input before anything is sampled; under KSampler a
    Model Patch node's first forward stops."""
    both = hunyuan_conds(ref_latent=hunyuan_reference(), guiding_frame_index=0)
    a = dict(ras_args(steps=2), **dict(hunyuan_conds(), negative=both["negative"]))
    model = tiny_hunyuan_video(seed=16)
    with pytest.raises(SDiTInputError, match=r"RAS Sampler: input 'negative': HunyuanVideo with both a reference"):
        ras_sample(model, latent_image={"samples": video_latent()}, **a)
    with pytest.raises(SDiTInputError, match=r"SDiT Sampler: input 'negative': HunyuanVideo with both a reference"):
        sdit_sample(model, 1, 2, 1.0, "euler", "simple", a["positive"], a["negative"], {"samples": video_latent()},
                    1.0, **sdit_defaults(sample_ratio=0.3))
    patched = ras_model_patch(model, 0.5, 1, "", 0.1, "std", False)[0]
    with pytest.raises(NotImplementedError, match="HunyuanVideo with both a reference latent"):
        comfy_nodes.KSampler().sample(patched, 4, 2, 1.0, "euler", "simple", both["positive"], both["negative"],
                                      {"samples": video_latent()})


def test_a_wan_model_without_ref_conv_ignores_reference_latents():
    out, _ = ras_sample(tiny_wan(seed=15), latent_image={"samples": video_latent()},
                        **dict(ras_args(steps=2), **conds(reference_latents=[hunyuan_reference()])))
    assert torch.isfinite(out["samples"]).all()
