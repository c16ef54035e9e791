"""RAS: region-adaptive sampling (RAS paper Sec. 3), as a token policy for the engine.

After each evaluation the post-CFG model output gives every token a score (Eq. 1); the next
evaluation computes the tokens the model focuses on, the others reuse their cached output.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch

from .policy import EvalInfo, StepOutput, TokenPolicy
from .ratio_schedule import dynamic_counts, on_count_grid, static_counts
from .refresh_schedule import dense_step_reasons
from .token_metrics import METRICS, noise_prediction, token_metric


@dataclass
class RASConfig:
    sample_ratio: float = 0.5          # average fraction of image tokens computed in sparse steps
    warmup_steps: int = 4              # dense steps at the start (4 of 28-30 in the paper)
    reset_steps: Sequence[float] = (0.4, 0.67)   # dense error resets: fractions of the run or step numbers
    starvation_scale: float = 0.1      # k of exp(k * D)
    metric: str = "std"
    dynamic_ratio: bool = True
    dynamic_spread: float = 0.5        # dynamic ratio runs from (1+spread) to (1-spread) x sample_ratio

    def validate(self) -> "RASConfig":
        if not 0.0 < self.sample_ratio <= 1.0:
            raise ValueError(f"sample_ratio {self.sample_ratio} outside (0, 1]")
        if self.warmup_steps < 0:
            raise ValueError("warmup_steps must be >= 0")
        if self.starvation_scale < 0:
            raise ValueError("starvation_scale must be >= 0")
        if self.metric not in METRICS:
            raise ValueError(f"metric '{self.metric}' is not one of {METRICS}")
        return self


def selection_priority(metric: torch.Tensor, drop_count: torch.Tensor, kind: str, starvation_scale: float) -> torch.Tensor:
    """Log of Eq. 1's R = metric * exp(k * D), oriented so that larger means "compute this token".

    With the std metric the model's focus has the *lower* std (RAS Sec. 3.2), so the score is
    1/std; with the l2 norm, larger norms need refinement. Either way the starvation term only ever
    *raises* the priority of a token that has been dropped often."""
    log_metric = torch.log(metric.clamp_min(1e-12))
    focus = -log_metric if kind == "std" else log_metric
    return focus + starvation_scale * drop_count.to(focus.dtype)


def select_tokens(priority: torch.Tensor, count: int) -> torch.Tensor:
    """(B, N) priorities -> (B, count) sorted indices of the highest (ties: lower index first)."""
    order = torch.sort(priority, dim=1, descending=True, stable=True).indices[:, :count]
    return order.sort(dim=1).values


def scheduled_dense_steps(config: RASConfig, steps: int) -> Dict[int, str]:
    """Warm-up and error resets (RAS Sec. 3.3): step -> why it runs every token."""
    return dense_step_reasons(steps, config.warmup_steps, config.reset_steps)


class RASSchedule:
    """Per step: None for a dense step, else the number of image tokens to compute."""

    def __init__(self, config: RASConfig, steps: int, num_tokens: int, count_grid: int = 1):
        self.dense = scheduled_dense_steps(config, steps)                                 # step -> why
        sparse = [s for s in range(steps) if s not in self.dense]
        make = dynamic_counts if config.dynamic_ratio else static_counts
        extra = {"spread": config.dynamic_spread} if config.dynamic_ratio else {}
        counts = make(sparse, num_tokens, config.sample_ratio, **extra)
        self.counts: Dict[int, int] = on_count_grid(counts, count_grid, num_tokens)

    def count(self, step: int) -> Optional[int]:
        return self.counts.get(step)


class RASPolicy(TokenPolicy):
    def __init__(self, config: RASConfig, patch_size: int, temporal_patch: int = 1):
        self.config = config.validate()
        self.patch_size = patch_size
        self.temporal_patch = temporal_patch           # latent frames per token (video)
        self._schedule: Optional[RASSchedule] = None
        self._metric: Optional[torch.Tensor] = None        # (B, N) from the latest evaluation
        self.drop_count: Optional[torch.Tensor] = None     # (B, N) D of Eq. 1
        self.metric_maps: Dict[int, torch.Tensor] = {}     # eval index -> (B, h, w) fp16, for the trace (device)
        self.reasons: Dict[int, str] = {}                  # eval index -> why it ran dense or sparse
        self._last_info: Optional[EvalInfo] = None

    def plan(self, info: EvalInfo) -> Optional[torch.Tensor]:
        self._last_info = info
        if self._schedule is None:
            self._schedule = RASSchedule(self.config, info.steps, info.num_tokens, info.count_grid)
        count = self._schedule.count(info.step)
        if count is None or self._metric is None:
            self.reasons[info.index] = self._schedule.dense.get(info.step, "dense") if count is None else "no metric yet"
            return None
        self.reasons[info.index] = "sparse"
        if self.drop_count is None:
            self.drop_count = torch.zeros_like(self._metric, dtype=torch.int32)
        priority = selection_priority(self._metric, self.drop_count, self.config.metric, self.config.starvation_scale)
        if self.selectable is not None:        # inpainting: tokens outside the mask are never picked
            priority = priority.masked_fill(~self.selectable.to(priority.device), float("-inf"))
        active = select_tokens(priority, self.budget(count, info.num_tokens))
        dropped = torch.ones_like(self.drop_count, dtype=torch.bool).scatter_(1, active, False)
        self.drop_count += dropped.int()
        return active

    def scheduled_dense_steps(self, steps: int) -> Dict[int, str]:
        return scheduled_dense_steps(self.config, steps)

    def planned_uses(self, info: EvalInfo, count: int) -> Optional[int]:
        """Sparse steps from this one on whose schedule count is `count` (one evaluation per step: a
        multi-stage sampler's extra evaluations only add uses, so this never overstates them)."""
        if self._schedule is None:
            return None
        return sum(1 for step, n in self._schedule.counts.items()
                   if step >= info.step and self.budget(n, info.num_tokens) == count)

    def observe(self, step: StepOutput) -> None:
        """Scores tokens from this evaluation's post-CFG output for the next evaluation."""
        output = noise_prediction(step.x, step.denoised, step.sigma)      # the model-output space (Eq. 1's N)
        metric = token_metric(output, self.patch_size, self.config.metric, self.temporal_patch)
        self._metric = metric.flatten(1)
        if self._last_info is not None:
            self.metric_maps[self._last_info.index] = metric.detach().to(torch.float16)
