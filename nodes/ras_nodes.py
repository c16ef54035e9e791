"""`RAS Sampler` and `RAS Model Patch` nodes."""
from ..sdit_core.ras import RASConfig, RASPolicy
from ..sdit_core.refresh_schedule import parse_step_list
from ..sdit_core.trace import empty_trace, trace_from_run
from .comfy_compat import pixels_per_latent
from .errors import SDiTInputError
from .families import adapter_for
from .live_progress import ProgressReporter
from .region_patch import patch_region_adaptive
from .sampling import (CATEGORY, RATIO_MAX, RATIO_MIN, MethodOptions, check_kv_cache, check_sampler_inputs,
                       check_no_moved_inputs, check_range, check_ratio, ksampler_inputs, kv_cache_input, options_input,
                       options_values, run_ksampler)

RAS_DEFAULTS = RASConfig()


SAMPLE_RATIO_INPUT = {
    "sample_ratio": ("FLOAT", {"default": RAS_DEFAULTS.sample_ratio, "min": RATIO_MIN, "max": RATIO_MAX, "step": 0.01,
                               "tooltip": "Average fraction of image tokens computed in sparse steps (Flux-dev 1024², 28 steps, cfg 3.5 on an H200: 0.5 ~ 1.5x, 0.25 ~ 2.1x, 0.125 ~ 2.6x faster end to end). 1.0 reproduces KSampler."})}


def ras_options_inputs() -> dict:
    """RAS Options' inputs, in the order the sampler showed them before they moved there (old workflows'
    widget values map onto them in this order)."""
    d = RAS_DEFAULTS
    return {
        "warmup_steps": ("INT", {"default": d.warmup_steps, "min": 0, "max": 10000,
                                 "tooltip": "Dense steps at the start, which lay out the image (paper: 4 of 28-30). For a few-step model (4-8 steps) lower it: a run whose every step is dense cannot be sped up."}),
        "reset_steps": ("STRING", {"default": ", ".join(str(s) for s in d.reset_steps),
                                   "tooltip": "Dense error-reset steps: fractions of the run (0.4, 0.67 = steps 12 and 20 of 30; they scale with the step count) or whole step numbers. Empty for none."}),
        "starvation_scale": ("FLOAT", {"default": d.starvation_scale, "min": 0.0, "max": 10.0, "step": 0.01,
                                       "tooltip": "k in exp(k*D): the more often a token was skipped, the more likely it is computed next."}),
        "metric": (["std", "l2norm"], {"default": d.metric,
                                       "tooltip": "How the model's focus is found: std over channels of the model output (paper) or its l2 norm (supplement)."}),
        "dynamic_ratio": ("BOOLEAN", {"default": d.dynamic_ratio,
                                      "tooltip": "Start above sample_ratio and end below it (same average): early steps need more tokens."}),
        "dynamic_spread": ("FLOAT", {"default": d.dynamic_spread, "min": 0.0, "max": 1.0, "step": 0.05,
                                     "tooltip": "With dynamic_ratio: the ratio falls linearly from (1+spread) to (1-spread) x sample_ratio over the sparse steps."}),
        **kv_cache_input(),
    }


DEFAULT_OPTIONS = {name: spec[1]["default"] for name, spec in ras_options_inputs().items()}


def check_ras_options(node: str, values: dict) -> dict:
    check_range(values["dynamic_spread"], 0.0, 1.0, node, "dynamic_spread")
    check_range(values["starvation_scale"], 0.0, 10.0, node, "starvation_scale")
    if values["warmup_steps"] < 0:
        raise SDiTInputError(node, "warmup_steps", f"{values['warmup_steps']} is negative")
    if values["metric"] not in ("std", "l2norm"):
        raise SDiTInputError(node, "metric", f"'{values['metric']}' is not one of std, l2norm")
    try:
        parse_step_list(values["reset_steps"])
    except ValueError as error:
        raise SDiTInputError(node, "reset_steps", str(error)) from None
    check_kv_cache(values["kv_cache"], node)
    return values


