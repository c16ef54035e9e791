"""Which samplers region-adaptive sampling can follow. Measured on the demo model at ratio 0.25, PSNR
against full sampling with the same sampler (docs/BENCHMARKS.md, "Samplers"): deterministic samplers
keep 35-47 dB with RAS and SDiT. Samplers that add fresh noise at every step (ancestral, SDE, LCM) break
RAS's reuse (15-29 dB, SSIM down to 0.18): a reused output belongs to the state before the new noise.
SDiT's drift probes notice and refresh (44-54 dB, at 0.8 of the work), except with LCM (32 dB).
Where a sampler cannot be followed the run is dense, and the log and the after-run line say why; so too where
the policy's schedule runs every step dense (a few-step model under defaults set for runs of 20-30 steps) and where
ComfyUI's context windows cut an image into crops (`why_dense`)."""
import logging
from collections import Counter
from typing import Optional, Tuple

from .comfy_compat import context_windows_off_frames, sampler_name

_FRESH_NOISE = ("ancestral", "sde", "seeds", "ddpm", "sa_solver")
_NEVER = ("lcm",)


def dense_reason(sampler, follows_fresh_noise: bool, method: str) -> Optional[str]:
    """Why this run must be dense with this sampler, or None. `follows_fresh_noise`: the policy
    measures its own error on skipped tokens and refreshes (SDiT)."""
    name = sampler_name(sampler)
    if any(part in name for part in _NEVER) or (any(part in name for part in _FRESH_NOISE)
                                                 and not follows_fresh_noise):
        return f"ran dense: sampler {name} adds fresh noise every step, which {method} cannot follow"
    return None


SAMPLER_ADVICE = "a deterministic sampler such as euler or dpmpp_2m can be sped up"
# the Options inputs that make a schedule's dense steps, by the reason the schedule gives
_SCHEDULE_INPUTS = {"warm-up": "warmup_steps", "cool-down": "cooldown_steps", "reset": "reset_steps"}


def schedule_reason(policy, steps: int, method: str) -> Optional[str]:
    """Why a run of `steps` steps is dense by the policy's own schedule (every step a warm-up, reset or cool-down
    step), or None."""
    dense = policy.scheduled_dense_steps(steps)
    if steps < 1 or len(dense) < steps:
        return None
    kinds = Counter(dense[step] for step in sorted(dense))         # in the order of the run
    made_of = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
    inputs = " / ".join(_SCHEDULE_INPUTS[kind] for kind in _SCHEDULE_INPUTS if kind in kinds)
    return (f"ran dense: the {method} schedule runs every step of this {steps}-step run dense ({made_of}); for a "
            f"few-step model lower {inputs} in {method} Options")


def windows_reason(handler, latent_shape: tuple, method: str) -> Optional[str]:
    """Why a run in ComfyUI's context windows is dense: windows that cut the latent along another axis than a video's
    frames (tiles of an image) are crops of the token grid whose keys and values no other window's forward has."""
    dim = context_windows_off_frames(handler, latent_shape)
    if dim is None:
        return None
    spatial = len(latent_shape) - dim            # 2: rows, 1: columns (of an image or of each video frame)
    axis = {2: "height", 1: "width"}.get(spatial, f"axis {dim}")
    kind = "video" if len(latent_shape) == 5 else "image"
    return (f"ran dense: ComfyUI's context windows cut the latent along its {axis} (dim {dim}): each window is a crop "
            f"of the {kind}, which {method} cannot follow (it follows windows over a video's frames)")


def why_dense(policy, sampler, steps: int, handler, latent_shape: tuple, method: str) -> Tuple[str, str]:
    """Why a run must be dense throughout, and advice for the log; ('', '') where it can run sparse."""
    reason = dense_reason(sampler, policy.follows_fresh_noise, method)
    if reason:
        return reason, SAMPLER_ADVICE
    return schedule_reason(policy, steps, method) or windows_reason(handler, latent_shape, method) or "", ""


def warn(reason: str, node: str, advice: str = "") -> None:
    logging.warning("%s: %s (no speed-up%s)", node, reason, f"; {advice}" if advice else "")
