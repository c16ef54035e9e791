"""Other nodes on the same MODEL, and our own patches applied twice: a correct result or a clear error
naming both nodes, never a shape error deep in the engine (nodes/neighbours.py)."""
import functools
import importlib
import importlib.util

import pytest
import torch

import comfy.patcher_extension as patcher_extension

from comfyui_sdit.nodes.errors import SDiTInputError
from comfyui_sdit.nodes.visual_nodes import RegionVisualizer
from test_ras_sampler import latent, plain_ksampler, ras_args
from test_sdit_sampler import defaults
from sdit_testkit import flux_conditioning, ras_model_patch, ras_sample, sdit_model_patch, sdit_sample, tiny_flux

comfy_nodes = importlib.import_module("nodes")   # ComfyUI's nodes.py
RAS_VALUES = ("sample_ratio", "warmup_steps", "reset_steps", "starvation_scale", "metric", "dynamic_ratio")


def ras_patch(model, **overrides):
    a = ras_args(**overrides)
    return ras_model_patch(model, **{k: a[k] for k in RAS_VALUES})[0]


def ksampler(model, a, lat):
    return comfy_nodes.KSampler().sample(model, a["seed"], a["steps"], a["cfg"], a["sampler_name"], a["scheduler"],
                                         a["positive"], a["negative"], lat, denoise=a["denoise"])[0]["samples"]


def test_a_second_model_patch_replaces_the_first():
    model = tiny_flux(seed=40)
    a, lat = ras_args(cfg=3.0), latent(1)
    alone = ksampler(ras_patch(model, sample_ratio=0.25), a, lat)
    stacked = ksampler(ras_patch(ras_patch(model, sample_ratio=0.6), sample_ratio=0.25), a, lat)
    assert torch.equal(stacked, alone)
    sdit_over_ras = sdit_model_patch(ras_patch(model, sample_ratio=0.6), **defaults(sample_ratio=0.3))[0]
    sdit_alone = sdit_model_patch(model, **defaults(sample_ratio=0.3))[0]
    assert torch.equal(ksampler(sdit_over_ras, a, lat), ksampler(sdit_alone, a, lat))


def test_a_model_patch_into_a_sampler_node_gives_the_sampler_alone():
    model = tiny_flux(seed=41)
    a, lat = ras_args(cfg=3.0, sample_ratio=0.25), latent(1)
    alone, trace = ras_sample(model, latent_image=lat, **a)
    patched_first, patched_trace = ras_sample(ras_patch(model, sample_ratio=0.6), latent_image=lat, **a)
    assert torch.equal(patched_first["samples"], alone["samples"])
    assert patched_trace.tokens_per_step == trace.tokens_per_step


def test_denoise_zero_returns_the_input_like_ksampler():
    model = tiny_flux(seed=42)
    lat = {"samples": torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(3))}
    a = ras_args(denoise=0.0)
    reference = plain_ksampler(model, a, lat)
    out, trace = ras_sample(model, latent_image=lat, **a)
    assert torch.equal(out["samples"], reference) and not trace.steps
    out, trace = sdit_sample(model, 3, 8, 1.0, "euler", "simple", flux_conditioning(1), flux_conditioning(2),
                                      lat, 0.0, **defaults())
    assert torch.equal(out["samples"], reference) and not trace.steps
    with pytest.raises(SDiTInputError, match="sampled nothing"):
        RegionVisualizer().draw(trace, -1, 0, 0.6)


def with_block_sparse_attention_footprint(model):
    """What ComfyUI's "Model Sparse Attention" node (newer than the ComfyUI this runs on, and CUDA-only)
    leaves on a MODEL: an attention override it puts back on top at every step, computing attention
    itself. This stand-in computes it with the plain function, over the keys it is handed."""
    m = model.clone()

    def install(model_patcher, timestep, model_options):
        options = model_options["transformer_options"]
        if not getattr(options.get("optimized_attention_override"), "stand_in", False):
            def override(func, *args, **kwargs):
                return func(*args, **kwargs)
            override.stand_in = True
            options["optimized_attention_override"] = override
    m.add_callback_with_key(patcher_extension.CallbacksMP.ON_PREPARE_STATE, "block_sparse_attention", install)
    return m