def ras_config(node: str, sample_ratio: float, options=None) -> tuple:
    """(RASConfig, kv_cache) of a sampler or patch node: its ratio and its Options node's values."""
    check_ratio(sample_ratio, node)
    v = check_ras_options(node, options_values(options, "RAS", DEFAULT_OPTIONS, node))
    config = RASConfig(sample_ratio=sample_ratio, warmup_steps=v["warmup_steps"],
                       reset_steps=tuple(parse_step_list(v["reset_steps"])), starvation_scale=v["starvation_scale"],
                       metric=v["metric"], dynamic_ratio=bool(v["dynamic_ratio"]), dynamic_spread=v["dynamic_spread"])
    return config, v["kv_cache"]


def patch_ras(model, config: RASConfig, node: str, node_id=None, kv_cache=None):
    """Clone of `model` that samples with RAS; returns (patched, slot). With a node id, live maps and
    the run summary go to that node in the UI. `kv_cache`: how the K/V cache stores (kv_cache.STORES)."""
    return patch_region_adaptive(model, lambda run: RASPolicy(config, run.patch_size, run.temporal_patch), node,
                                 ProgressReporter(node_id, "RAS"), kv_cache)


class RASOptions:
    DESCRIPTION = ("Every RAS setting besides sample_ratio, for RAS Sampler and RAS Model Patch: warm-up, resets, "
                   "starvation prevention, metric, dynamic ratio, K/V cache. Its defaults are the samplers' defaults.")
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = ("RAS_OPTIONS",)
    RETURN_NAMES = ("options",)
    OUTPUT_TOOLTIPS = ("Plug into a RAS Sampler's or RAS Model Patch's options input.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": ras_options_inputs()}

    def build(self, **values):
        return (MethodOptions("RAS", check_ras_options("RAS Options", dict(DEFAULT_OPTIONS, **values))),)


class RASSampler:
    DESCRIPTION = ("KSampler with Region-Adaptive Sampling: after warm-up, each step runs only the image tokens the "
                   "model focuses on (std of its output), the rest reuse their cached output; keys/values of every "
                   "token stay in a cache so attention sees the whole image. Every other setting: a RAS Options node.")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT", "REGION_TRACE")
    RETURN_NAMES = ("LATENT", "region_trace")
    OUTPUT_TOOLTIPS = ("The denoised latent.", "Per-step active masks, metric maps and token counts (for Region Visualizer).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {**ksampler_inputs(), **SAMPLE_RATIO_INPUT}, "optional": options_input("RAS"),
                "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"}}

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise,
               sample_ratio, options=None, unique_id=None, prompt=None):
        node = "RAS Sampler"
        check_no_moved_inputs(prompt, unique_id, DEFAULT_OPTIONS, node, "RAS")
        config, kv_cache = ras_config(node, sample_ratio, options)
        adapter = adapter_for(model, node)
        patch_size = adapter.patch_size(model.model.diffusion_model)
        check_sampler_inputs(adapter, model, latent_image, positive, negative, patch_size, node)
        patched, slot = patch_ras(model, config, node, unique_id, kv_cache)
        latent = run_ksampler(patched, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise)
        run, pixels = slot.last_run, pixels_per_latent(model.model)
        if run is None:       # nothing was sampled (denoise 0): the latent as KSampler returns it
            return (latent, empty_trace("RAS", latent_image["samples"].shape, patch_size, vars(config),
                                        adapter.temporal_patch(model.model.diffusion_model), pixels))
        trace = trace_from_run(run, "RAS", metric_maps=run.policy.metric_maps, settings=vars(config),
                               reasons=run.policy.reasons, pixels_per_latent=pixels)
        return (latent, trace)


class RASModelPatch:
    DESCRIPTION = ("Applies Region-Adaptive Sampling to a MODEL so any sampler node (KSampler, KSamplerAdvanced, "
                   "SamplerCustomAdvanced) samples with it. Use RAS Sampler to also get the region trace; a RAS "
                   "Options node for every other setting.")
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("A copy of the model that samples with RAS.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ksampler_inputs()["model"], **SAMPLE_RATIO_INPUT},
                "optional": options_input("RAS"), "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"}}

    def patch(self, model, sample_ratio, options=None, unique_id=None, prompt=None):
        node = "RAS Model Patch"
        check_no_moved_inputs(prompt, unique_id, DEFAULT_OPTIONS, node, "RAS")
        config, kv_cache = ras_config(node, sample_ratio, options)
        patched, _ = patch_ras(model, config, node, unique_id, kv_cache)
        return (patched,)
