"""Sparse forwards replayed from graphs (sdit_core/forward_graphs.py), on the CPU.

CUDA graphs need a GPU, so these tests capture with a stand-in that has the property that matters: a
replay sees only what the capture saw. It replays by running the captured forward again with the
capture-time call object, its arguments and its index taken from the static buffers; anything the
forward reads from the new call, or from a tensor that is not a static buffer, comes out stale, and
the sampled result differs from eager sampling (the negative control below shows that it does).
The stand-in also notes every host read inside a capture (a CUDA capture refuses them). On a GPU machine,
`SDIT_TESTS_ON_GPU=1` adds the real CUDA-graph backend to the equality tests, and bench/speed_forward.py
--cuda-graphs times it.
"""
import contextlib
import importlib
import logging
from typing import Callable, NamedTuple

import comfy.model_management
import comfy.model_patcher
import pytest
import torch

from comfyui_sdit.nodes.comfy_compat import weights_may_move
from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core import engine, forward_graphs
from comfyui_sdit.sdit_core.forward_graphs import CudaGraphBackend
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from sdit_testkit import FAMILIES, TinyFamily, ksample, random_active, text_conditioning, tiny_wan
from test_cosmos import CONTEXT as COSMOS_CONTEXT, tiny_cosmos
from test_host_syncs import SyncCounter

comfy_nodes = importlib.import_module("nodes")   # ComfyUI's nodes.py

# the image families, and Cosmos Predict2 / Anima on one-frame latents (a family of video tests elsewhere)
GRAPHED = dict(FAMILIES, cosmos=TinyFamily(tiny_cosmos, lambda: text_conditioning(1, 7, COSMOS_CONTEXT),
                                           lambda: text_conditioning(2, 7, COSMOS_CONTEXT), frames=True,
                                           attention_layers=2))


@pytest.fixture(autouse=True)
def capture_any_repeated_count(monkeypatch):
    """These tests check what a replay computes, on plans of a few evaluations: capture every count
    that comes back (by default only one planned often enough to repay a capture is)."""
    monkeypatch.setenv(forward_graphs.MIN_USES_FLAG, "1")


@pytest.fixture
def captured_graphs(monkeypatch) -> list:
    """Every graph the test's runs capture (forward_graphs._Graph: its static buffers), in order."""
    graphs = []
    capture = forward_graphs.GraphedForwards._capture

    def keeping(self, *args):
        graphs.append(capture(self, *args))
        return graphs[-1]
    monkeypatch.setattr(forward_graphs.GraphedForwards, "_capture", keeping)
    return graphs


class ReplayByRerun:
    """Graph backend stand-in: capture runs the body once; replay runs it again and copies the result
    into the static output (what a CUDA graph's replay leaves in the captured output tensor). It notes the
    operators of a capture that would make the host wait for the GPU, which a CUDA capture refuses."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.captures = 0
        self.replays = 0
        self.syncs = []

    def supports(self, tensor):
        return True

    def capture(self, body):
        with SyncCounter() as counter, as_if_capturing():
            output = body()
        self.syncs.extend(counter.ops)
        if self.fail:                            # fails after the forward ran, leaving its traces behind
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captures += 1

        def replay():
            self.replays += 1
            with as_if_capturing():
                again = body()
            for static, value in zip(*((output, again) if isinstance(output, tuple) else ((output,), (again,)))):
                static.copy_(value)
        return replay, output


@contextlib.contextmanager
def as_if_capturing():
    """What the engine sees while CUDA captures a graph (`capturing_graph`): it skips its one-off host checks,
    which the eager forward before every capture made."""
    seen = engine.capturing_graph
    engine.capturing_graph = lambda tensor: True
    try:
        yield
    finally:
        engine.capturing_graph = seen


def collecting(backends: list, backend=None, **options):
    """A graph-backend factory that keeps every backend it makes (one per sampling run)."""
    def make():
        backends.append((backend or ReplayByRerun)(**options))
        return backends[-1]
    return make


def ksample_planned(model, latent: dict, prompts: dict, plans, make_backend=None, cfg=3.0):
    """KSampler on `latent`, one step per plan (each step one evaluation): the samples and the run."""
    patched, slot = apply_token_sparse(model, lambda run: FixedPlanPolicy(plans), node="test",
                                       graph_backend=make_backend or (lambda: None))
    samples = comfy_nodes.KSampler().sample(patched, 5, len(plans), cfg, "euler", "simple", prompts["positive"],
                                            prompts["negative"], latent)[0]["samples"]
    return samples, slot.last_run


def sample(model, family, plans, make_backend=None, batch=2, size=(16, 16), cfg=3.0):
    """A family of GRAPHED sampled with `plans`: the samples and the run."""
    spec = GRAPHED[family]
    return ksample_planned(model, {"samples": spec.latent(batch, *size)},
                           dict(positive=spec.positive(), negative=spec.negative()), plans, make_backend, cfg)


def plans_for(family, batch=2, size=(16, 16), ratio=0.25, evals=6, shared=False):
    tokens = GRAPHED[family].tokens(*size)
    return random_plans(tokens, int(tokens * ratio), batch, evals, shared)


def random_plans(tokens: int, n: int, batch: int = 2, evals: int = 6, shared: bool = False) -> list:
    """A dense evaluation, then sparse ones of n random tokens, per image or one set for every image."""
    plans = [None]
    for e in range(1, evals):
        active = random_active(batch, tokens, n, seed=e).sort(dim=1).values
        plans.append(active[:1].expand(batch, -1).contiguous() if shared else active)
    return plans


class CountingCudaGraphs(CudaGraphBackend):
    """The real backend, counting what it does (SDIT_TESTS_ON_GPU=1 on a GPU machine)."""

    def __init__(self):
        super().__init__()
        self.captures = 0
        self.replays = 0

    def capture(self, body):
        replay, output = super().capture(body)
        self.captures += 1

        def counted():
            self.replays += 1
            replay()
        return counted, output


on_gpu = comfy.model_management.get_torch_device().type == "cuda"
BACKENDS = [pytest.param(ReplayByRerun, id="stand-in"),
            pytest.param(CountingCudaGraphs, id="cuda", marks=pytest.mark.skipif(
                not on_gpu, reason="CUDA graphs need a GPU: SDIT_TESTS_ON_GPU=1 on a GPU machine"))]


# graphed parts of one forward: Flux and SD3 the whole sparse part; Lumina 2 / Z-Image each of their
# 2 noise-refiner and 2 joint layers; Qwen-Image each of its 2 blocks (a pair of outputs: text, image);
# Cosmos Predict2 / Anima each of its 2 blocks
GRAPHS_PER_FORWARD = {"flux": 1, "chroma": 1, "flux2": 1, "sd3": 1, "sd35": 1, "lumina2": 4, "zimage": 4, "qwen_image": 2,
                      "cosmos": 2}


def assert_replays_equal(graphed, eager, backend):
    if not isinstance(graphed, torch.Tensor):            # LTX-2's video and audio latent (ComfyUI's NestedTensor)
        for graphed_part, eager_part in zip(graphed.unbind(), eager.unbind(), strict=True):
            assert_replays_equal(graphed_part, eager_part, backend)
        return
    if backend is ReplayByRerun:
        assert torch.equal(graphed, eager)
    else:   # the same kernels; cuBLAS may pick another algorithm on the capture stream
        assert (graphed - eager).abs().max().item() <= 1e-4 * eager.abs().max().item()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", sorted(GRAPHS_PER_FORWARD))
@pytest.mark.parametrize("shared", [False, True], ids=["per-image-sets", "shared-set"])
def test_replayed_forwards_equal_eager_ones(family, shared, backend):
    model = GRAPHED[family].build(seed=2)
    plans = plans_for(family, shared=shared)
    eager, eager_run = sample(model, family, plans)
    backends = []
    graphed, graphed_run = sample(model, family, plans, collecting(backends, backend=backend))
    assert_replays_equal(graphed, eager, backend)
    assert getattr(backends[0], "syncs", []) == []
    # first sparse forward eager (warm-up), second captured, then replayed: 4 replays of 5 sparse forwards, per stream
    graphs = GRAPHS_PER_FORWARD[family] * GRAPHED[family].cfg_streams
    assert [b.captures for b in backends] == [graphs]
    assert backends[0].replays == 4 * graphs
    assert ([c.attention_image_rows for e in graphed_run.evals for c in e.calls]
            == [c.attention_image_rows for e in eager_run.evals for c in e.calls])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["2B", "14B", "image-to-video"])
def test_cosmos_video_blocks_replay_what_eager_ones_compute(layout, backend):
    """Cosmos on a 5-frame video, two prompts of different lengths (two streams): the 14B layout's learned position
    embeddings and Video2World's modulation per frame (a given first frame) are block arguments gathered per running
    token; the grid the final layer scatters to, learnt at the first block, outlives each capture."""
    from test_cosmos import FRAME_TOKENS, FRAMES, first_frame_given, latent, prompts
    model = tiny_cosmos(seed=3, layout=layout)
    given = first_frame_given(2) if layout == "image-to-video" else {"samples": latent(2)}
    plans = random_plans(FRAMES * FRAME_TOKENS, FRAMES * FRAME_TOKENS // 3)      # a third of the tokens
    eager, _ = ksample_planned(model, given, prompts(), plans)
    backends = []
    graphed, _ = ksample_planned(model, given, prompts(), plans, collecting(backends, backend=backend))
    assert_replays_equal(graphed, eager, backend)
    assert getattr(backends[0], "syncs", []) == []
    assert backends[0].captures == 2 * 2 and backends[0].replays == 2 * 4 * 2     # streams x replays x blocks


def wan_videos(module) -> torch.Tensor:
    """Two empty videos of a Wan variant's test module, at its sizes."""
    return torch.zeros(2, 16, module.FRAMES, module.HEIGHT, module.WIDTH)


