"""`SDiT Sampler` and `SDiT Model Patch` nodes."""
from ..kernels.quickshift import quickshift_parents
from ..sdit_core.refresh_schedule import parse_step_list
from ..sdit_core.region_select import DILATION_MODES
from ..sdit_core.sdit import SDiTConfig, SDiTPolicy
from ..sdit_core.segmentation import BACKENDS, missing_packages
from ..sdit_core.trace import PIXELS_PER_LATENT, empty_trace, trace_from_run
from .comfy_compat import pixels_per_latent
from .errors import SDiTInputError
from .families import adapter_for
from .live_progress import ProgressReporter
from .region_patch import patch_region_adaptive
from .sampling import (CATEGORY, RATIO_MAX, RATIO_MIN, MethodOptions, check_kv_cache, check_sampler_inputs,
                       check_no_moved_inputs, check_range, check_ratio, ksampler_inputs, kv_cache_input, options_input,
                       options_values, run_ksampler)

D = SDiTConfig()

SAMPLE_RATIO_INPUT = {
    "sample_ratio": ("FLOAT", {"default": D.sample_ratio, "min": RATIO_MIN, "max": RATIO_MAX, "step": 0.01,
                               "tooltip": "Average fraction of image tokens selected in sparse steps; border tokens (dilation on_top), probes and long-skipped tokens come on top, and refresh steps run dense: the after-run line reports the real work. 1.0 reproduces KSampler."})}