@pytest.mark.parametrize("order", ["sparse attention first", "sparse attention last"])
def test_model_sparse_attention_is_named_in_a_clear_error(order):
    model = tiny_flux(seed=43)
    a, lat = ras_args(cfg=3.0), latent(1)
    if order == "sparse attention first":
        with pytest.raises(SDiTInputError, match="RAS Model Patch.*'Model Sparse Attention'"):
            ras_patch(with_block_sparse_attention_footprint(model))
        with pytest.raises(SDiTInputError, match="RAS Sampler.*'Model Sparse Attention'"):
            ras_sample(with_block_sparse_attention_footprint(model), latent_image=lat, **a)
    else:
        patched = with_block_sparse_attention_footprint(ras_patch(model))
        with pytest.raises(SDiTInputError, match="RAS Model Patch.*'Model Sparse Attention'"):
            ksampler(patched, a, lat)


def seamless_tiling(model):
    """Newest ComfyUI's Seamless Tiling node applied to `model` (x and y, seam 2); where this ComfyUI has none, a
    stand-in of it: a model_function_wrapper defined in a module of its name that evaluates the model on the latent
    rolled by half its size and blends the results (the real node's weights by position, here halves)."""
    import sys
    import types
    name = "comfy_extras.nodes_seamless_tiling"
    if importlib.util.find_spec(name) is not None:
        return importlib.import_module(name).ModelPatchSeamlessTiling.execute(model, "x and y", 2)[0]
    stand_in = sys.modules.get("stand_in." + name) or types.ModuleType("stand_in." + name)
    exec("def wrapper_for(old):\n"
         "    def model_function_wrapper(apply_model, args):\n"
         "        x, out = args['input'], 0\n"
         "        for shift in ((0, 0), (x.shape[-2] // 2, x.shape[-1] // 2)):\n"
         "            rolled = apply_model(x.roll(shift, (-2, -1)), args['timestep'], **args['c'])\n"
         "            out = out + 0.5 * rolled.roll((-shift[0], -shift[1]), (-2, -1))\n"
         "        return out\n"
         "    return model_function_wrapper\n", stand_in.__dict__)
    patched = model.clone()
    patched.set_model_unet_function_wrapper(stand_in.wrapper_for(model.model_options.get("model_function_wrapper")))
    return patched


def wrapped_again(model):
    """Another node's model_function_wrapper over the one on `model`, keeping it to call on (as ComfyUI's Chroma
    Radiance Options does)."""
    old = model.model_options["model_function_wrapper"]

    def outer(apply_model, args):
        return old(apply_model, args)
    patched = model.clone()
    patched.set_model_unet_function_wrapper(outer)
    return patched


def enhance_a_video(model, weight=2.0):
    """What KJNodes' Enhance-A-Video nodes do to a MODEL: the weight in the transformer options, and an object patch
    on each block's self-attention (here one that calls the model's own: the check is by the option)."""
    patched = model.clone()
    patched.model_options.setdefault("transformer_options", {})["enhance_weight"] = weight
    path = "diffusion_model.double_blocks.0.img_attn.norm.forward"
    attention = patched.get_model_object(path)
    patched.add_object_patch(path, lambda *args, **kwargs: attention(*args, **kwargs))
    return patched


def test_enhance_a_video_is_named_in_a_clear_error():
    """Its score of every video token's queries and keys would be of the running tokens alone: refused before
    sampling by the sampler nodes; by the Model Patch nodes when sampling starts (it applied after them) or at once
    (it applied before them)."""
    model = tiny_flux(seed=46)
    a, lat = ras_args(cfg=3.0), latent(1)
    with pytest.raises(SDiTInputError, match=r"RAS Sampler.*'Enhance-A-Video \(KJNodes\)'.*every video token"):
        ras_sample(enhance_a_video(model), latent_image=lat, **a)
    with pytest.raises(SDiTInputError, match="RAS Model Patch.*'Enhance-A-Video"):
        ksampler(enhance_a_video(ras_patch(model)), a, lat)
    with pytest.raises(SDiTInputError, match="RAS Model Patch.*'Enhance-A-Video"):
        ras_patch(enhance_a_video(model))