class BlockGraphCase(NamedTuple):
    """A family whose blocks replay one by one: its test module, its tiny model, a latent (or a LATENT dict) of two
    images or videos, their token count and prompts of two lengths (two streams at cfg 3)."""
    module: str
    build: Callable
    latent: Callable
    tokens: Callable = lambda m: m.TOKENS
    prompts: Callable = lambda m: m.prompts()
    streams: int = 2                            # 1 where the model pads both prompts to one length
    skip: Callable = lambda m: None             # why this ComfyUI cannot sample it sparse, if it cannot
    shared: bool = False                        # one active set for every image (a model that asks for it)


def hunyuan_variant(name: str) -> BlockGraphCase:
    """A model on HunyuanVideo's class, as test_hunyuan_variants.py builds it (its CASES)."""
    return BlockGraphCase("test_hunyuan_variants", lambda m: m.CASES[name].build(3), lambda m: m.CASES[name].latent(2),
                          lambda m: m.CASES[name].tokens, lambda m: m.CASES[name].make_prompts())


BLOCK_GRAPHS = {
    "AuraFlow": BlockGraphCase("test_auraflow", lambda m: m.tiny_auraflow(seed=3), lambda m: m.latent(2)),
    "Krea 2": BlockGraphCase("test_krea2", lambda m: m.tiny_krea2(seed=3), lambda m: m.latent(2)),
    "Ideogram 4": BlockGraphCase("test_ideogram4", lambda m: m.tiny_ideogram4(seed=3), lambda m: m.latent(2)),
    "JoyImage": BlockGraphCase("test_joyimage", lambda m: m.tiny_joyimage(seed=3), lambda m: m.latent(2)),
    "Lens": BlockGraphCase("test_lens", lambda m: m.tiny_lens(seed=3), lambda m: m.latent(2)),
    "OmniGen2": BlockGraphCase("test_omnigen2", lambda m: m.tiny("OmniGen2", seed=3), lambda m: m.latent(2)),
    "Boogu-Image": BlockGraphCase("test_omnigen2", lambda m: m.tiny("Boogu-Image", seed=3), lambda m: m.latent(2)),
    "PixArt-Σ": BlockGraphCase("test_pixart", lambda m: m.tiny_pixart("PixArt-Σ", seed=3), lambda m: m.latent(2)),
    # its RoPE tables come as a (cos, sin) pair: a static buffer each
    "HunyuanDiT": BlockGraphCase("test_hunyuan_dit", lambda m: m.tiny_hunyuan_dit(seed=3), lambda m: m.latent(2),
                                 streams=1),
    "ERNIE-Image": BlockGraphCase("test_ernie", lambda m: m.tiny_ernie(seed=3), lambda m: m.latent(2)),
    "Mage-Flow": BlockGraphCase("test_mage_flow", lambda m: m.tiny_mage_flow(seed=3), lambda m: m.latent(2)),
    "Mage-Flow reference": BlockGraphCase("test_mage_flow", lambda m: m.tiny_mage_flow(seed=3), lambda m: m.latent(2),
                                          prompts=lambda m: m.with_reference()),
    # Wan and its variants: one frame (Wan as an image model) or a short video, under the token bound
    "Wan 2.1 T2V": BlockGraphCase("test_video", lambda m: m.tiny_wan(seed=3), lambda m: m.video_latent(2),
                                  prompts=lambda m: m.conds()),
    "Wan 2.1 T2I": BlockGraphCase("test_video", lambda m: m.tiny_wan(seed=3), lambda m: m.video_latent(2, frames=1),
                                  tokens=lambda m: m.TOKENS // m.FRAMES, prompts=lambda m: m.conds()),
    "Wan 2.1 I2V": BlockGraphCase("test_video", lambda m: m.tiny_wan_i2v(seed=3), lambda m: m.video_latent(2),
                                  prompts=lambda m: m.i2v_conds()),
    # per-token timesteps (a given first frame): the modulation is a block argument gathered per running token
    "Wan 2.2 TI2V": BlockGraphCase("test_video", lambda m: m.tiny_wan22_ti2v(seed=3), lambda m: given_first_frame(m),
                                   prompts=lambda m: m.conds()),
    "Wan VACE": BlockGraphCase("test_wan_vace", lambda m: m.tiny_vace(seed=3), wan_videos,
                               prompts=lambda m: m.vace_prompts(2, strengths=[0.7, 1.3])),
    "Wan Animate": BlockGraphCase("test_wan_animate", lambda m: m.tiny_animate(seed=3),
                                  wan_videos, prompts=lambda m: m.animate_prompts()),
    "Wan HuMo": BlockGraphCase("test_wan_humo", lambda m: m.tiny_humo(seed=3), wan_videos,
                               prompts=lambda m: m.humo_prompts()),
    "Wan S2V": BlockGraphCase("test_wan_s2v", lambda m: m.tiny_s2v(seed=3), wan_videos,
                              prompts=lambda m: m.s2v_prompts(),
                              skip=lambda m: None if m.HANDS_OPTIONS_TO_BLOCKS else "its blocks get no options here"),
    "Wan SCAIL": BlockGraphCase("test_wan_scail", lambda m: m.tiny_scail(seed=3),
                                lambda m: m.scail_prompts(batch=2)[1]["samples"],
                                prompts=lambda m: m.scail_prompts(batch=2)[0]),
    "WanDancer": BlockGraphCase("test_wan_dancer", lambda m: m.tiny_dancer(seed=3), lambda m: m.latent(2),
                                prompts=lambda m: m.dancer_prompts()),
    # HunyuanVideo's double and single blocks
    "HunyuanVideo": BlockGraphCase("test_video", lambda m: m.tiny_hunyuan_video(seed=3), lambda m: m.video_latent(2),
                                   prompts=lambda m: m.hunyuan_conds()),
    "HunyuanVideo 1.5 I2V": hunyuan_variant("hunyuan-video-1.5-i2v"),
    "HunyuanImage 2.1": hunyuan_variant("hunyuan-image-2.1"),
    "LTX-Video": BlockGraphCase("test_ltxv", lambda m: m.tiny_ltxv(seed=3), lambda m: m.latent(2)),
    # the start frame's tokens at timestep 0: the modulation is per token, a block argument gathered with them
    "LTX-Video I2V": BlockGraphCase("test_ltxv", lambda m: m.tiny_ltxv(seed=3), lambda m: m.image_to_video(2)[1],
                                    prompts=lambda m: m.image_to_video(2)[0]),
    # LTX-2: the block's input is a (video, audio) pair; a multimodal guider's pass without the attention between
    # them (flags in the options) is a third network
    "LTX-2": BlockGraphCase("test_ltx2", lambda m: m.tiny_ltx2(seed=3), lambda m: m.av_latent(2)),
    "LTX-2 modality pass": BlockGraphCase("test_ltx2", lambda m: m.with_a_modality_isolated_pass(m.tiny_ltx2(seed=3)),
                                          lambda m: m.av_latent(2), streams=3),
    # PixelDiT's patch blocks and pixel blocks (whose RoPE rows, fetched inside, follow the static index); it runs one
    # set of patches for a batch
    "PixelDiT": BlockGraphCase("test_pixeldit", lambda m: m.tiny_pixeldit(seed=3), lambda m: m.image(2), shared=True),
    # PiD: PixelDiT's blocks with the low-quality latent's features gated in between them, eagerly
    "PiD": BlockGraphCase("test_pid", lambda m: m.tiny_pid("v1.5", seed=3), lambda m: m.image(2), shared=True),
    "Kandinsky 5 image": BlockGraphCase("test_kandinsky5", lambda m: m.tiny_kandinsky5(seed=3, kind="image"),
                                        lambda m: m.latent("image", 2), lambda m: m.tokens("image")),
    "Kandinsky 5 video": BlockGraphCase("test_kandinsky5", lambda m: m.tiny_kandinsky5(seed=3),
                                        lambda m: m.latent("video", 2), lambda m: m.tokens("video")),
    # Lumina 2's layers with reference images leading the sequence (Z-Image Omni) or following it as frames
    # (Ming-Image edit): how many lead, learnt at the first layer, outlives each capture (call.layout)
    "Z-Image Omni": BlockGraphCase("test_zimage_omni", lambda m: m.tiny_zimage(seed=3), lambda m: m.latent(2)),
    "Ming-Image edit": BlockGraphCase("test_ming_image", lambda m: m.tiny_ming(seed=3), lambda m: m.latent(2),
                                      lambda m: m.GRID, lambda m: m.prompts(direct=True, reference=True)),
    # Helios: the history's tokens before the chunk's (how many, learnt at the first block, in call.layout), their
    # keys amplified; the chunk's running count a plain block argument
    "Helios": BlockGraphCase("test_helios", lambda m: m.tiny_helios(seed=3, is_amplify_history=True),
                             lambda m: m.latent(2), prompts=lambda m: m.helios_prompts()),
    # Kandinsky 6: the fused block's input a (video, audio) pair, the audio's attention to the video a cache layer
    "Kandinsky 6": BlockGraphCase("test_kandinsky6", lambda m: m.tiny_k6(seed=3), lambda m: m.joint_latent(2)),
}


def module_skip_reason(module):
    """Why a test module's own tests skip on this ComfyUI (its module-level `skipif` mark), if they do."""
    marks = getattr(module, "pytestmark", [])
    for mark in marks if isinstance(marks, list) else [marks]:
        if mark.name == "skipif" and mark.args and mark.args[0]:
            return mark.kwargs.get("reason", "skipped by its module")
    return None


def given_first_frame(module) -> dict:
    """Two videos of Wan 2.2 TI2V's 48 channels whose first frame is given (ComfyUI's noise mask): its timestep per
    frame."""
    samples = torch.randn(2, 48, module.FRAMES, module.HEIGHT, module.WIDTH, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 1, module.FRAMES, module.HEIGHT, module.WIDTH)
    mask[:, :, 0] = 0.0
    return {"samples": samples, "noise_mask": mask}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", sorted(BLOCK_GRAPHS))
def test_block_graphs_replay_what_eager_blocks_compute(family, backend):
    """Each block's sparse calls replay from a graph of its own, two streams (prompts of two lengths, cfg 3) where the
    model keeps them apart, the active sets per image: equal to eager, no host read inside a capture, every block
    captured once per stream."""
    case = BLOCK_GRAPHS[family]
    module = importlib.import_module(case.module)          # skips where this ComfyUI lacks the family
    reason = module_skip_reason(module) or case.skip(module)
    if reason:
        pytest.skip(reason)
    latent = case.latent(module)                           # a latent, or a LATENT dict (a noise mask, two parts)
    latent = latent if isinstance(latent, dict) else {"samples": latent}
    model, prompts = case.build(module), case.prompts(module)
    count = case.tokens(module)
    plans = random_plans(count, count // 3, shared=case.shared)
    eager, _ = ksample_planned(model, latent, prompts, plans)
    backends = []
    graphed, _ = ksample_planned(model, latent, prompts, plans, collecting(backends, backend=backend))
    assert_replays_equal(graphed, eager, backend)
    assert getattr(backends[0], "syncs", []) == []
    patched, _ = apply_token_sparse(model, lambda run: FixedPlanPolicy(plans), node="test")
    blocks = sum(getattr(patch, "sdit_graph", False) for patch in patched.object_patches.values())
    graphs = case.streams * blocks
    assert blocks > 0 and backends[0].captures == graphs and backends[0].replays == 4 * graphs


def test_wan_context_windows_stay_eager_with_graphs_on():
    """ComfyUI's context windows: a window runs its share of the step's plan, a count the policy never planned (it
    plans whole videos), so no window is captured, and sampling with graphs on equals sampling without."""
    from test_video import conds, video_latent
    from test_video_windows import FRAMES, TOKENS, with_windows
    model = with_windows(tiny_wan(seed=3))
    active = random_active(1, TOKENS, TOKENS // 3, seed=1).sort(dim=1).values
    plans = [None] + [active] * 5
    latent = {"samples": video_latent(1, frames=FRAMES)}       # (the windows take one video at a time)
    eager, _ = ksample_planned(model, latent, conds(), plans)
    backends = []
    graphed, run = ksample_planned(model, latent, conds(), plans, collecting(backends))
    assert torch.equal(graphed, eager)
    assert len({call.stream for e in run.evals for call in e.calls}) == 6      # 3 windows x 2 prompts
    assert backends[0].captures == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_flux2_edit_references_replay_what_eager_forwards_compute(backend):
    """Flux 2 edit: the reference tokens (always running, after the grid) take timestep 0 from a position handed to
    the forward as a list of [start, end) pairs, a plain argument: its graph is keyed by them."""
    import comfy.ldm.flux.model
    from test_engine_exactness import knows_reference_method
    if not knows_reference_method(comfy.ldm.flux.model, "index_timestep_zero"):
        pytest.skip("this ComfyUI has no index_timestep_zero reference method")
    spec = FAMILIES["flux2"]
    reference = dict(reference_latents=[torch.randn(1, 128, 4, 4, generator=torch.Generator().manual_seed(3))],
                     reference_latents_method="index_timestep_zero", guidance=None, pooled_output=None)
    prompts = dict(positive=text_conditioning(1, 7, **reference), negative=text_conditioning(2, 5, **reference))
    latent = {"samples": spec.latent(2, 8, 8)}
    plans = random_plans(spec.tokens(8, 8), spec.tokens(8, 8) // 3)
    model = spec.build(seed=2)
    eager, _ = ksample_planned(model, latent, prompts, plans)
    backends = []
    graphed, _ = ksample_planned(model, latent, prompts, plans, collecting(backends, backend=backend))
    assert_replays_equal(graphed, eager, backend)
    # one stream: ComfyUI pads Flux 2's prompts to one length, so cond and uncond run batched
    assert backends[0].captures == 1 and backends[0].replays == 4


def flux_controlnet_prompts(end_percent: float):
    """Flux prompts under a tiny XLabs-style Flux ControlNet (ComfyUI's own ControlNetFlux, random weights) applied by
    ComfyUI's ControlNetApplyAdvanced up to `end_percent` of the steps: residuals for every block, new each step."""
    import comfy.controlnet
    import comfy.ldm.flux.controlnet
    import comfy.ops
    from sdit_testkit import TINY_FLUX, flux_conditioning, init_weights_
    from comfyui_sdit.nodes.comfy_compat import flux_unet_config
    config = {name: value for name, value in flux_unet_config(TINY_FLUX).items() if name != "image_model"}
    control_model = comfy.ldm.flux.controlnet.ControlNetFlux(operations=comfy.ops.disable_weight_init, **config)
    init_weights_(control_model, seed=5)
    control = comfy.controlnet.ControlNet(control_model, load_device=comfy.model_management.get_torch_device(),
                                          extra_conds=["y", "guidance"])
    hint = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(4))
    positive, negative = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(
        flux_conditioning(1), flux_conditioning(2), control, hint, 1.0, 0.0, end_percent)
    return dict(positive=positive, negative=negative)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flux_controlnet_residuals_replay_what_eager_forwards_compute(backend, captured_graphs):
    """ControlNet's residuals reach the graphed forward as a dict of lists of tensors: each gets a static buffer,
    copied in before a replay (a replay that read the capture's residuals would differ). Without control (after its
    end percent) the forward has another key: its own graph."""
    spec = FAMILIES["flux"]
    latent = {"samples": spec.latent(2, 16, 16)}
    plans = plans_for("flux", evals=9)
    model = spec.build(seed=2)
    eager, _ = ksample_planned(model, latent, flux_controlnet_prompts(0.5), plans)
    plain, _ = ksample_planned(model, latent, dict(positive=spec.positive(), negative=spec.negative()), plans)
    assert (eager - plain).abs().max().item() > 1e-3, "the residuals count"
    backends = []
    graphed, run = ksample_planned(model, latent, flux_controlnet_prompts(0.5), plans,
                                   collecting(backends, backend=backend))
    assert_replays_equal(graphed, eager, backend)
    assert getattr(backends[0], "syncs", []) == []
    # 8 sparse evaluations, the first ones with residuals, the last ones without: each of the two keys sighted
    # eagerly once, then captured (and replayed) and replayed from then on; the ControlNet's own 4 blocks (token-sparse
    # with the model until its end percent) likewise, a graph each
    controlled = sum(1 for e in run.evals for c in e.side_calls if not c.dense)
    assert controlled >= 3
    assert backends[0].captures == 2 + 4 and backends[0].replays == 8 - 2 + 4 * (controlled - 1)
    # the tiny ControlNet's 2 double and 2 single blocks' residuals, for the model's 19 + 38 blocks: 4 buffers
    control = next(g for g in captured_graphs if "control" in g.static_args).static_args["control"]
    assert (len(control["input"]), len(control["output"])) == (19, 38)
    assert len({id(residual) for residual in control["input"] + control["output"]}) == 4


def projecting_control(channels: int, hidden: int, entries: int):
    """A ControlNet as ComfyUI's sampler sees one (comfy.controlnet.ControlBase): residuals for the first `entries` of
    SD3's joint blocks from the noisy latent (each 2 x 2 patch projected to the hidden size), two distinct tensors
    handed out in turn, as a ControlNet with fewer blocks than the model does."""
    import comfy.controlnet
    g = torch.Generator().manual_seed(6)
    projections = [0.1 * torch.randn(channels * 4, hidden, generator=g) for _ in range(2)]

    class ProjectingControl(comfy.controlnet.ControlBase):
        def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
            b, c, h, w = x_noisy.shape
            patches = x_noisy.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * 4)
            residuals = [patches @ projection.to(x_noisy) for projection in projections]
            return {"output": [residuals[i % 2] for i in range(entries)]}

        def copy(self):
            return ProjectingControl()
    return ProjectingControl()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["sd3", "sd35"])
def test_sd3_controlnet_residuals_replay_what_eager_forwards_compute(family, backend, captured_graphs):
    """SD3's graphed forward gets the residuals of its joint blocks in a dict: one buffer per distinct tensor."""
    spec = FAMILIES[family]
    model = spec.build(seed=2)
    control = projecting_control(16, model.model.diffusion_model.x_embedder.proj.out_channels, entries=3)
    prompts = {name: [[text, dict(values, control=control)] for text, values in conditioning]
               for name, conditioning in dict(positive=spec.positive(), negative=spec.negative()).items()}
    latent = {"samples": spec.latent(2, 16, 16)}
    plans = plans_for(family)
    eager, _ = ksample_planned(model, latent, prompts, plans)
    plain, _ = ksample_planned(model, latent, dict(positive=spec.positive(), negative=spec.negative()), plans)
    assert (eager - plain).abs().max().item() > 1e-3, "the residuals count"
    backends = []
    graphed, _ = ksample_planned(model, latent, prompts, plans, collecting(backends, backend=backend))
    assert_replays_equal(graphed, eager, backend)
    assert backends[0].captures == 1 and backends[0].replays == 4
    residuals = captured_graphs[0].static_args["control"]["output"]
    assert residuals[0] is residuals[2] is not residuals[1]


def test_hunyuan_video_token_replacement_keeps_the_blocks_eager():
    """HunyuanVideo image-to-video by token replacement modulates the first frame's running tokens apart by spans
    (plain values a graph bakes in) that follow where they are: a graph would seldom come back, so it runs eagerly."""
    from test_video import TOKENS, hunyuan_conds, hunyuan_replace_conds, tiny_hunyuan_video, video_latent
    model = tiny_hunyuan_video(seed=3)
    active = random_active(1, TOKENS, TOKENS // 3, seed=1).sort(dim=1).values
    plans = [None] + [active] * 5                 # the same spans every time: a graph would be captured
    latent = {"samples": video_latent(1)}         # (ComfyUI runs token replacement one video at a time)
    eager, _ = ksample_planned(model, latent, hunyuan_replace_conds(), plans)
    backends = []
    graphed, _ = ksample_planned(model, latent, hunyuan_replace_conds(), plans, collecting(backends))
    assert torch.equal(graphed, eager)
    assert backends[0].captures == 0
    ksample_planned(model, latent, hunyuan_conds(), plans, collecting(backends))
    assert backends[1].captures > 0              # without token replacement the same blocks are captured


def test_anima_lllite_keeps_the_blocks_eager():
    """Anima LLLite hands each block its control features through the forward's options (a post-input patch):
    a replay would read the capture's, so its blocks run eagerly."""
    from test_cosmos import FRAME_TOKENS, anima_prompts, latent, tiny_anima, with_lllite
    model = with_lllite(tiny_anima())
    plans = random_plans(FRAME_TOKENS, FRAME_TOKENS // 3)
    eager, _ = ksample_planned(model, {"samples": latent(2, 1)}, anima_prompts(), plans)
    backends = []
    graphed, _ = ksample_planned(model, {"samples": latent(2, 1)}, anima_prompts(), plans, collecting(backends))
    assert torch.equal(graphed, eager)
    assert backends[0].captures == 0


def test_plain_arguments_key_a_graph_by_value_and_tensors_get_static_buffers_by_layout():
    """A block's plain arguments (PixArt's grid (rows, cols), empty keyword arguments) are baked into its graph at
    capture, so they are part of its key; tensors in tuples, lists and dicts (RoPE tables, ControlNet's residuals) get
    static buffers, keyed by their layout; an argument of another kind (an object) would be baked in: no graph."""
    signature = forward_graphs._signature
    assert signature((4, 6)) == signature((4, 6)) != signature((4, 8)) != signature([4, 8])
    assert signature({}) == signature({}) and signature({"scale": 2.0}) != signature({"scale": 3.0})
    tables = (torch.zeros(2, 3), torch.ones(2, 3))
    assert signature(tables) == signature((torch.ones(2, 3), torch.ones(2, 3))) != signature((torch.zeros(2, 4),) * 2)
    assert signature(((1, torch.zeros(2)),)) != signature(((2, torch.zeros(2)),))
    assert [t.shape for t in forward_graphs.tensors_in([(1, tables[0]), tables[1], None])] == [(2, 3), (2, 3)]
    control = {"output": [torch.zeros(2, 5)], "input": [torch.zeros(2, 3), None]}
    assert signature(control) == signature({"input": [torch.ones(2, 3), None], "output": [torch.ones(2, 5)]})
    assert signature(control) != signature({"input": [torch.zeros(2, 3)], "output": [torch.zeros(2, 5)]})
    assert signature(control) != signature(dict(control, input=[torch.zeros(2, 4), None]))
    assert [t.shape for t in forward_graphs.tensors_in(control)] == [(2, 3), (2, 5)]
    for other in (object(), {1: torch.zeros(2)}, ({"features": [object()]},)):
        with pytest.raises(TypeError):
            signature(other)


def test_tensors_in_a_dict_are_copied_into_their_static_buffers():
    """What a replay reads of a dict argument: the static buffers, holding this call's values."""
    graphs = forward_graphs.GraphedForwards(ReplayByRerun())
    control = {"input": [torch.zeros(2, 3), None], "output": [torch.ones(2, 5)]}
    static = graphs._static("argument control", control)
    assert static["input"][1] is None and static["input"][0] is not control["input"][0]
    later = {"output": [torch.full((2, 5), 7.0)], "input": [torch.full((2, 3), 3.0), None]}
    forward_graphs._copy_in(static, later)
    assert torch.equal(static["input"][0], later["input"][0]) and torch.equal(static["output"][0], later["output"][0])


def test_a_tensor_that_recurs_in_an_argument_has_one_static_buffer_and_the_key_says_where():
    """A ControlNet with fewer blocks than the model hands each residual to several blocks: one buffer per tensor, not
    per block, and a graph captured with shared entries never serves a call whose entries differ (it would read one
    buffer for both)."""
    signature = forward_graphs._signature
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    assert signature({"input": [a, a, b]}) == signature({"input": [b, b, a]}) != signature({"input": [a, b, b]})
    assert signature({"input": [a], "output": [a]}) != signature({"input": [a], "output": [b]})
    graphs = forward_graphs.GraphedForwards(ReplayByRerun())
    static = graphs._static("argument control", {"input": [a, a, b], "output": [a]})
    assert static["input"][0] is static["input"][1] is static["output"][0] is not static["input"][2]
    c, d = torch.full((2, 3), 5.0), torch.full((2, 3), 6.0)
    forward_graphs._copy_in(static, {"input": [c, c, d], "output": [c]})
    assert torch.equal(static["input"][0], c) and torch.equal(static["input"][2], d)


def test_a_graph_is_keyed_by_the_plain_values_of_the_options():
    """The model's code reads the options at capture only: their flags (LTX-2's `run_vx`, `a2v_cross_attn`) and the
    block index are baked into the graph, so they are part of its key; what is not plain (sigmas, uuids) is not."""
    import types
    call = types.SimpleNamespace(attention_calls=0, shared_index=False, image_index_now=lambda: torch.zeros(2, 3),
                                 stream=types.SimpleNamespace(kv=types.SimpleNamespace(generation=0)))
    graphs = forward_graphs.GraphedForwards(ReplayByRerun())

    def key(**options):
        return graphs.key(call, {"x": torch.zeros(2, 3, 4), "transformer_options": options})
    assert key(run_vx=True, block_index=1) == key(block_index=1, run_vx=True)
    assert key(run_vx=True) != key(run_vx=False) != key()
    assert key(block_index=1) != key(block_index=2)
    assert key(sigmas=torch.ones(1), uuids=[object()]) == key(sigmas=torch.zeros(1), uuids=[object()])


def test_layer_graphs_share_their_static_buffers(captured_graphs):
    """Lumina 2 graphs each layer; the layers of one signature share the stream's input, index and output
    buffers (one set per token count, not one per layer: these are as wide as the hidden state)."""
    model = FAMILIES["lumina2"].build(seed=2)
    sample(model, "lumina2", plans_for("lumina2", shared=True), collecting([]))
    graphs = captured_graphs
    joint = graphs[-2:]                        # the two joint layers ([caption | image] rows)
    assert joint[0].static_args["x"] is joint[1].static_args["x"]
    assert joint[0].output is joint[1].output and joint[0].static_index is joint[1].static_index
    assert len({id(g.static_args["x"]) for g in graphs}) == 2      # noise refiner (image rows), joint layers


def test_a_forward_reading_a_non_static_index_is_caught(monkeypatch):
    """Negative control: without the static index buffer the replays use the capture's active set."""
    model = FAMILIES["flux"].build(seed=2)
    plans = plans_for("flux")
    eager, _ = sample(model, "flux", plans)
    monkeypatch.setattr(engine.ForwardCall, "use_static_index", lambda self, buffer: None)
    graphed, _ = sample(model, "flux", plans, collecting([]))
    assert not torch.equal(graphed, eager)


def test_grids_above_the_bound_run_eagerly(monkeypatch):
    """Videos' grids (above SDIT_GRAPH_MAX_TOKENS) are not captured: GPU-bound, and a graph would keep a forward's
    working memory in its pool; up to the bound they are."""
    tokens = FAMILIES["flux"].tokens(16, 16)
    model = FAMILIES["flux"].build(seed=2)
    for bound, captures in ((tokens - 1, 0), (tokens, 1)):
        monkeypatch.setenv(forward_graphs.MAX_TOKENS_FLAG, str(bound))
        backends = []
        sample(model, "flux", plans_for("flux"), collecting(backends))
        assert backends[0].captures == captures
    assert forward_graphs.MAX_TOKENS < 21 * 30 * 52          # Wan 2.1 at 480p x 81 frames


def test_every_token_count_gets_its_own_graph():
    model = FAMILIES["flux"].build(seed=2)
    tokens = FAMILIES["flux"].tokens(16, 16)
    small = [random_active(2, tokens, tokens // 4, seed=e).sort(dim=1).values for e in range(3)]
    large = [random_active(2, tokens, tokens // 2, seed=e).sort(dim=1).values for e in range(3)]
    plans = [None, small[0], large[0], small[1], large[1], small[2], large[2]]
    eager, _ = sample(model, "flux", plans)
    backends = []
    graphed, _ = sample(model, "flux", plans, collecting(backends))
    assert torch.equal(graphed, eager)
    assert backends[0].captures == 2 and backends[0].replays == 4


def test_cache_reallocation_drops_the_graphs():
    """A dense step that has to reallocate the K/V buffers changes their generation: recapture."""
    model = FAMILIES["flux"].build(seed=2)
    plans = plans_for("flux", evals=7)
    plans[4] = None
    original = engine.JointKVCache.store_dense

    def reallocating(self, layer, k, v, seq_dim=1):
        self._layers.pop(layer, None)            # as if the shapes had changed
        original(self, layer, k, v, seq_dim)
    eager, _ = sample(model, "flux", plans)
    backends = []
    engine.JointKVCache.store_dense = reallocating
    try:
        graphed, _ = sample(model, "flux", plans, collecting(backends))
    finally:
        engine.JointKVCache.store_dense = original
    assert torch.equal(graphed, eager)
    # before the dense step: eager, capture (+replay), replay; after it: eager, capture (+replay)
    assert backends[0].captures == 2 and backends[0].replays == 3


def test_block_patches_of_other_nodes_keep_forwards_eager():
    model = FAMILIES["flux"].build(seed=2)
    calls = []

    def block_replace(args, extra):
        calls.append(1)
        return extra["original_block"](args)
    model = model.clone()
    model.set_model_patch_replace(block_replace, "dit", "double_block", 0)
    backends = []
    sample(model, "flux", plans_for("flux"), collecting(backends))
    assert backends[0].captures == 0 and len(calls) == 6       # the replacement ran in every forward


@pytest.mark.parametrize("family, below, own", [("flux", "double_blocks.0.img_attn.qkv", ""),
                                                 ("lumina2", "layers.1.attention", "layers.1")])
def test_module_hooks_below_a_graphed_part_keep_it_eager(family, below, own):
    """Another pack's torch forward hook on a module inside a graphed part (Nunchaku's 4-bit Z-Image packs RoPE in
    one per attention layer) would run at capture only: that part stays eager (Flux's whole forward; one of Lumina's
    layers, the others captured) and the hook runs in every forward. A hook on the graphed module itself (or on the
    model, for a whole-forward graph) runs outside its graph: no obstacle."""
    model = FAMILIES[family].build(seed=2)
    diffusion_model = model.model.diffusion_model
    eager, _ = sample(model, family, plans_for(family))
    graphs = GRAPHS_PER_FORWARD[family] * GRAPHED[family].cfg_streams
    for path, captures in ((own, graphs), (below, graphs - GRAPHED[family].cfg_streams)):
        calls = []
        handle = diffusion_model.get_submodule(path).register_forward_pre_hook(lambda module, args: calls.append(1))
        backends = []
        try:
            graphed, _ = sample(model, family, plans_for(family), collecting(backends))
        finally:
            handle.remove()
        assert backends[0].captures == captures, path
        assert torch.equal(graphed, eager)
        assert len(calls) == 6 * GRAPHED[family].cfg_streams, "the hook ran in every forward"


def test_a_global_module_hook_keeps_forwards_eager():
    """A hook registered for every module (torch's `register_module_forward_pre_hook`) runs inside every graphed part."""
    model = FAMILIES["flux"].build(seed=2)
    eager, _ = sample(model, "flux", plans_for("flux"))
    calls, backends = [], []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        graphed, _ = sample(model, "flux", plans_for("flux"), collecting(backends))
    finally:
        handle.remove()
    assert backends[0].captures == 0 and calls
    assert torch.equal(graphed, eager)


class RefusingDoubles(ReplayByRerun):
    """A backend for float32 tensors only (as CUDA graphs are for CUDA tensors only)."""

    def supports(self, tensor):
        return tensor.dtype != torch.float64


def test_tensors_in_the_options_do_not_decide_whether_a_forward_is_graphed():
    """The options a graphed method gets hold tensors the graph never copies in (the sigmas, and whatever other nodes
    put there, on any device): only the tensors of the other arguments must be the backend's."""
    model = FAMILIES["flux"].build(seed=2).clone()
    model.model_options.setdefault("transformer_options", {})["another_node"] = {"table": [torch.zeros(2, dtype=torch.float64)]}
    backends = []
    sample(model, "flux", plans_for("flux"), collecting(backends, backend=RefusingDoubles))
    assert backends[0].captures == 1 and backends[0].replays == 4


def test_a_failed_capture_falls_back_to_eager(caplog):
    model = FAMILIES["flux"].build(seed=2)
    plans = plans_for("flux")
    eager, eager_run = sample(model, "flux", plans)
    backends = []
    with caplog.at_level(logging.WARNING):
        graphed, graphed_run = sample(model, "flux", plans, collecting(backends, fail=True))
    assert torch.equal(graphed, eager)
    assert "CUDA graph capture failed" in caplog.text
    assert [c.attention_image_rows for e in graphed_run.evals for c in e.calls] == \
        [c.attention_image_rows for e in eager_run.evals for c in e.calls]


def test_graphs_are_on_by_default_where_cuda_is(monkeypatch):
    monkeypatch.delenv(forward_graphs.ENV_FLAG, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert isinstance(forward_graphs.default_backend(), CudaGraphBackend)
    monkeypatch.setenv(forward_graphs.ENV_FLAG, "0")               # the eager fallback, by choice
    assert forward_graphs.default_backend() is None
    monkeypatch.delenv(forward_graphs.ENV_FLAG)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert forward_graphs.default_backend() is None


class DynamicPatcher(comfy.model_patcher.ModelPatcher):
    """What newer ComfyUI's ModelPatcherDynamic reports: weights staged on demand, model_lowvram unset."""

    def is_dynamic(self):
        return True

    def clone(self, *args, **kwargs):
        cloned = super().clone(*args, **kwargs)
        cloned.__class__ = DynamicPatcher
        return cloned


def test_forwards_stay_eager_under_dynamic_vram(caplog):
    model = FAMILIES["flux"].build(seed=2).clone()
    model.__class__ = DynamicPatcher
    backends = []
    eager, _ = sample(model, "flux", plans_for("flux"))
    with caplog.at_level(logging.INFO):
        graphed, _ = sample(model, "flux", plans_for("flux"), collecting(backends))
    assert backends[0].captures == 0
    assert torch.equal(graphed, eager)
    # the user learns why, once per run, and what changes it
    assert caplog.text.count("CUDA graphs stay off in this run") == 1 and "--disable-dynamic-vram" in caplog.text


def test_weights_may_move_probe():
    class Model:
        model_lowvram = False

    class Patcher:                     # ComfyUI before dynamic VRAM: no is_dynamic at all
        model = Model()
    patcher = Patcher()
    assert not weights_may_move(patcher)
    patcher.model.model_lowvram = True
    assert weights_may_move(patcher)
    patcher.model.model_lowvram = False
    patcher.is_dynamic = lambda: True
    assert weights_may_move(patcher)
    patcher.is_dynamic = lambda: False
    assert not weights_may_move(patcher)


def test_forwards_stay_eager_on_multigpu_threads():
    """Newer ComfyUI marks forwards it runs in a per-GPU thread: one run's graph pool cannot serve two devices."""
    model = FAMILIES["flux"].build(seed=2).clone()
    model.model_options.setdefault("transformer_options", {})["multigpu_thread_device"] = torch.device("cpu")
    backends = []
    sample(model, "flux", plans_for("flux"), collecting(backends))
    assert backends[0].captures == 0


@pytest.mark.parametrize("sparse_evals,captured", [(5, False), (forward_graphs.MIN_USES + 1, True)])
def test_a_count_is_captured_only_when_planned_often_enough(monkeypatch, sparse_evals, captured):
    """By default a count is captured only if the policy plans it for MIN_USES more evaluations (a
    capture costs about three eager forwards on an H200; a replay saves a fraction of one)."""
    monkeypatch.delenv(forward_graphs.MIN_USES_FLAG)
    model = FAMILIES["flux"].build(seed=2)
    tokens = FAMILIES["flux"].tokens(16, 16)
    active = random_active(2, tokens, tokens // 4, seed=1).sort(dim=1).values
    plans = [None] + [active] * sparse_evals
    backends = []
    eager, _ = sample(model, "flux", plans)
    graphed, _ = sample(model, "flux", plans, collecting(backends))
    assert torch.equal(graphed, eager)
    # at the second sighting sparse_evals - 1 evaluations remain at that count, this one included
    assert backends[0].captures == (1 if captured else 0)
    assert backends[0].replays == (sparse_evals - 1 if captured else 0)


@pytest.mark.parametrize("family", ["flux", "lumina2"])
def test_a_policy_that_cannot_tell_its_counts_never_captures(monkeypatch, family):
    """SDiT's counts follow the image: it cannot say how often one comes back, so nothing is captured,
    and no forward (no layer, for Lumina's per-layer graphs) even checks its arguments or computes a key."""
    from comfyui_sdit.sdit_core.policy import TokenPolicy
    looked = []
    monkeypatch.setattr(forward_graphs.GraphedForwards, "key", lambda self, *args, **kwargs: looked.append("key"))
    monkeypatch.setattr(ReplayByRerun, "supports", lambda self, tensor: looked.append("supports"))
    model = FAMILIES[family].build(seed=2)
    plans = plans_for(family, shared=True)

    class Unplanned(TokenPolicy):
        def plan(self, info):
            return plans[info.index] if info.index < len(plans) else None
    backends = []
    patched, _ = apply_token_sparse(model, lambda run: Unplanned(), node="test", graph_backend=collecting(backends))
    spec = FAMILIES[family]
    ksample(patched, spec.latent(2, 16, 16), seed=5, steps=6, cfg=3.0, positive=spec.positive(), negative=spec.negative())
    assert backends[0].captures == 0
    assert looked == []


def test_ras_plans_its_counts():
    """RAS knows its schedule: a static ratio plans one count for every sparse step, a dynamic one each
    count for a few steps."""
    from comfyui_sdit.sdit_core.policy import EvalInfo
    from comfyui_sdit.sdit_core.ras import RASConfig, RASPolicy
    for dynamic, most in ((False, 22), (True, 3)):
        policy = RASPolicy(RASConfig(sample_ratio=0.125, dynamic_ratio=dynamic), 2)
        info = EvalInfo(index=0, step=0, steps=28, sigma=1.0, grid=(64, 64), batch=1, count_grid=64)
        assert policy.planned_uses(info, 512) is None            # no schedule before the first plan
        policy.plan(info)
        counts = set(policy._schedule.counts.values())
        assert max(policy.planned_uses(info, c) for c in counts) == most
        late = EvalInfo(index=20, step=20, steps=28, sigma=0.3, grid=(64, 64), batch=1, count_grid=64)
        assert sum(policy.planned_uses(late, c) for c in counts) == sum(1 for s in policy._schedule.counts if s >= 20)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["instantx", "fun"])
def test_qwen_image_apply_controlnets_blocks_replay_what_eager_forwards_compute(kind, backend):
    """Qwen-Image with its InstantX or (newer ComfyUI) Fun ControlNet, token-sparse beside the model: the model's blocks
    and the ControlNet's own 2 blocks each replay from a graph of their own; the samples are the eager ones."""
    from sdit_testkit import tiny_qwen_image
    from test_qwen_image_apply_controlnet import HAS_FUN, TOKENS, latent, prompts
    if kind == "fun" and not HAS_FUN:
        pytest.skip("this ComfyUI has no Qwen-Image Fun ControlNet")
    plans = random_plans(TOKENS, TOKENS // 3, evals=6)
    model = tiny_qwen_image(seed=2)
    eager, _ = ksample_planned(model, {"samples": latent(2)}, prompts(kind), plans)
    backends = []
    graphed, run = ksample_planned(model, {"samples": latent(2)}, prompts(kind), plans,
                                   collecting(backends, backend=backend))
    assert_replays_equal(graphed, eager, backend)
    assert getattr(backends[0], "syncs", []) == []
    # 5 sparse evaluations of 2 model blocks and 2 ControlNet blocks: each sighted eagerly once, then replayed
    assert all(not c.dense for e in run.evals[1:] for c in e.side_calls)
    assert backends[0].captures == 4 and backends[0].replays == 4 * (5 - 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["sd3", "sd3.5 medium", "sd3.5 large", "sd3.5 chained"])
def test_sd3_controlnets_blocks_replay_what_eager_forwards_compute(kind, backend):
    """SD3 / SD3.5 with ComfyUI's SD3 or SD3.5 ControlNet (token-sparse beside the model; its blocks called through the
    K/V cache by the pack, as the network calls them bare): the model's forward and the ControlNet's 2 blocks each
    replay from a graph of their own; the samples are the eager ones."""
    from test_sd3_controlnet import KINDS, TOKENS, latent, prompts
    build, controlnet = KINDS[kind]
    plans = random_plans(TOKENS, TOKENS // 3, evals=6)
    model = build(seed=2)
    eager, _ = ksample_planned(model, {"samples": latent(2)}, prompts((controlnet(5), 0.0, 1.0)), plans)
    backends = []
    graphed, run = ksample_planned(model, {"samples": latent(2)}, prompts((controlnet(5), 0.0, 1.0)), plans,
                                   collecting(backends, backend=backend))
    assert_replays_equal(graphed, eager, backend)
    assert getattr(backends[0], "syncs", []) == []
    # 5 sparse evaluations of the model's forward and 2 ControlNet blocks: each sighted eagerly once, then replayed
    assert all(not c.dense for e in run.evals[1:] for c in e.side_calls)
    assert backends[0].captures == 3 and backends[0].replays == 3 * (5 - 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zimage_fun_controlnet_between_replayed_layers(backend):
    """Z-Image with its Fun ControlNet (newer ComfyUI; a patch ComfyUI runs after each refiner and joint layer, eager):
    the model's 2 refiner and 30 joint layers each replay from a graph of their own around it; the samples are the
    eager ones. Another node's patch of a kind that runs inside a layer keeps them eager."""
    from test_zimage_fun_controlnet import LAYERS, TOKENS, latent, prompts, tiny_zimage, with_control
    plans = random_plans(TOKENS, TOKENS // 3, evals=6)
    controlled = with_control(tiny_zimage(seed=2), "2.1")
    eager, _ = ksample_planned(controlled, {"samples": latent(2)}, prompts(), plans)
    backends = []
    graphed, run = ksample_planned(controlled, {"samples": latent(2)}, prompts(), plans,
                                   collecting(backends, backend=backend))
    assert_replays_equal(graphed, eager, backend)
    assert getattr(backends[0], "syncs", []) == []
    layers = 2 + LAYERS         # 5 sparse evaluations: each layer sighted eagerly once, captured, then replayed
    assert backends[0].captures == layers and backends[0].replays == layers * (5 - 1)
    inside = controlled.clone()
    inside.set_model_patch(lambda q, k, v, extra_options: (q, k, v), "attn1_patch")
    backends = []
    ksample_planned(inside, {"samples": latent(2)}, prompts(), plans, collecting(backends, backend=backend))
    assert backends[0].captures == 0