# SDiT Options' inputs, in the order the sampler showed them before they moved there (old workflows'
# widget values map onto them in this order): input name -> (widget spec, SDiTConfig field); the ranges
# here are also what the node enforces.
SDIT_OPTIONS = {
    "ratio_spread": (("FLOAT", {"default": D.ratio_spread, "min": 0.0, "max": 1.0, "step": 0.05,
                                "tooltip": "SSD cosine schedule (Eq. 15): p_max = ratio x (1 + spread) at the start and end, p_min = ratio x (1 - spread) in the middle; same average."}), "ratio_spread"),
    "tau1": (("FLOAT", {"default": D.tau1, "min": 0.0, "max": 1.0, "step": 0.01,
                        "tooltip": "Fraction of the run before the ratio starts falling (structure phase)."}), "tau1"),
    "tau2": (("FLOAT", {"default": D.tau2, "min": 0.0, "max": 1.0, "step": 0.01,
                        "tooltip": "Fraction of the run where the ratio reaches p_min and returns to p_max (detail phase)."}), "tau2"),
    "warmup_steps": (("INT", {"default": D.warmup_steps, "min": 0, "max": 10000,
                              "tooltip": "Dense steps at the start, while the segmentation is still unstable. For a few-step model (4-8 steps) lower it and cooldown_steps: a run whose every step is dense cannot be sped up."}), "warmup_steps"),
    "cooldown_steps": (("INT", {"default": D.cooldown_steps, "min": 0, "max": 10000,
                                "tooltip": "Dense steps at the end, which recover fine detail."}), "cooldown_steps"),
    "reset_steps": (("STRING", {"default": "", "tooltip": "Extra dense steps: fractions of the run (e.g. 0.5) or step numbers. Empty for none."}), "reset_steps"),
    "drift_threshold": (("FLOAT", {"default": D.drift_threshold, "min": 0.0, "max": 10.0, "step": 0.01,
                                   "tooltip": "Error reset: the next step runs dense when the extrapolation missed the freshly computed tokens by more than this relative error. 0 disables."}), "drift_threshold"),
    "segmentation_backend": ((list(BACKENDS), {"default": D.backend,
                                               "tooltip": "Quickshift implementation: torch (windowed, on the sampler's device; Triton kernels on a GPU), hnsw (approximate nearest neighbours), skimage (reference, CPU)."}), "backend"),
    "kernel_size": (("FLOAT", {"default": D.kernel_size, "min": 0.5, "max": 10.0, "step": 0.1,
                               "tooltip": "Quickshift density kernel width in tokens: larger = fewer, bigger regions."}), "kernel_size"),
    "max_dist": (("FLOAT", {"default": D.max_dist, "min": 0.5, "max": 100.0, "step": 0.5,
                            "tooltip": "Longest Quickshift link: larger = fewer regions."}), "max_dist"),
    "feature_ratio": (("FLOAT", {"default": D.feature_ratio, "min": 0.0, "max": 100.0, "step": 0.1,
                                 "tooltip": "Weight of [x_pred || eps] features against token position: larger = regions follow content more than shape."}), "feature_ratio"),
    "alpha": (("FLOAT", {"default": D.alpha, "min": 0.0, "max": 10.0, "step": 0.05,
                         "tooltip": "Complexity (Eq. 5) weight of edges/texture |grad x_pred|."}), "alpha"),
    "gamma": (("FLOAT", {"default": D.gamma, "min": 0.0, "max": 10.0, "step": 0.05,
                         "tooltip": "Complexity weight of fine detail |Laplacian x_pred|."}), "gamma"),
    "beta": (("FLOAT", {"default": D.beta, "min": 0.0, "max": 10.0, "step": 0.05,
                        "tooltip": "Complexity weight of residual noise |x_t - x_pred|."}), "beta"),
    "top_q": (("FLOAT", {"default": D.top_q, "min": 0.01, "max": 1.0, "step": 0.01,
                         "tooltip": "A region's score is the mean of its top q fraction of token complexities (Eq. 6)."}), "top_q"),
    "dilation": (("INT", {"default": D.dilation, "min": 0, "max": 8,
                          "tooltip": "Grow chosen regions by this many tokens (8-connected) so both sides of a boundary update."}), "dilation"),
    "video_dilation": ((["26", "6"], {"default": str(D.connectivity),
                                      "tooltip": "Videos: dilation over the 26 neighbours of a token (the cube around it) or the 6 it shares a face with."}), "connectivity"),
    "frame_scale": (("FLOAT", {"default": D.frame_scale, "min": 0.05, "max": 100.0, "step": 0.05,
                               "tooltip": "Videos: how far apart neighbouring frames are for the segmentation, in tokens: larger = regions keep to fewer frames."}), "frame_scale"),
    "temporal_complexity": (("FLOAT", {"default": D.temporal_weight, "min": 0.0, "max": 10.0, "step": 0.05,
                                       "tooltip": "Videos: complexity weight of motion, the predicted image's difference to the neighbouring frames."}), "temporal_weight"),
    "dilation_mode": ((list(DILATION_MODES), {"default": D.dilation_mode,
                                              "tooltip": "on_top (default, as the paper counts it): the border tokens are added beyond sample_ratio, so a run computes more than the ratio says (the trace and the after-run line report the real work); inside: they count toward the ratio (speed as set)."}), "dilation_mode"),
    "extrapolation_order": (("INT", {"default": D.order, "min": 0, "max": 4,
                                     "tooltip": "Newton extrapolation order for skipped tokens (Eq. 9-14): 0 = reuse the last output, as RAS; 1 = linear (default: with the horizon fade it beat reuse at every ratio in our benchmark); 2+ overshoot."}), "order"),
    "extrapolation_decay": (("FLOAT", {"default": D.decay, "min": 0.0, "max": 100.0, "step": 0.1,
                                       "tooltip": "lambda of Eq. 12: damps higher-order terms over large sigma gaps."}), "decay"),
    "extrapolation_horizon": (("FLOAT", {"default": D.horizon, "min": 0.0, "max": 1000.0, "step": 1.0,
                                         "tooltip": "lambda_h: higher-order terms fade with exp(-lambda_h x how far ahead the prediction reaches in sigma), so tokens skipped long fall back to reuse. 0 disables."}), "horizon"),
    "max_skip_age": (("INT", {"default": D.max_skip_age, "min": 0, "max": 10000,
                              "tooltip": "A token skipped this many evaluations in a row is computed the next one, budget or not (no starved regions). 0: no bound."}), "max_skip_age"),
    "skip_age_weight": (("FLOAT", {"default": D.age_weight, "min": 0.0, "max": 10.0, "step": 0.05,
                                   "tooltip": "A region's score is multiplied by 1 + weight x the mean number of evaluations its tokens have been skipped."}), "age_weight"),
    "drift_probes": (("FLOAT", {"default": D.probe_fraction, "min": 0.0, "max": 0.5, "step": 0.01,
                                "tooltip": "Fraction of tokens drawn from the skipped ones and computed each sparse step, to measure the extrapolation's error on skipped tokens (reported in the trace; the resets act on the computed tokens' error, which triggered them better in our benchmark). 0: none."}), "probe_fraction"),
}


SDIT_OPTIONS["kv_cache"] = (kv_cache_input()["kv_cache"], None)     # how the engine keeps the cache
DEFAULT_OPTIONS = {name: spec[1]["default"] for name, (spec, _) in SDIT_OPTIONS.items()}


def check_sdit_options(node: str, values: dict) -> dict:
    """SDiT Options' values checked against their widgets' ranges and choices, in input-name form."""
    checked = {}
    for name, (spec, _) in SDIT_OPTIONS.items():
        value = values[name]
        kind, options = spec
        if kind in ("FLOAT", "INT"):
            check_range(value, options["min"], options["max"], node, name)
        elif isinstance(kind, list) and value not in kind:
            raise SDiTInputError(node, name, f"'{value}' is not one of {', '.join(kind)}")
        if name == "reset_steps":
            try:
                parse_step_list(value)
            except ValueError as error:
                raise SDiTInputError(node, name, str(error)) from None
        checked[name] = value
    if not checked["tau1"] < checked["tau2"]:
        raise SDiTInputError(node, "tau2", f"{checked['tau2']} must be larger than tau1 ({checked['tau1']})")
    missing = missing_packages(checked["segmentation_backend"])
    if missing:
        raise SDiTInputError(node, "segmentation_backend", f"'{checked['segmentation_backend']}' needs the Python "
                             f"package(s) {', '.join(missing)}, which ComfyUI's Python cannot import: install the pack's "
                             f"requirements.txt into it (pip install {' '.join(missing)})")
    return checked


