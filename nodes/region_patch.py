"""A MODEL clone that samples region-adaptively with a given policy (RAS, SDiT).

On top of the token-sparse engine (sparse_patch.py) it adds a post-CFG hook, the last of a run's, that hands the
policy each evaluation's output: x, x_pred (denoised) and eps, converted with the model's own
`model_sampling`, so it is right for flow and eps models alike.
"""
from typing import Optional

import torch

from ..sdit_core import profiling
from ..sdit_core.forward_graphs import default_backend
from ..sdit_core.policy import StepOutput
from ..sdit_core.tokens import image_view, leading_part
from .live_progress import ProgressReporter
from .sparse_patch import apply_token_sparse


def predicted_noise(model_sampling, x: torch.Tensor, x_pred: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """eps such that x = noise_scaling(sigma, eps, x_pred): flow (1-s) x0 + s eps, eps models x0 + s eps."""
    clean_part = model_sampling.noise_scaling(sigma, torch.zeros_like(x), x_pred)
    return (x - clean_part) / sigma.reshape(-1, *([1] * (x.ndim - 1))).clamp_min(1e-8)


def patch_region_adaptive(model, make_policy, node: str, reporter: Optional[ProgressReporter] = None,
                          kv_cache: Optional[str] = None, graph_backend=default_backend):
    """Returns (patched clone, slot); `make_policy(run)` is called at every sampling start. The reporter
    (if any) sends live maps and the run summary to the node in the UI. `graph_backend`: as for
    apply_token_sparse."""
    def observer_last(run_options: dict) -> None:
        """The policy sees what the sampler steps with: post-CFG functions of nodes applied after ours (CFGZeroStar,
        CFGNorm) run before the observer in this run."""
        functions = run_options.get("sampler_post_cfg_function", [])
        run_options["sampler_post_cfg_function"] = [f for f in functions if f is not observe_post_cfg] + [observe_post_cfg]

    patched, slot = apply_token_sparse(model, make_policy, node, graph_backend=graph_backend,
                                       on_run_end=reporter.run_done if reporter is not None else None,
                                       kv_cache=kv_cache, method=reporter.method if reporter is not None else "RAS/SDiT",
                                       on_run_options=observer_last)

    @torch.no_grad()
    def observe_post_cfg(args):
        run = slot.run
        if run is not None:
            x, x_pred, sigma = args["input"], args["denoised"], args["sigma"]
            noise = predicted_noise(args["model"].model_sampling, x, x_pred, sigma)

            def view(latent):       # the tokens' latent: an image's as (B, C, H, W), a packed latent's first part
                return image_view(leading_part(latent, run.latent_shape))
            with profiling.span(profiling.OBSERVE):
                run.policy.observe(StepOutput(x=view(x), denoised=view(x_pred), noise=view(noise), sigma=sigma))
            if reporter is not None:
                reporter.evaluation_done(run)
        return args["denoised"]

    observe_post_cfg.sdit_observer = True
    earlier = patched.model_options.get("sampler_post_cfg_function", [])
    patched.model_options["sampler_post_cfg_function"] = [f for f in earlier if not hasattr(f, "sdit_observer")]
    patched.set_model_sampler_post_cfg_function(observe_post_cfg)
    return patched, slot
