"""SDiT: semantic region-adaptive sampling (SDiT paper Sec. 4), as a token policy for the engine.

After each evaluation: Quickshift segments the token grid by [x_pred || eps] (Eq. 3-4), Eq. 5
scores every token's complexity and Eq. 6 every region's. The next evaluation computes the top
regions, dilated by r tokens (Eq. 7-8), up to the SSD schedule's budget (Eq. 15). Skipped tokens
take a Newton extrapolation of their own output history (Eq. 9-14). Dense refresh steps: warm-up,
cool-down, optional fixed resets, and an error reset whenever the extrapolator's relative error
on the tokens just computed (the drift) exceeds a threshold.
"""
from dataclasses import dataclass
from typing import Dict, Hashable, List, Optional, Sequence

import torch

from . import profiling
from .complexity import region_scores, token_complexity
from .extrapolation import OutputHistory, relative_error
from .policy import EvalInfo, StepOutput, TokenPolicy
from .ratio_schedule import ssd_counts
from .refresh_schedule import dense_steps
from .region_select import DILATION_MODES, select_regions
from .segmentation import BACKENDS, QuickshiftParams, segment
from .tokens import gather_rows
from .token_features import token_features


@dataclass
class SDiTConfig:
    sample_ratio: float = 0.5          # average fraction of image tokens in sparse steps
    ratio_spread: float = 0.5          # SSD: p_max = ratio (1 + spread), p_min = ratio (1 - spread)
    tau1: float = 0.1
    tau2: float = 0.95
    backend: str = "torch"             # segmentation backend
    kernel_size: float = 2.0
    max_dist: float = 6.0
    feature_ratio: float = 4.0         # Quickshift ratio: features against token positions
    alpha: float = 1.0                 # Eq. 5 weights: edges, ...
    gamma: float = 0.5                 # ... fine detail (Laplacian), ...
    beta: float = 0.25                 # ... residual noise
    top_q: float = 0.2                 # Eq. 6: mean of each region's top 20% tokens
    dilation: int = 1                  # Eq. 7: r
    dilation_mode: str = "inside"      # dilation counted inside the budget, or on top of it
    order: int = 0                     # Newton extrapolation order (0 = reuse; measured best, docs/BENCHMARKS.md)
    decay: float = 1.0                 # lambda of Eq. 12
    warmup_steps: int = 3
    cooldown_steps: int = 1
    reset_steps: Sequence[float] = ()  # fixed dense resets (fractions or step numbers)
    # error reset when the extrapolator's relative error exceeds this (0: off); 0.1 chosen on the demo
    # model (docs/BENCHMARKS.md): +1.5-2.6 dB for 1-4% more token work, where 0.5 never fired
    drift_threshold: float = 0.1

    def validate(self) -> "SDiTConfig":
        checks = [
            (0.0 < self.sample_ratio <= 1.0, f"sample_ratio {self.sample_ratio} outside (0, 1]"),
            (0.0 <= self.ratio_spread <= 1.0, "ratio_spread outside [0, 1]"),
            (0.0 <= self.tau1 < self.tau2 <= 1.0, "need 0 <= tau1 < tau2 <= 1"),
            (self.backend in BACKENDS, f"backend '{self.backend}' is not one of {BACKENDS}"),
            (0.0 < self.top_q <= 1.0, "top_q outside (0, 1]"),
            (self.dilation >= 0, "dilation must be >= 0"),
            (self.dilation_mode in DILATION_MODES, f"dilation_mode must be one of {DILATION_MODES}"),
            (self.order >= 0, "order must be >= 0"),
            (self.decay >= 0, "decay must be >= 0"),
            (self.warmup_steps >= 0 and self.cooldown_steps >= 0, "warm-up/cool-down steps must be >= 0"),
            (self.drift_threshold >= 0, "drift_threshold must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.quickshift().validate()
        return self

    def quickshift(self) -> QuickshiftParams:
        return QuickshiftParams(kernel_size=self.kernel_size, max_dist=self.max_dist, ratio=self.feature_ratio)


class SDiTPolicy(TokenPolicy):
    def __init__(self, config: SDiTConfig, patch_size: int):
        self.config = config.validate()
        self.patch_size = patch_size
        self._dense: Optional[set] = None
        self._counts: Dict[int, int] = {}
        self._labels: Optional[torch.Tensor] = None          # (B, h, w) from the latest evaluation
        self._complexity: Optional[torch.Tensor] = None      # (B, h, w)
        self._scores: Optional[List[torch.Tensor]] = None    # per image (K_b,)
        self._reset_pending = False
        self._last_info: Optional[EvalInfo] = None
        self.histories: Dict[Hashable, OutputHistory] = {}
        self.label_maps: Dict[int, torch.Tensor] = {}        # eval index -> (B, h, w) int32, CPU
        self.complexity_maps: Dict[int, torch.Tensor] = {}   # eval index -> (B, h, w) fp16, CPU
        self.drift: Dict[int, float] = {}                    # eval index -> extrapolator relative error
        self.reasons: Dict[int, str] = {}                    # eval index -> why it ran the way it did

    # ---- which tokens -----------------------------------------------------------------------
    def _schedule(self, info: EvalInfo) -> None:
        c = self.config
        self._dense = dense_steps(info.steps, c.warmup_steps, c.reset_steps, c.cooldown_steps)
        sparse = [s for s in range(info.steps) if s not in self._dense]
        self._counts = ssd_counts(sparse, info.steps, info.num_tokens, c.sample_ratio, c.ratio_spread, c.tau1, c.tau2)

    def plan(self, info: EvalInfo) -> Optional[torch.Tensor]:
        self._last_info = info
        if self._dense is None:
            self._schedule(info)
        count = self._counts.get(info.step)
        if count is None:
            self.reasons[info.index] = "refresh"
            return None
        if self._labels is None:
            self.reasons[info.index] = "no segmentation yet"
            return None
        if self._reset_pending:
            self._reset_pending = False
            self.reasons[info.index] = "drift reset"
            return None
        self.reasons[info.index] = "sparse"
        return select_regions(self._labels, self._scores, self._complexity, count,
                              self.config.dilation, self.config.dilation_mode)

    def observe(self, step: StepOutput) -> None:
        """Segments and scores this evaluation's output for the next evaluation's choice."""
        c = self.config
        features = token_features(step.denoised, step.noise, self.patch_size)     # (B, h, w, 2C)
        params = c.quickshift()
        with profiling.span(profiling.SEGMENT):
            labels = torch.stack([segment(features[b], params, c.backend) for b in range(features.shape[0])])
        complexity = token_complexity(step.x, step.denoised, self.patch_size, c.alpha, c.gamma, c.beta)
        self._labels = labels
        self._complexity = complexity
        self._scores = [region_scores(labels[b], complexity[b], c.top_q) for b in range(labels.shape[0])]
        if self._last_info is not None:
            self.label_maps[self._last_info.index] = labels.to("cpu", torch.int32)
            self.complexity_maps[self._last_info.index] = complexity.to("cpu", torch.float16)

    # ---- what skipped tokens take ---------------------------------------------------------------
    def inactive_output(self, stream: Hashable, info: EvalInfo, last_output: torch.Tensor) -> torch.Tensor:
        history = self.histories.get(stream)
        if history is None or history.values is None or self.config.order == 0:
            return last_output
        return history.predict(info.sigma, self.config.decay).to(last_output.dtype)

    def on_output(self, stream: Hashable, info: EvalInfo, output: torch.Tensor,
                  computed: Optional[torch.Tensor]) -> None:
        history = self.histories.setdefault(stream, OutputHistory(self.config.order))
        if computed is not None and history.values is not None:
            # drift: how well the extrapolator predicted the tokens that were just computed
            predicted = gather_rows(history.predict(info.sigma, self.config.decay), computed.to(output.device))
            error = relative_error(predicted, gather_rows(output, computed.to(output.device)))
            self.drift[info.index] = max(error, self.drift.get(info.index, 0.0))
            if self.config.drift_threshold > 0 and error > self.config.drift_threshold:
                self._reset_pending = True
        history.record(output, info.sigma, computed)