def test_seamless_tiling_is_named_in_a_clear_error():
    """It evaluates the model on the latent rolled by half its size each step: the rolled calls would read the K/V
    cache and skipped outputs of the unrolled tokens at the same places. Refused by the sampler nodes, under another
    node's wrapper too, and by the Model Patch nodes when sampling starts."""
    model = tiny_flux(seed=45)
    a, lat = ras_args(cfg=3.0), latent(1)
    for tiled in (seamless_tiling(model), wrapped_again(seamless_tiling(model))):
        with pytest.raises(SDiTInputError, match="RAS Sampler.*'Seamless Tiling'"):
            ras_sample(tiled, latent_image=lat, **a)
    with pytest.raises(SDiTInputError, match="RAS Model Patch.*'Seamless Tiling'"):
        ksampler(seamless_tiling(ras_patch(model)), a, lat)
    # another node's model_function_wrapper alone is no reason to refuse
    plain_wrapped = model.clone()
    plain_wrapped.set_model_unet_function_wrapper(lambda apply_model, args: apply_model(args["input"],
                                                                                        args["timestep"], **args["c"]))
    out, _ = ras_sample(plain_wrapped, latent_image=lat, **a)
    assert torch.isfinite(out["samples"]).all()


@pytest.mark.parametrize("node", ["EasyCacheNode", "LazyCacheNode"])
def test_easycache_and_lazycache_with_every_token_active_equal_them_alone(node):
    """Orthogonal: they skip whole steps, we skip tokens within a step. With every token active our
    patch must not change what they produce; with fewer tokens the run completes and counts no work for
    the steps they skipped."""
    cache_nodes = importlib.import_module("comfy_extras.nodes_easycache")
    cache = getattr(cache_nodes, node)
    model = tiny_flux(seed=45)
    a, lat = dict(ras_args(cfg=1.0), steps=12), latent(1)

    def cached(m):
        return cache.execute(m, 0.2, 0.15, 0.95, False)[0]
    reference = ksampler(cached(model), a, lat)
    everything = ksampler(cached(ras_patch(model, sample_ratio=1.0, warmup_steps=1)), a, lat)
    assert (everything - reference).abs().max().item() <= 1e-5
    out, trace = ras_sample(cached(model), latent_image=lat, **dict(a, sample_ratio=0.5))
    assert torch.isfinite(out["samples"]).all()
    # EasyCache skips inside the model call (an evaluation with no token work), LazyCache the whole
    # prediction (no evaluation at all)
    skipped = (a["steps"] - len(trace.steps)) + sum(1 for s in trace.steps if s.tokens == 0)
    assert skipped > 0, "the cache skipped steps, and they count no token work"


POSITIONAL_PATCHES = [        # (module, class, the node named in the error, the patch list it goes into)
    ("comfy_extras.nodes_model_patch", "DiffSynthCnetPatch", "Apply Qwen Image DiffSynth ControlNet", "double_block"),
    ("comfy_extras.nodes_model_patch", "ZImageControlPatch", "Apply Z-Image Fun ControlNet", "noise_refiner"),
    ("comfy_extras.nodes_model_patch", "WanUni3CCnetPatch", "Apply Wan Uni3C ControlNet", "double_block"),
    ("comfy.ldm.wan.model_multitalk", "MultiTalkCrossAttnPatch", "WanInfiniteTalkToVideo", "attn2_patch"),
]


def with_patch_of(model, cls, patch_list: str):
    """ComfyUI's own patch class on the model as its node puts it there (the instance is never called:
    the error comes before sampling; unbuilt, it stays where it is when ComfyUI moves the model's patches)."""
    m, patch = model.clone(), object.__new__(cls)
    patch.to = lambda *args, **kwargs: patch
    m.set_model_patch(patch, patch_list)
    return m


@pytest.mark.parametrize("module,name,node,patch_list", POSITIONAL_PATCHES, ids=[p[1] for p in POSITIONAL_PATCHES])
def test_patches_that_add_inputs_by_position_over_the_whole_image_are_named(module, name, node, patch_list):
    cls = getattr(importlib.import_module(module), name, None) if importlib.util.find_spec(module) else None
    if cls is None:
        pytest.skip(f"this ComfyUI has no {name}")
    model = tiny_flux(seed=46)
    a, lat = ras_args(cfg=3.0), latent(1)
    with pytest.raises(SDiTInputError, match=f"RAS Sampler.*'{node}'.*by their position"):
        ras_sample(with_patch_of(model, cls, patch_list), latent_image=lat, **a)
    with pytest.raises(SDiTInputError, match=f"RAS Model Patch.*'{node}'"):
        ras_patch(with_patch_of(model, cls, patch_list))
    with pytest.raises(SDiTInputError, match=f"SDiT Model Patch.*'{node}'"):      # applied after ours
        ksampler(with_patch_of(sdit_model_patch(model, **defaults())[0], cls, patch_list), a, lat)
    # a custom pack's subclass is named too
    subclass = type("BatchControlPatch", (cls,), {})
    with pytest.raises(SDiTInputError, match=f"'{node}'"):
        ras_sample(with_patch_of(model, subclass, patch_list), latent_image=lat, **a)


