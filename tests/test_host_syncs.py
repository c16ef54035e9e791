"""No host sync per layer (issue 17's bar): on a GPU, reading a tensor's value on the host (`.item()`,
`bool(t)`, data-dependent shapes such as `nonzero`) waits for every queued kernel, so one per layer
would serialise the forward. The CPU cannot see a GPU wait, so these tests count the operators that
cause one, through PyTorch's dispatcher, in a sparse forward of each family at two depths: what the
pack adds must not grow with the number of layers (and stays within a small constant)."""
import contextlib
import importlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from comfyui_sdit.sdit_core.engine import SparseRun
from comfyui_sdit.sdit_core.profiling import launches_kernel
from sdit_testkit import (TINY_HUNYUAN_VIDEO, TINY_LUMINA2, TINY_QWEN_IMAGE, TINY_SD35, TINY_WAN, build_tiny,
                          random_active, tiny_flux)
from test_engine_exactness import patch

aten = torch.ops.aten
# operators whose result the host must wait for on a GPU (values read back, or an output shape that
# depends on values)
SYNCING = {aten._local_scalar_dense, aten.is_nonzero, aten.equal, aten.nonzero, aten.nonzero_static,
           aten.masked_select, aten._unique2, aten.unique_dim, aten.unique_consecutive, aten.allclose}


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0
        self.ops = []
        self.launches = 0           # operators that launch a kernel on a GPU (views launch none)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        self.launches += launches_kernel(func)
        syncs = packet in SYNCING
        if packet is aten.index and any(t is not None and t.dtype == torch.bool for t in args[1]):
            syncs = True                       # boolean-mask indexing has a value-dependent shape
        if packet is aten.repeat_interleave and kwargs.get("output_size") is None and func.name().endswith("Tensor"):
            syncs = True
        if syncs:
            self.count += 1
            self.ops.append(func.name())
        return func(*args, **kwargs)


def count_syncs(forward) -> SyncCounter:
    with SyncCounter() as counter:
        forward()
    return counter


def _context(g, tokens=7, dim=32):
    return torch.randn(1, tokens, dim, generator=g)


def _flux(depth, g):
    return (tiny_flux(seed=1, depth=depth, depth_single_blocks=depth), (1, 16, 8, 12),
            dict(context=_context(g), y=torch.randn(1, 32, generator=g), guidance=torch.tensor([3.5])))


def _sd35(depth, g):
    import comfy.supported_models
    # MMDiT's width is 64 x depth: the text embedder follows it
    embedder = {"target": "torch.nn.Linear", "params": {"in_features": 32, "out_features": 64 * depth}}
    model = build_tiny(comfy.supported_models.SD3, dict(TINY_SD35, depth=depth, context_embedder_config=embedder), seed=1)
    return model, (1, 16, 8, 12), dict(context=_context(g), y=torch.randn(1, 32, generator=g))


def _lumina2(depth, g):
    import comfy.supported_models
    model = build_tiny(comfy.supported_models.Lumina2, dict(TINY_LUMINA2, n_layers=depth, n_refiner_layers=depth), seed=1)
    return model, (1, 16, 8, 12), dict(context=_context(g), num_tokens=7)


def _qwen_image(depth, g):
    import comfy.supported_models
    model = build_tiny(comfy.supported_models.QwenImage, dict(TINY_QWEN_IMAGE, num_layers=depth), seed=1)
    return model, (1, 16, 1, 8, 12), dict(context=_context(g))


def _wan(depth, g):
    import comfy.supported_models
    model = build_tiny(comfy.supported_models.WAN21_T2V, dict(TINY_WAN, num_layers=depth), seed=1)
    return model, (1, 16, 3, 8, 12), dict(context=_context(g))


def _hunyuan_video(depth, g):
    import comfy.supported_models
    from comfyui_sdit.nodes.comfy_compat import hunyuan_video_unet_config
    config = hunyuan_video_unet_config(dict(TINY_HUNYUAN_VIDEO, depth=depth, depth_single_blocks=depth))
    model = build_tiny(comfy.supported_models.HunyuanVideo, config, seed=1)
    return model, (1, 16, 3, 8, 12), dict(context=_context(g), y=torch.randn(1, 32, generator=g),
                                          guidance=torch.tensor([3.5]))


def _cosmos(depth, g):
    import comfy.supported_models
    from test_cosmos import TINY_COSMOS
    model = build_tiny(comfy.supported_models.CosmosT2IPredict2, dict(TINY_COSMOS, num_blocks=depth), seed=1)
    return model, (1, 16, 1, 8, 12), dict(context=_context(g))