def sdit_config(node: str, sample_ratio: float, options=None) -> tuple:
    """(SDiTConfig, kv_cache) of a sampler or patch node: its ratio and its Options node's values."""
    check_ratio(sample_ratio, node)
    values = check_sdit_options(node, options_values(options, "SDiT", DEFAULT_OPTIONS, node))
    fields = {"sample_ratio": sample_ratio}
    for name, (_, field) in SDIT_OPTIONS.items():
        if field is not None:
            fields[field] = values[name]
    fields["connectivity"] = int(fields["connectivity"])
    fields["reset_steps"] = tuple(parse_step_list(fields["reset_steps"]))
    return SDiTConfig(**fields).validate(), check_kv_cache(values["kv_cache"], node)


def patch_sdit(model, config: SDiTConfig, node: str, node_id=None, kv_cache=None):
    return patch_region_adaptive(model, lambda run: SDiTPolicy(config, run.patch_size, run.temporal_patch,
                                                               quickshift_parents), node,
                                 ProgressReporter(node_id, "SDiT"), kv_cache)


def sdit_trace(run, config: SDiTConfig, pixels: int = PIXELS_PER_LATENT):
    policy = run.policy
    return trace_from_run(run, "SDiT", metric_maps=policy.complexity_maps, label_maps=policy.label_maps,
                          settings=vars(config), reasons=policy.reasons, drift=policy.drift,
                          probes=policy.probe_counts, drift_computed=policy.drift_computed, pixels_per_latent=pixels)


class SDiTOptions:
    DESCRIPTION = ("Every SDiT setting besides sample_ratio, for SDiT Sampler and SDiT Model Patch: the schedule, "
                   "segmentation, complexity, extrapolation and refreshes. Its defaults are the samplers' defaults.")
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = ("SDIT_OPTIONS",)
    RETURN_NAMES = ("options",)
    OUTPUT_TOOLTIPS = ("Plug into an SDiT Sampler's or SDiT Model Patch's options input.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {name: spec for name, (spec, _) in SDIT_OPTIONS.items()}}

    def build(self, **values):
        return (MethodOptions("SDiT", check_sdit_options("SDiT Options", dict(DEFAULT_OPTIONS, **values))),)


class SDiTSampler:
    DESCRIPTION = ("KSampler with SDiT: each step segments the image into semantic regions (Quickshift on the "
                   "predicted image and noise), computes only the most complex regions plus a one-token border, "
                   "and extrapolates the rest from their own history. A key/value cache keeps every token in "
                   "attention. Every other setting: an SDiT Options node.")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT", "REGION_TRACE")
    RETURN_NAMES = ("LATENT", "region_trace")
    OUTPUT_TOOLTIPS = ("The denoised latent.",
                       "Per-step regions, complexity maps, active masks and token counts (for Region Visualizer, Complexity Map).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {**ksampler_inputs(), **SAMPLE_RATIO_INPUT}, "optional": options_input("SDiT"),
                "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"}}

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise,
               sample_ratio, options=None, unique_id=None, prompt=None):
        node = "SDiT Sampler"
        check_no_moved_inputs(prompt, unique_id, SDIT_OPTIONS, node, "SDiT")
        config, kv_cache = sdit_config(node, sample_ratio, options)
        adapter = adapter_for(model, node)
        patch_size = adapter.patch_size(model.model.diffusion_model)
        check_sampler_inputs(adapter, model, latent_image, positive, negative, patch_size, node)
        patched, slot = patch_sdit(model, config, node, unique_id, kv_cache)
        latent = run_ksampler(patched, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise)
        pixels = pixels_per_latent(model.model)
        if slot.last_run is None:     # nothing was sampled (denoise 0): the latent as KSampler returns it
            return (latent, empty_trace("SDiT", latent_image["samples"].shape, patch_size, vars(config),
                                        adapter.temporal_patch(model.model.diffusion_model), pixels))
        return (latent, sdit_trace(slot.last_run, config, pixels))


class SDiTModelPatch:
    DESCRIPTION = ("Applies SDiT region-adaptive sampling to a MODEL so any sampler node samples with it. "
                   "Use SDiT Sampler to also get the region trace; an SDiT Options node for every other setting.")
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("A copy of the model that samples with SDiT.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ksampler_inputs()["model"], **SAMPLE_RATIO_INPUT},
                "optional": options_input("SDiT"), "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"}}

    def patch(self, model, sample_ratio, options=None, unique_id=None, prompt=None):
        node = "SDiT Model Patch"
        check_no_moved_inputs(prompt, unique_id, SDIT_OPTIONS, node, "SDiT")
        config, kv_cache = sdit_config(node, sample_ratio, options)
        patched, _ = patch_sdit(model, config, node, unique_id, kv_cache)
        return (patched,)
