"""`RAS Sampler` and `RAS Model Patch` nodes."""
from ..sdit_core.ras import RASConfig, RASPolicy
from ..sdit_core.refresh_schedule import parse_step_list
from ..sdit_core.trace import empty_trace, trace_from_run
from .errors import SDiTInputError
from .families import adapter_for
from .live_progress import ProgressReporter
from .region_patch import patch_region_adaptive
from .sampling import (CATEGORY, check_kv_cache, check_latent, check_range, ksampler_inputs, kv_cache_input,
                       run_ksampler)

RAS_DEFAULTS = RASConfig()


def ras_inputs() -> dict:
    d = RAS_DEFAULTS
    return {
        "sample_ratio": ("FLOAT", {"default": d.sample_ratio, "min": 0.01, "max": 1.0, "step": 0.01,
                                   "tooltip": "Average fraction of image tokens computed in sparse steps (Flux-dev 1024², 28 steps, cfg 3.5 on an H200: 0.5 ~ 1.5x, 0.25 ~ 2.1x, 0.125 ~ 2.6x faster end to end). 1.0 reproduces KSampler."}),
        "warmup_steps": ("INT", {"default": d.warmup_steps, "min": 0, "max": 10000,
                                 "tooltip": "Dense steps at the start, which lay out the image (paper: 4 of 28-30)."}),
        "reset_steps": ("STRING", {"default": ", ".join(str(s) for s in d.reset_steps),
                                   "tooltip": "Dense error-reset steps: fractions of the run (0.4, 0.67 = steps 12 and 20 of 30; they scale with the step count) or whole step numbers. Empty for none."}),
        "starvation_scale": ("FLOAT", {"default": d.starvation_scale, "min": 0.0, "max": 10.0, "step": 0.01,
                                       "tooltip": "k in exp(k*D): the more often a token was skipped, the more likely it is computed next."}),
        "metric": (["std", "l2norm"], {"default": d.metric,
                                       "tooltip": "How the model's focus is found: std over channels of the model output (paper) or its l2 norm (supplement)."}),
        "dynamic_ratio": ("BOOLEAN", {"default": d.dynamic_ratio,
                                      "tooltip": "Start above sample_ratio and end below it (same average): early steps need more tokens."}),
    }


def ras_optional_inputs() -> dict:
    return {
        "dynamic_spread": ("FLOAT", {"default": RAS_DEFAULTS.dynamic_spread, "min": 0.0, "max": 1.0, "step": 0.05,
                                     "tooltip": "With dynamic_ratio: the ratio falls linearly from (1+spread) to (1-spread) x sample_ratio over the sparse steps."}),
        **kv_cache_input(),
    }


def ras_config(node: str, sample_ratio, warmup_steps, reset_steps, starvation_scale, metric, dynamic_ratio,
               dynamic_spread=RAS_DEFAULTS.dynamic_spread) -> RASConfig:
    check_range(sample_ratio, 0.0, 1.0, node, "sample_ratio", low_open=True)
    check_range(dynamic_spread, 0.0, 1.0, node, "dynamic_spread")
    check_range(starvation_scale, 0.0, 10.0, node, "starvation_scale")
    if warmup_steps < 0:
        raise SDiTInputError(node, "warmup_steps", f"{warmup_steps} is negative")
    if metric not in ("std", "l2norm"):
        raise SDiTInputError(node, "metric", f"'{metric}' is not one of std, l2norm")
    try:
        resets = parse_step_list(reset_steps)
    except ValueError as error:
        raise SDiTInputError(node, "reset_steps", str(error)) from None
    return RASConfig(sample_ratio=sample_ratio, warmup_steps=warmup_steps, reset_steps=tuple(resets),
                     starvation_scale=starvation_scale, metric=metric, dynamic_ratio=bool(dynamic_ratio),
                     dynamic_spread=dynamic_spread)


def patch_ras(model, config: RASConfig, node: str, node_id=None, kv_cache=None):
    """Clone of `model` that samples with RAS; returns (patched, slot). With a node id, live maps and
    the run summary go to that node in the UI. `kv_cache`: how the K/V cache stores (kv_cache.STORES)."""
    return patch_region_adaptive(model, lambda run: RASPolicy(config, run.patch_size), node,
                                 ProgressReporter(node_id, "RAS"), kv_cache)


class RASSampler:
    DESCRIPTION = ("KSampler with Region-Adaptive Sampling: after warm-up, each step runs only the image tokens the "
                   "model focuses on (std of its output), the rest reuse their cached output; keys/values of every "
                   "token stay in a cache so attention sees the whole image.")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT", "REGION_TRACE")
    RETURN_NAMES = ("LATENT", "region_trace")
    OUTPUT_TOOLTIPS = ("The denoised latent.", "Per-step active masks, metric maps and token counts (for Region Visualizer).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {**ksampler_inputs(), **ras_inputs()}, "optional": ras_optional_inputs(),
                "hidden": {"unique_id": "UNIQUE_ID"}}

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise,
               sample_ratio, warmup_steps, reset_steps, starvation_scale, metric, dynamic_ratio,
               dynamic_spread=RAS_DEFAULTS.dynamic_spread, kv_cache="model dtype", unique_id=None):
        node = "RAS Sampler"
        config = ras_config(node, sample_ratio, warmup_steps, reset_steps, starvation_scale, metric, dynamic_ratio,
                            dynamic_spread)
        adapter = adapter_for(model, node)
        patch_size = adapter.patch_size(model.model.diffusion_model)
        check_latent(latent_image, patch_size, node, video=adapter.video)
        patched, slot = patch_ras(model, config, node, unique_id, check_kv_cache(kv_cache, node))
        latent = run_ksampler(patched, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise)
        run = slot.last_run
        if run is None:       # nothing was sampled (denoise 0): the latent as KSampler returns it
            return (latent, empty_trace("RAS", latent_image["samples"].shape, patch_size, vars(config),
                                        adapter.temporal_patch(model.model.diffusion_model)))
        trace = trace_from_run(run, "RAS", metric_maps=run.policy.metric_maps, settings=vars(config),
                               reasons=run.policy.reasons)
        return (latent, trace)


class RASModelPatch:
    DESCRIPTION = ("Applies Region-Adaptive Sampling to a MODEL so any sampler node (KSampler, KSamplerAdvanced, "
                   "SamplerCustomAdvanced) samples with it. Use RAS Sampler to also get the region trace.")
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("A copy of the model that samples with RAS.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ksampler_inputs()["model"], **ras_inputs()}, "optional": ras_optional_inputs(),
                "hidden": {"unique_id": "UNIQUE_ID"}}

    def patch(self, model, sample_ratio, warmup_steps, reset_steps, starvation_scale, metric, dynamic_ratio,
              dynamic_spread=RAS_DEFAULTS.dynamic_spread, kv_cache="model dtype", unique_id=None):
        node = "RAS Model Patch"
        config = ras_config(node, sample_ratio, warmup_steps, reset_steps, starvation_scale, metric, dynamic_ratio,
                            dynamic_spread)
        patched, _ = patch_ras(model, config, node, unique_id, check_kv_cache(kv_cache, node))
        return (patched,)
