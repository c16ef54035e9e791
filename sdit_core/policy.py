"""What a token-selection policy (RAS, SDiT, ...) tells the engine, and what it is told."""
import math
from dataclasses import dataclass
from typing import Dict, Hashable, Optional, Tuple

import torch


@dataclass(frozen=True)
class StepOutput:
    """The sampler's post-CFG view of one evaluation, in latent space (B, C, H, W): the input x, the
    predicted clean latent (x_pred) and the predicted noise (eps), converted by the model's own
    sampling parameterisation, and sigma (B,)."""
    x: torch.Tensor
    denoised: torch.Tensor
    noise: torch.Tensor
    sigma: torch.Tensor


@dataclass(frozen=True)
class EvalInfo:
    """One model evaluation of a sampling run (a step, or a sub-step of a multi-stage sampler)."""
    index: int                  # 0-based evaluation counter within the run
    step: int                   # the sampling step this evaluation belongs to
    steps: int                  # steps in the run's schedule
    sigma: float
    grid: Tuple[int, ...]       # token grid: (rows, cols), or (frames, rows, cols) for a video
    batch: int                  # images (videos) in the latent batch
    count_grid: int = 1         # the engine rounds sparse counts up to a multiple of this (count_grid.py)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)


class TokenPolicy:
    """Base policy: dense everywhere, inactive tokens reuse their last computed output (RAS)."""

    # (B, N) bool: the only tokens sparse steps may pick, or None for all (inpainting: inside the mask,
    # set by the engine's host when sampling starts). Outside, the sampler discards the model's output.
    selectable: Optional[torch.Tensor] = None
    # does the policy measure its own error on skipped tokens and refresh (it can follow samplers that
    # add fresh noise every step)?
    follows_fresh_noise = False

    def budget(self, count: int, num_tokens: int) -> int:
        """A schedule's token count for the whole grid, scaled to the selectable region (the largest one
        in the batch): a mask over a quarter of the image costs a quarter of the sparse-step work. A count of
        every token stays every token, outside the mask too: at ratio 1 a masked run samples as KSampler does."""
        if self.selectable is None or count >= num_tokens:
            return count
        region = int(self.selectable.sum(dim=1).max())
        return max(1, min(region, int(round(count * region / num_tokens))))

    def plan(self, info: EvalInfo) -> Optional[torch.Tensor]:
        """Active image tokens for this evaluation: (batch, n) token indices, or None for a dense step."""
        return None

    def scheduled_dense_steps(self, steps: int) -> Dict[int, str]:
        """The steps of a `steps`-step run that the policy's schedule runs dense whatever the image, each with why
        ('warm-up', 'reset', 'cool-down'): where that is every step, the run cannot be sped up and the node says so
        before it samples."""
        return {}

    def planned_uses(self, info: EvalInfo, count: int) -> Optional[int]:
        """How many evaluations of the run, this one included, the policy plans with `count` active
        tokens per image; None when it cannot tell (counts that follow the image). A CUDA graph is
        captured only for a count that comes back often enough to pay for its capture (forward_graphs.py)."""
        return None

    def inactive_output(self, stream: Hashable, info: EvalInfo, last_output: torch.Tensor) -> torch.Tensor:
        """Token-space model output (rows, tokens, channels) that inactive tokens take this evaluation, in
        any dtype (the engine copies it into the forward's output dtype)."""
        return last_output

    def on_output(self, stream: Hashable, info: EvalInfo, output: torch.Tensor,
                  computed: Optional[torch.Tensor]) -> None:
        """Called after each forward with its full token-space output and the computed token index
        (None when every token was computed)."""

    def observe(self, step: StepOutput) -> None:
        """Called once per evaluation with the post-CFG output (for the next evaluation's choice)."""

    def forget(self, stream: Hashable) -> None:
        """The engine dropped a stream (one that sat out an evaluation: a context window that moved, Skip
        Layer Guidance's network after its range, a prompt whose range ended): drop what is kept for it."""


class FixedPlanPolicy(TokenPolicy):
    """Plays back a given plan per evaluation index (None = dense); used by tests and benchmarks."""

    def __init__(self, plans):
        self.plans = list(plans)

    def plan(self, info: EvalInfo) -> Optional[torch.Tensor]:
        return self.plans[info.index] if info.index < len(self.plans) else None

    def planned_uses(self, info: EvalInfo, count: int) -> Optional[int]:
        return sum(1 for p in self.plans[info.index:] if p is not None and p.shape[1] == count)