def _ltxv(depth, g):
    import comfy.supported_models
    from test_ltxv import TINY_LTXV
    model = build_tiny(comfy.supported_models.LTXV, dict(TINY_LTXV, num_layers=depth), seed=1)
    return model, (1, 128, 3, 8, 12), dict(context=_context(g), attention_mask=torch.ones(1, 7, dtype=torch.long))


def _hunyuan_dit(depth, g):
    import comfy.supported_models
    from test_hunyuan_dit import TINY_HUNYUAN_DIT
    model = build_tiny(comfy.supported_models.HunyuanDiT, dict(TINY_HUNYUAN_DIT, depth=depth), seed=1)
    return model, (1, 4, 8, 12), dict(context=_context(g, 6), text_embedding_mask=torch.ones(1, 6),
                                      encoder_hidden_states_t5=_context(g, 5), text_embedding_mask_t5=torch.ones(1, 5))


def _zimage_fun_controlnet(depth, g):
    """Z-Image with a Fun ControlNet of 30 blocks: ComfyUI's patch runs one after each of the `depth` layers (and
    its 2 refiner blocks first), each on the running tokens through the pack's view of the network (newer ComfyUI)."""
    import comfy.model_patcher
    import comfy.ops
    import comfy.supported_models
    pytest.importorskip("comfy.ldm.lumina.controlnet")
    from test_zimage_fun_controlnet import StandInFluxVAE, control_image, lumina_controlnet, model_patch_nodes
    from sdit_testkit import TINY_ZIMAGE, init_weights_
    config = dict(TINY_ZIMAGE, n_layers=depth, multiple_of=16, ffn_dim_multiplier=0.25)
    model = build_tiny(comfy.supported_models.ZImage, config, seed=1)
    net = lumina_controlnet.ZImage_Control(dim=config["dim"], n_heads=config["n_heads"], n_kv_heads=config["n_kv_heads"],
                                           multiple_of=16, ffn_dim_multiplier=0.25, qk_norm=True, n_control_layers=30,
                                           operations=comfy.ops.disable_weight_init)
    init_weights_(net, 2)
    patch = comfy.model_patcher.ModelPatcher(net, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    with torch.no_grad():
        model = model_patch_nodes.ZImageFunControlnet().diffsynth_controlnet(model, patch, StandInFluxVAE(),
                                                                              control_image(), 1.0)[0]
    return model, (1, 16, 8, 12), dict(context=_context(g), num_tokens=7)


def _wan_infinitetalk(depth, g):
    """Wan with InfiniteTalk's audio patch after every block (newer ComfyUI), its restatement for the running tokens
    checked already (a check reads back once per audio model, not per layer)."""
    import comfy.model_patcher
    import comfy.ops
    import comfy.supported_models
    pytest.importorskip("comfy.ldm.wan.model_multitalk")
    from comfyui_sdit.nodes.families import infinitetalk_audio
    from test_wan_infinitetalk import AUDIO_DIM, AUDIO_TOKENS, DIM, model_patch_nodes, multitalk
    from sdit_testkit import init_weights_
    model = build_tiny(comfy.supported_models.WAN21_T2V, dict(TINY_WAN, dim=DIM, ffn_dim=2 * DIM, num_layers=depth),
                       seed=1)
    net = model_patch_nodes.MultiTalkModelPatch(intermediate_dim=16, in_dim=DIM, out_dim=AUDIO_DIM,
                                                context_tokens=AUDIO_TOKENS, num_layers=depth,
                                                operations=comfy.ops.disable_weight_init)
    init_weights_(net, 2)
    infinitetalk_audio._CHECKED.add(net)
    audio = comfy.model_patcher.ModelPatcher(net, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    model = model.clone()
    model.model_options["transformer_options"]["audio_embeds"] = torch.randn(1, 3, AUDIO_TOKENS, AUDIO_DIM, generator=g)
    model.set_model_patch(multitalk.MultiTalkCrossAttnPatch(audio, 1.0), "attn2_patch")
    return model, (1, 16, 3, 8, 12), dict(context=_context(g))


def _helios(depth, g):
    """Helios (newest ComfyUI): the history's tokens before the chunk's, their keys amplified."""
    pytest.importorskip("comfy.ldm.helios.model")
    from test_helios import history_values, tiny_helios
    return (tiny_helios(seed=1, num_layers=depth, is_amplify_history=True), (1, 16, 3, 8, 12),
            dict(context=_context(g), **history_values(frames=3)))


def _ltx2(depth, g):
    """LTX-2 (newer ComfyUI): the video and its audio, the audio's attention to the video through the cache."""
    pytest.importorskip("comfy.ldm.lightricks.av_model")
    from test_ltx2 import TINY_LTX2
    import comfy.supported_models
    model = build_tiny(comfy.supported_models.LTXAV, dict(TINY_LTX2, num_layers=depth), seed=1)
    return model, ((1, 128, 3, 8, 12), (1, 8, 7, 16)), dict(context=_context(g, dim=64), frame_rate=25)


def _minimax_h3(depth, g, fun_controlnet=False):
    """MiniMax H3 (newer ComfyUI): one packed sequence [text | audio | video], the video's tokens sparse; with its Fun
    ControlNet, whose tower runs whole beside the sparse blocks."""
    pytest.importorskip("comfy.ldm.minimax.model")
    from test_minimax_h3 import TINY_H3
    import comfy.supported_models
    model = build_tiny(comfy.supported_models.MiniMaxH3, dict(TINY_H3, num_layers=depth), seed=1)
    with torch.no_grad():                        # a buffer ComfyUI leaves for the checkpoint to fill
        model.model.diffusion_model.rope.inv_freq.copy_(torch.tensor([1.0, 0.3]))
    if fun_controlnet:
        pytest.importorskip("comfy.ldm.minimax.controlnet")
        from test_minimax_h3_fun_controlnet import with_fun_controlnet
        model = with_fun_controlnet(model)
    frames = 2 if fun_controlnet else 3             # (the ControlNet's VAE makes 5k + 2 latent frames)
    return model, ((1, 24, frames, 8, 12), (1, 32, 2, 17)), dict(context=_context(g, dim=64))


def _kandinsky6(depth, g):
    """Kandinsky 6 (newest ComfyUI): the video and its audio, the audio's attention to the video through the cache."""
    pytest.importorskip("comfy.ldm.kandinsky6.model")
    from test_kandinsky6 import AUDIO_CHANNELS, AUDIO_TOKENS, tiny_k6
    return (tiny_k6(seed=1, num_visual_blocks=depth), ((1, 16, 3, 8, 12), (1, AUDIO_TOKENS, AUDIO_CHANNELS)),
            dict(context=_context(g), y=torch.randn(1, 32, generator=g)))


def _qwen_image21(depth, g, fun_controlnet=False):
    """Qwen-Image 2.1 (newer ComfyUI): [prompt | target], a token per latent pixel; with its Fun ControlNet, whose tower
    runs on the running tokens through K/V cache layers of its own."""
    import comfy.supported_models
    if not hasattr(comfy.supported_models, "QwenImage21"):
        pytest.skip("this ComfyUI has no Qwen-Image 2.1")
    from test_qwen_image21 import tiny_qwen_image21
    model = tiny_qwen_image21(seed=1, num_layers=depth)
    if fun_controlnet:
        qwen_nodes = importlib.import_module("comfy_extras.nodes_qwen")
        if not hasattr(qwen_nodes, "QwenImage21FunControlNetApply"):
            pytest.skip("this ComfyUI has no Qwen-Image 2.1 Fun ControlNet")
        from test_qwen_image21_fun_controlnet import with_fun_controlnet
        model = with_fun_controlnet(model)
    return model, (1, 64, 8, 12), dict(context=_context(g))


def _newer(module: str, model_class: str, config_module: str, config: str, depth_key: str):
    """A family only newer ComfyUI has (a token per latent pixel of Flux 2's 128 channels), or a skip."""
    def build(depth, g):
        import comfy.supported_models
        pytest.importorskip(module)
        tiny = getattr(importlib.import_module(config_module), config)
        model = build_tiny(getattr(comfy.supported_models, model_class), dict(tiny, **{depth_key: depth}), seed=1)
        return model, (1, 128, 8, 12), dict(context=_context(g))
    return build


FAMILIES = {"flux": _flux, "sd35": _sd35, "lumina2": _lumina2, "qwen_image": _qwen_image, "cosmos": _cosmos,
            "wan": _wan, "hunyuan_video": _hunyuan_video, "ltxv": _ltxv, "hunyuan_dit": _hunyuan_dit,
            "ernie": _newer("comfy.ldm.ernie.model", "ErnieImage", "test_ernie", "TINY_ERNIE", "num_layers"),
            "mage_flow": _newer("comfy.ldm.mage_flow.model", "MageFlow", "test_mage_flow", "TINY_MAGE_FLOW", "num_layers"),
            "zimage_fun_controlnet": _zimage_fun_controlnet, "wan_infinitetalk": _wan_infinitetalk, "helios": _helios,
            "kandinsky6": _kandinsky6, "ltx2": _ltx2, "minimax_h3": _minimax_h3, "qwen_image21": _qwen_image21,
            "minimax_h3_fun_controlnet": lambda depth, g: _minimax_h3(depth, g, fun_controlnet=True),
            "qwen_image21_fun_controlnet": lambda depth, g: _qwen_image21(depth, g, fun_controlnet=True)}
PATCH = {"ltxv": 1, "ltx2": 1, "ernie": 1, "mage_flow": 1, "qwen_image21": 1, "qwen_image21_fun_controlnet": 1}     # a token per latent voxel or pixel; the others 2 x 2 pixels


def syncs_added(family: str, depth: int):
    """Syncing operators of the model's sparse forward under the engine, minus those of its plain
    forward (the model's own), and the operators counted. Planning the step (once per evaluation,
    before the model runs) is not counted: the policy runs on the host by design."""
    g = torch.Generator().manual_seed(0)
    model, shape, kwargs = FAMILIES[family](depth, g)
    if isinstance(shape[0], tuple):         # a latent of several parts (video and audio), handed over as a list
        x = [torch.randn(part, generator=g) for part in shape]
        shape = shape[0]
    else:
        x = torch.randn(shape, generator=g)
    patch_size = PATCH.get(family, 2)
    grid = (shape[-2] // patch_size) * (shape[-1] // patch_size) * (shape[2] if len(shape) == 5 else 1)
    patched, slot, policy = patch(model, [None, random_active(1, grid, grid // 3, seed=4)])
    run = SparseRun(policy, shape, patch_size=patch_size)
    sigma = torch.full((1,), 0.6)
    slot.run = run
    patched.patch_model(load_weights=False)
    try:
        for _ in range(2):                                              # dense (fills the caches), then sparse
            call = run.open_forward(shape, 0.6, None, "s")
            options = dict(patched.model_options["transformer_options"], wrappers=patched.wrappers)
            sparse = count_syncs(lambda: patched.model.diffusion_model(x, sigma, transformer_options=options, **kwargs))
            run.close_forward(call, True)
    finally:
        patched.unpatch_model(unpatch_weights=False)
        slot.run = None
    assert not run.evals[-1].dense
    # the model's own forward, with what other nodes put on it (a ControlNet's patches and wrappers)
    own = dict(model.model_options.get("transformer_options", {}), wrappers=model.wrappers)
    plain = count_syncs(lambda: model.model.diffusion_model(x, sigma, transformer_options=own, **kwargs))
    return sparse.count - plain.count, sparse.ops


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_pack_adds_no_host_sync_per_layer(family):
    shallow, ops_shallow = syncs_added(family, 2)
    deep, ops_deep = syncs_added(family, 4)
    assert deep == shallow, (ops_shallow, ops_deep)
    # per forward: none, but HunyuanVideo's check of which comes first, text or video (one or two
    # torch.equal, by the ComfyUI version's order)
    assert deep <= (2 if family == "hunyuan_video" else 0), ops_deep


def test_segmentation_reads_back_once():
    """SDiT segments every step: Quickshift has no data-dependent shapes, and the contiguity pass reads
    the tree roots back to the host once (connected components there), whatever the batch, the grid or
    how tangled the regions are (a region snaking through the grid took label propagation up to 34
    convergence checks at 128x128, each a host sync on the GPU), for an image batch and a video alike."""
    from comfyui_sdit.sdit_core.segmentation import QuickshiftParams, segment, segment_batch
    from comfyui_sdit.sdit_core.segmentation.contiguity import split_disconnected
    from test_segmentation import snake_labels
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 32, 32, 8, generator=g).cumsum(1).cumsum(2) * 0.05      # smooth: a few regions
    params = QuickshiftParams(kernel_size=2.0, max_dist=6.0, ratio=4.0)
    with SyncCounter() as counter, counting_reads() as reads:
        labels = segment_batch(features, params)
    assert 1 < int(labels.max()) < 32 * 32 // 4
    assert counter.ops == [] and reads == [(2, 32, 32)]
    video = torch.randn(3, 12, 14, 8, generator=g).cumsum(1).cumsum(2) * 0.05          # a 3-D grid, 3 frames
    with SyncCounter() as counter, counting_reads() as reads:
        segment(video, params, "torch", frame_scale=1.0)
    assert counter.ops == [] and reads == [(1, 3, 12, 14)]                        # a batch of one video
    snake = snake_labels(128, 128)
    with SyncCounter() as counter, counting_reads() as reads:
        labels = split_disconnected(snake)
    assert labels[snake == 1].unique().numel() == 1, "the snake is one region"
    assert counter.ops == [] and reads == [(128, 128)]
    # the tie-breaking noise reaches the device once per grid (on a GPU its copy blocks the host)
    from comfyui_sdit.sdit_core.segmentation.quickshift_torch import tie_noise_on, window_constants
    before = tie_noise_on.cache_info().misses, window_constants.cache_info().misses
    assert torch.equal(segment_batch(features, params), segment_batch(features, params))
    assert (tie_noise_on.cache_info().misses, window_constants.cache_info().misses) == before


@contextlib.contextmanager
def counting_reads():
    """Shapes of the tensors read to the host with `.cpu()` or `.tolist()`, as the pack reads device
    tensors (on a GPU each waits for the queued kernels; on the CPU they are no-ops the dispatcher
    cannot see)."""
    reads, originals = [], {name: getattr(torch.Tensor, name) for name in ("cpu", "tolist")}

    def counted(original):
        def read(tensor, *args, **kwargs):
            reads.append(tuple(tensor.shape))
            return original(tensor, *args, **kwargs)
        return read
    for name, original in originals.items():
        setattr(torch.Tensor, name, counted(original))
    try:
        yield reads
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def test_an_sdit_evaluation_reads_the_host_a_fixed_number_of_times(monkeypatch):
    """Between two forwards the sampler waits for the policy, whose tensors hold one value per token: on a
    GPU its time is launches and host reads, not work (bench/policy_cost.py). One sparse SDiT evaluation,
    on the code path a GPU takes, reads values back: plan 3 (the batch's token count, the chosen tokens
    for the engine, and the probes' room, read off the host's own tensors), on_output 1 (both drift
    errors at once), observe 2 (the tree roots for connected components, the region count), and
    launches a bounded number of operators (255 with torch 2.14, 372 before the contiguity pass moved
    to the host and on_output reused inactive_output's prediction)."""
    import functools
    from comfyui_sdit.sdit_core.policy import EvalInfo, StepOutput
    from comfyui_sdit.sdit_core.sdit import SDiTConfig, SDiTPolicy
    from comfyui_sdit.sdit_core.segmentation import quickshift_torch
    monkeypatch.setattr(quickshift_torch, "_window_sq_dist", functools.partial(quickshift_torch._window_sq_dist, unfold=True))
    g = torch.Generator().manual_seed(0)
    grid, rows = (32, 32), 4
    x = torch.randn(2, 16, 64, 64, generator=g)
    denoised = torch.randn(2, 16, 64, 64, generator=g).cumsum(-1).cumsum(-2) / 32
    step = StepOutput(x, denoised, x - denoised, torch.ones(2))
    output = torch.randn(rows, 32 * 32, 16, generator=g)
    policy = SDiTPolicy(SDiTConfig(sample_ratio=0.25, warmup_steps=1, drift_threshold=0.0), patch_size=2)
    counted = {}
    for index in range(3):
        info = EvalInfo(index, index, 28, 1.0 - index / 28, grid, 2)
        with SyncCounter() as plan, counting_reads() as plan_reads:
            active = policy.plan(info)
        computed = None if active is None else active.repeat(rows // 2, 1)
        with SyncCounter() as on_output, counting_reads() as on_output_reads:
            policy.inactive_output("rows", info, output)
            policy.on_output("rows", info, output, computed)
        with SyncCounter() as observe, counting_reads() as observe_reads:
            policy.observe(step)
        counted[index] = dict(plan=plan.count + len(plan_reads), on_output=on_output.count + len(on_output_reads),
                              observe=observe.count + len(observe_reads), ops=plan.launches + on_output.launches + observe.launches)
    assert active is not None, "the last evaluation was sparse"
    ops = counted[2].pop("ops")
    assert counted[2] == dict(plan=3, on_output=1, observe=2), counted
    assert ops <= 300, ops