class PrependTextTokens:
    """What "Apply USO Style Reference" puts on a Flux model: a post_input patch that puts tokens of its
    own before the prompt's (it touches text tokens only, which always run)."""

    def __call__(self, kwargs):
        txt, txt_ids = kwargs["txt"], kwargs["txt_ids"]
        kwargs["txt"] = torch.cat([0.5 * txt[:, :3], txt], dim=1)
        kwargs["txt_ids"] = torch.cat([torch.zeros_like(txt_ids[:, :3]), txt_ids], dim=1)
        return kwargs


def test_a_patch_on_the_text_tokens_runs_with_every_token_active_equal_to_it_alone():
    model = tiny_flux(seed=47).clone()
    model.set_model_patch(PrependTextTokens(), "post_input")
    a, lat = ras_args(cfg=3.0, sample_ratio=1.0), latent(1)
    reference = ksampler(model, a, lat)
    out, _ = ras_sample(model, latent_image=lat, **a)
    assert (out["samples"] - reference).abs().max().item() <= 1e-5
    sparse, trace = ras_sample(model, latent_image=lat, **dict(a, sample_ratio=0.25))
    assert torch.isfinite(sparse["samples"]).all() and min(trace.tokens_per_step) < 64


class ShiftEveryTokenByPosition:
    """A custom pack's block patch no check knows, that adds an input of its own to the image tokens by their
    position over the whole image (the way a ControlNet patch does): wrong for a forward that runs some tokens."""

    def __call__(self, kwargs):
        x, img = kwargs["x"], kwargs["img"]
        whole = (x.shape[-2] // 2) * (x.shape[-1] // 2)
        shift = 0.01 * torch.arange(whole, dtype=img.dtype, device=img.device)[None, :, None]
        return dict(kwargs, img=img + shift)


class ShiftsEveryTokenOfTheBlock:
    """A block replacement of a custom pack that adds to the block's image tokens by their position in the whole
    image (Qwen-Image's 16 x 16 latent: 64 tokens)."""

    def __call__(self, args, extra):
        out = extra["original_block"](args)
        shift = 0.01 * torch.arange(64, dtype=out["img"].dtype, device=out["img"].device)[None, :, None]
        return dict(out, img=out["img"] + shift)


def fun_controlnet_block_patch(class_name: str):
    """Stands in for newer ComfyUI's (read in the search index) Qwen-Image 2.1 or MiniMax H3 Fun ControlNet block patch,
    which "Apply Qwen Image 2.1 Fun ControlNet" / "Apply MiniMax H3 Fun ControlNet" puts on some blocks as a block
    replacement: it runs a control tower over the whole sequence and adds it to the blocks' output by position. Its
    own model's adapter runs it beside the sparse blocks (test_qwen_image21_fun_controlnet.py,
    test_minimax_h3_fun_controlnet.py); on any other model it is found by class name and refused."""
    return type(class_name, (), {"__call__": lambda self, args, extra: extra["original_block"](args)})()


@pytest.mark.parametrize("class_name,node", [("QwenImage21FunControlBlockPatch", "Apply Qwen Image 2.1 Fun ControlNet"),
                                             ("MiniMaxH3FunControlBlockPatch", "Apply MiniMax H3 Fun ControlNet")])
def test_a_fun_controlnet_on_another_model_is_refused_clearly(class_name, node):
    model = tiny_flux(seed=44).clone()
    model.set_model_patch_replace(fun_controlnet_block_patch(class_name), "dit", "double_block", 0)
    with pytest.raises(SDiTInputError, match=rf"RAS Sampler: input 'model'.*'{node}'.*position"):
        ras_sample(model, latent_image=latent(1), **ras_args(cfg=3.0))


def test_an_unknown_patch_that_fails_a_sparse_forward_is_named():
    """A sparse forward that fails inside the model while other nodes' patches are on it gets an error naming
    those patches (the model's own error chained), not a bare size mismatch; every token active, it samples
    as the patch alone does."""
    from sdit_testkit import text_conditioning, tiny_qwen_image
    model = tiny_qwen_image(seed=48).clone()
    model.set_model_patch(ShiftEveryTokenByPosition(), "double_block")
    a = ras_args(cfg=3.0, positive=text_conditioning(1, 7), negative=text_conditioning(2, 7))
    lat = {"samples": torch.zeros(1, 16, 1, 16, 16)}
    reference = ksampler(model, a, lat)
    out, _ = ras_sample(model, latent_image=lat, **dict(a, sample_ratio=1.0))
    assert (out["samples"] - reference).abs().max().item() <= 1e-5
    with pytest.raises(SDiTInputError, match=r"RAS Sampler: input 'model': a token-sparse forward failed inside "
                                             r"the model .*ShiftEveryTokenByPosition \(double_block\).*KSampler") as caught:
        ras_sample(model, latent_image=lat, **dict(a, sample_ratio=0.25))
    assert isinstance(caught.value.__cause__, RuntimeError)          # the model's own error, chained
    # a custom pack's block replacement of that kind is named the same way
    replaced = tiny_qwen_image(seed=48).clone()
    replaced.set_model_patch_replace(ShiftsEveryTokenOfTheBlock(), "dit", "double_block", 1)
    with pytest.raises(SDiTInputError, match=r"failed inside the model .*ShiftsEveryTokenOfTheBlock \(replaces "
                                             r"double_block 1\)"):
        ras_sample(replaced, latent_image=lat, **dict(a, sample_ratio=0.25))
    # an object patch of another node on the model's code (KJNodes' Enhance-A-Video folds every token into frames so)
    folded = tiny_qwen_image(seed=48).clone()
    path = "diffusion_model.transformer_blocks.0.img_mlp.forward"
    original = folded.get_model_object(path)

    def every_token_in_rows(x):
        x.view(x.shape[0], 8, 8, x.shape[-1])        # the 8 x 8 tokens of a 16 x 16 latent
        return original(x)
    folded.add_object_patch(path, every_token_in_rows)
    with pytest.raises(SDiTInputError, match=r"failed inside the model .*carries patches of other nodes \("
                                             rf"{path} \(object patch\)\)"):
        ras_sample(folded, latent_image=lat, **dict(a, sample_ratio=0.25))
    # TorchCompileModel's compiled blocks and functions are the model's own code, ours are ours
    from comfyui_sdit.nodes.neighbours import other_patches
    compiled = {"diffusion_model.double_blocks.0": torch.compile(torch.nn.Linear(2, 2)),
                "diffusion_model.forward_orig": torch.compile(every_token_in_rows),
                path: folded.object_patches[path], "model_sampling": object()}
    assert other_patches({}, compiled) == f"{path} (object patch)"
    # without other nodes' patches a failing forward raises its own error unchanged
    from comfyui_sdit.nodes.neighbours import explain_failed_sparse_forward
    error = RuntimeError("size mismatch")
    assert explain_failed_sparse_forward(error, {}, "RAS Sampler") is error
    oom = torch.OutOfMemoryError("out of memory")
    assert explain_failed_sparse_forward(oom, {"patches": {"double_block": [object()]}}, "RAS Sampler") is oom


def attention_backend_like(calls: list):
    """An attention override of the kind ComfyUI's "Model Attention Backend" sets (its backend computes the
    attention, calling on nothing): records whether each call had fewer queries than keys (the engine's active
    queries against its K/V cache) and computes the attention with ComfyUI's function."""
    def backend(func, q, k, v, *args, **kwargs):
        calls.append(q.shape[:-1] != k.shape[:-1])
        return func(q, k, v, *args, **kwargs)
    return backend


def test_an_attention_override_set_over_ours_is_chained_under_it():
    """A node applied after ours that sets its own attention override (Model Attention Backend, a SageAttention
    node) replaced ours on the model: when sampling starts ours goes back on top for the run, that override computing
    the attention with the engine's K/V cache, exactly as where the node was applied before ours. The model
    handed to the sampler keeps the node's override."""
    a, lat = ras_args(cfg=3.0, sample_ratio=0.25), latent(1)
    over_calls, under_calls = [], []
    over = ras_patch(tiny_flux(seed=49), sample_ratio=0.25).clone()
    backend = attention_backend_like(over_calls)
    over.model_options["transformer_options"]["optimized_attention_override"] = backend
    sampled_over = ksampler(over, a, lat)
    assert over.model_options["transformer_options"]["optimized_attention_override"] is backend
    under = tiny_flux(seed=49).clone()
    under.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = \
        attention_backend_like(under_calls)
    sampled_under = ksampler(ras_patch(under, sample_ratio=0.25), a, lat)
    assert any(over_calls) and not all(over_calls), "dense steps, then active queries against the whole K/V cache"
    assert over_calls == under_calls and torch.equal(sampled_over, sampled_under)
    assert torch.equal(ksampler(over, a, lat), sampled_over), "a second run starts clean"


def test_model_attention_backend_before_or_after_ours(monkeypatch):
    """ComfyUI's "Model Attention Backend" node (newer ComfyUI) on either side of the Model Patch node: its backend
    computes every attention call, the sparse steps' active queries against the whole K/V cache, and both orders
    sample the same latent."""
    advanced = importlib.import_module("comfy_extras.nodes_model_advanced")
    node = getattr(advanced, "ModelAttentionBackend", None)
    if node is None:
        pytest.skip("this ComfyUI has no Model Attention Backend node")
    import comfy.ldm.modules.attention as attention
    calls = []
    recording = functools.partial(attention_backend_like(calls), attention.attention_pytorch)    # the node's backend
    monkeypatch.setitem(attention.REGISTERED_ATTENTION_FUNCTIONS, "pytorch", recording)

    def with_backend(model):
        return (node.execute(model, "pytorch attention") if hasattr(node, "execute")
                else node().patch(model, "pytorch attention"))[0]
    a, lat = ras_args(cfg=3.0, sample_ratio=0.25), latent(1)
    after = ksampler(with_backend(ras_patch(tiny_flux(seed=47), sample_ratio=0.25)), a, lat)
    after_calls, calls[:] = list(calls), []
    before = ksampler(ras_patch(with_backend(tiny_flux(seed=47)), sample_ratio=0.25), a, lat)
    assert any(after_calls) and not all(after_calls) and after_calls == calls
    assert torch.equal(after, before)


def test_a_post_cfg_function_applied_after_ours_comes_before_the_policy():
    """Nodes that set a post-CFG function (CFGZeroStar, CFGNorm) applied after the Model Patch node come after ours
    in the model's list: when sampling starts ours moves to the end for the run, so the policy picks tokens by the
    output the sampler steps with, and the latent is the one sampled with that node applied before ours."""
    def mirrored(args):         # changes which tokens change most: the policy's picks follow it
        return args["denoised"].flip(-1)
    a, lat = ras_args(cfg=3.0, sample_ratio=0.25), latent(1)
    for patch in (ras_patch, lambda m: sdit_model_patch(m, **defaults(sample_ratio=0.25))[0]):
        after = patch(tiny_flux(seed=46)).clone()
        after.set_model_sampler_post_cfg_function(mirrored)
        before = tiny_flux(seed=46).clone()
        before.set_model_sampler_post_cfg_function(mirrored)
        assert torch.equal(ksampler(after, a, lat), ksampler(patch(before), a, lat))
        assert after.model_options["sampler_post_cfg_function"][-1] is mirrored      # the model's own list as it was
    cfg_nodes = importlib.import_module("comfy_extras.nodes_cfg")                       # ComfyUI's own
    for node in (cfg_nodes.CFGZeroStar.execute, lambda m: cfg_nodes.CFGNorm.execute(m, 0.8)):
        after, before = node(ras_patch(tiny_flux(seed=45)))[0], ras_patch(node(tiny_flux(seed=45))[0])
        assert torch.equal(ksampler(after, a, lat), ksampler(before, a, lat))


def test_an_override_that_calls_ours_stays_on_top():
    """An override set after ours that calls the one it replaced (as ComfyUI's "Model Sparse Attention" does)
    stays in charge: ours, called under it, passes the call on, so the engine sees each call once."""
    a, lat = ras_args(cfg=3.0, sample_ratio=0.25), latent(1)
    alone = ksampler(ras_patch(tiny_flux(seed=48), sample_ratio=0.25), a, lat)
    over = ras_patch(tiny_flux(seed=48), sample_ratio=0.25).clone()
    options = over.model_options["transformer_options"]
    ours, seen = options["optimized_attention_override"], []

    def calls_ours(func, *args, **kwargs):
        seen.append(args[0].shape)
        return ours(func, *args, **kwargs)
    options["optimized_attention_override"] = calls_ours
    assert torch.equal(ksampler(over, a, lat), alone) and seen


def test_an_attention_override_set_while_sampling_is_named():
    """An override put over ours during sampling (another node's model function wrapper setting it for each model
    call) takes the attention away from the engine: the first sparse step raises, naming it, where the model would
    otherwise sample an image whose tokens saw only each other."""
    def sage_like(func, *args, **kwargs):
        return func(*args, **kwargs)

    def sets_override(apply_model, args):
        args["c"]["transformer_options"]["optimized_attention_override"] = sage_like
        return apply_model(args["input"], args["timestep"], **args["c"])
    a, lat = ras_args(cfg=3.0, sample_ratio=0.25), latent(1)
    over = ras_patch(tiny_flux(seed=49), sample_ratio=0.25).clone()
    over.set_model_unet_function_wrapper(sets_override)
    with pytest.raises(SDiTInputError, match=r"RAS Model Patch: input 'model': on a token-sparse step the model's attention "
                                             r"went past .*sage_like.* while sampling"):
        ksampler(over, a, lat)


def test_attention_replaced_past_comfyui_override_is_named(monkeypatch):
    """A global patch of the model's attention function that skips ComfyUI's override mechanism (as older
    SageAttention patches do): no attention reaches the engine, and the sparse step raises instead of sampling a
    wrong image."""
    import comfy.ldm.flux.math as flux_math
    monkeypatch.setattr(flux_math, "optimized_attention", flux_math.optimized_attention.__wrapped__)
    a, lat = ras_args(cfg=3.0, sample_ratio=0.25), latent(1)
    with pytest.raises(SDiTInputError, match=r"attention went past .*replaced ComfyUI's attention functions"):
        ras_sample(tiny_flux(seed=50), latent_image=lat, **a)
    a = dict(a, sample_ratio=1.0, sampler_name="euler_ancestral")      # a run that stays dense samples as before
    out, trace = ras_sample(tiny_flux(seed=50), latent_image=lat, **a)
    assert all(s.dense for s in trace.steps) and torch.isfinite(out["samples"]).all()


def swapping_while_sampling(swap):
    """What step-cache nodes (TeaCache, MagCache, WaveSpeed's First Block Cache) do: a model function wrapper that, for
    each model call, swaps part of the diffusion model for code of their own. `swap(diffusion_model)`: the context
    manager that swaps it."""
    def apply(model):
        swapped = model.clone()
        diffusion_model = swapped.get_model_object("diffusion_model")

        def wrapper(model_function, kwargs):
            with swap(diffusion_model):
                return model_function(kwargs["input"], kwargs["timestep"], **kwargs["c"])
        swapped.set_model_unet_function_wrapper(wrapper)
        return swapped
    return apply


def swapping_forward_in(path: str):
    """The diffusion model's method at `path` swapped for other code (here the class's own method, so the result is the
    model's; what matters is that the pack's patch there is bypassed)."""
    from unittest.mock import patch

    def own_code(self, *args, **kwargs):
        return getattr(type(self), path)(self, *args, **kwargs)
    return swapping_while_sampling(lambda diffusion_model: patch.multiple(
        diffusion_model, **{path: own_code.__get__(diffusion_model)}))


@pytest.mark.parametrize("path", ["forward_orig", "forward", "_forward"])
@pytest.mark.parametrize("order", ["before", "after"])
def test_a_node_that_swaps_the_models_forward_while_sampling_is_named(path, order):
    """Before the first forward runs, whether that node comes before or after ours: its code, by name."""
    model = tiny_flux(seed=41)
    a, lat = ras_args(), latent(1)
    swap = swapping_forward_in(path)
    with pytest.raises(SDiTInputError, match=rf"RAS Model Patch: input 'model': another node put its own code "
                                             rf"\(.*own_code from test_neighbours\) in place of the model's `{path}`"):
        ksampler(swap(ras_patch(model)) if order == "after" else ras_patch(swap(model)), a, lat)


class CachedBlocks(torch.nn.Module):
    """What WaveSpeed's First Block Cache puts in place of a model's list of blocks: one module running them all (and
    skipping the rest where the first block's residual changed little: here it never skips)."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = blocks

    def forward(self, *args, **kwargs):
        raise AssertionError("never reached: the check comes first")


def swapping_blocks_in(name: str):
    """The model's list of blocks `name` swapped for a list holding one module of that node's own."""
    from unittest.mock import patch
    return swapping_while_sampling(lambda diffusion_model: patch.object(
        diffusion_model, name, torch.nn.ModuleList([CachedBlocks(getattr(diffusion_model, name))])))


@pytest.mark.parametrize("order", ["before", "after"])
def test_a_node_that_swaps_the_models_blocks_while_sampling_is_named(order):
    """Flux's adapter patches none of the blocks themselves: the list is what tells."""
    swap_blocks = swapping_blocks_in("double_blocks")
    model = tiny_flux(seed=41)
    with pytest.raises(SDiTInputError, match=r"another node put its own code \(CachedBlocks from test_neighbours\) "
                                             r"in place of the model's `double_blocks`"):
        ksampler(swap_blocks(ras_patch(model)) if order == "after" else ras_patch(swap_blocks(model)), ras_args(),
                 latent(1))


def test_a_swapped_list_of_blocks_the_adapter_patches_is_named_too():
    """Qwen-Image's adapter patches each block (its graphs): a list swapped for one module of fewer blocks is named
    as such, not an error looking for the second block."""
    from sdit_testkit import FAMILIES
    spec = FAMILIES["qwen_image"]
    model = swapping_blocks_in("transformer_blocks")(spec.build(seed=41))
    common = (4, 4, 1.0, "euler", "simple", spec.positive(), spec.negative(), {"samples": spec.latent(1, 8, 8)}, 1.0)
    with pytest.raises(SDiTInputError, match=r"\(CachedBlocks from test_neighbours\) in place of the model's "
                                             r"`transformer_blocks`"):
        ras_sample(model, *common, **{k: ras_args()[k] for k in RAS_VALUES})


def test_another_nodes_object_patch_in_place_of_ours_is_named():
    """A node applied after ours that object-patches the method the adapter patched replaces ours."""
    model = ras_patch(tiny_flux(seed=41)).clone()

    def forward_orig(*args, **kwargs):
        raise AssertionError("never reached: the check comes first")
    model.add_object_patch("diffusion_model.forward_orig", forward_orig)
    with pytest.raises(SDiTInputError, match=r"another node put its own code \(.*forward_orig from test_neighbours\) "
                                             r"in place of the model's `forward_orig`"):
        ksampler(model, ras_args(), latent(1))


def test_another_nodes_object_patch_that_calls_ours_samples_as_ours_alone():
    """A node applied after ours that wraps the method it found there (ours) keeps it: the same samples."""
    patched = ras_patch(tiny_flux(seed=42), sample_ratio=0.5)
    wrapped = patched.clone()
    ours = wrapped.get_model_object("diffusion_model.forward_orig")
    calls = []

    def forward_orig(*args, **kwargs):
        calls.append(1)
        return ours(*args, **kwargs)
    wrapped.add_object_patch("diffusion_model.forward_orig", forward_orig)
    a, lat = ras_args(), latent(1)
    assert torch.equal(ksampler(wrapped, a, lat), ksampler(patched, a, lat))
    assert len(calls) == a["steps"]


def test_a_model_another_node_object_patched_in_an_earlier_run_samples():
    """ComfyUI undoes an earlier run's object patch on the model's method by setting back what it replaced (the class's
    own method, bound to the model): the next run of ours finds that method there, which is the model's own."""
    model = tiny_flux(seed=43)
    earlier = model.clone()
    diffusion_model = model.model.diffusion_model
    own_forward = type(diffusion_model)._forward

    def _forward(*args, **kwargs):
        return own_forward(diffusion_model, *args, **kwargs)
    earlier.add_object_patch("diffusion_model._forward", _forward)
    a, lat = ras_args(), latent(1)
    ksampler(earlier, a, lat)
    ours = ras_patch(model)
    assert torch.equal(ksampler(ours, a, lat), ksampler(ras_patch(tiny_flux(seed=43)), a, lat))
