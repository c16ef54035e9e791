"""SDiT: semantic region-adaptive sampling (SDiT paper Sec. 4), as a token policy for the engine.

After each evaluation: Quickshift segments the token grid by [x_pred || eps] (Eq. 3-4), Eq. 5
scores every token's complexity and Eq. 6 every region's. The next evaluation computes the top
regions, dilated by r tokens (Eq. 7-8), up to the SSD schedule's budget (Eq. 15). Skipped tokens
take a Newton extrapolation of their own output history (Eq. 9-14), faded into reuse as the skip
grows. Dense refresh steps: warm-up, cool-down, optional fixed resets, and an error reset whenever
the extrapolation's relative error on the tokens just computed exceeds a threshold; a few probe
tokens drawn from the skipped ones measure the error there, for the trace. No region starves: a region's score grows with how long its tokens have waited,
and a token skipped `max_skip_age` evaluations in a row runs. With an inpainting mask only tokens
inside it are picked, and the budget is scaled to the mask's area.
"""
from dataclasses import dataclass
from typing import Dict, Hashable, Optional, Sequence

import torch

from . import profiling
from .complexity import batch_region_labels, region_scores_batch, token_complexity
from .device_support import wide_float
from .extrapolation import OutputHistory, relative_error
from .policy import EvalInfo, StepOutput, TokenPolicy
from .ratio_schedule import ssd_counts
from .refresh_schedule import dense_step_reasons
from .region_select import CONNECTIVITIES, DILATION_MODES, select_regions
from .segmentation import BACKENDS, QuickshiftParams, segment_batch
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
    temporal_weight: float = 0.5       # video: + motion, the x_pred difference to the neighbouring frames
    frame_scale: float = 1.0           # video: Quickshift distance between neighbouring frames, in tokens
    connectivity: int = 26             # video: dilation over the 26 (cube) or 6 (faces) neighbours
    top_q: float = 0.2                 # Eq. 6: mean of each region's top 20% tokens
    dilation: int = 1                  # Eq. 7: r
    dilation_mode: str = "on_top"      # dilation on top of the budget, as the paper's Table 5 counts it
    # Newton extrapolation order (0 = reuse). With the horizon fade, order 1 beats reuse at every ratio on
    # the demo model (+0.5 to +1.0 dB, bench/sdit_sweep.py, docs/BENCHMARKS.md); order 2 does not.
    order: int = 1
    decay: float = 1.0                 # lambda of Eq. 12
    horizon: float = 10.0              # lambda_h: higher terms fade with exp(-lambda_h |sigma - s_0|) (calibrated)
    age_weight: float = 0.5            # region score x (1 + w x mean evaluations its tokens were skipped)
    max_skip_age: int = 6              # a token skipped this many evaluations in a row runs (0: no bound)
    probe_fraction: float = 0.02       # skipped tokens computed each sparse step to report their drift
    probe_seed: int = 0
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
            (self.connectivity in CONNECTIVITIES, f"connectivity must be one of {CONNECTIVITIES}"),
            (self.temporal_weight >= 0 and self.frame_scale > 0, "temporal_weight >= 0, frame_scale > 0"),
            (self.order >= 0, "order must be >= 0"),
            (self.decay >= 0, "decay must be >= 0"),
            (self.horizon >= 0, "horizon must be >= 0"),
            (self.age_weight >= 0, "age_weight must be >= 0"),
            (self.max_skip_age >= 0, "max_skip_age must be >= 0"),
            (0.0 <= self.probe_fraction < 1.0, "probe_fraction outside [0, 1)"),
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
    follows_fresh_noise = True         # drift probes see reused outputs go stale and ask for refreshes

    def __init__(self, config: SDiTConfig, patch_size: int, temporal_patch: int = 1, quickshift_parents=None):
        self.config = config.validate()
        self.patch_size = patch_size
        self.temporal_patch = temporal_patch           # latent frames per token (video)
        self.quickshift_parents = quickshift_parents   # the torch backend's window pass (None: its reference)
        self._dense: Optional[Dict[int, str]] = None     # dense step -> why (warm-up, reset, cool-down)
        self._counts: Dict[int, int] = {}
        self._labels: Optional[torch.Tensor] = None          # (B, *grid) from the latest evaluation
        self._complexity: Optional[torch.Tensor] = None      # (B, *grid)
        self._scores: Optional[torch.Tensor] = None          # (B, K) region scores (Eq. 6)
        self._age: Optional[torch.Tensor] = None             # (B, N) evaluations since each token last ran
        self._probes: Dict[int, torch.Tensor] = {}           # eval index -> (B, p) probe tokens (CPU)
        self._generator = torch.Generator().manual_seed(config.probe_seed)
        self._reset_pending = False
        self._prediction = None                              # (stream, eval index, prediction) of the last forward
        self._last_info: Optional[EvalInfo] = None
        self.histories: Dict[Hashable, OutputHistory] = {}
        # for the trace, kept on the sampler's device (a copy to the host per evaluation would wait for the GPU)
        self.label_maps: Dict[int, torch.Tensor] = {}        # eval index -> (B, *grid) int32
        self.complexity_maps: Dict[int, torch.Tensor] = {}   # eval index -> (B, *grid) fp16
        self.drift: Dict[int, float] = {}                    # eval index -> extrapolation error on skipped tokens
        self.drift_computed: Dict[int, float] = {}           # ... on the computed ones (the reset trigger)
        self.probe_counts: Dict[int, int] = {}               # eval index -> probe tokens per image
        self.reasons: Dict[int, str] = {}                    # eval index -> why it ran the way it did

    # ---- which tokens -----------------------------------------------------------------------
    def scheduled_dense_steps(self, steps: int) -> Dict[int, str]:
        c = self.config
        return dense_step_reasons(steps, c.warmup_steps, c.reset_steps, c.cooldown_steps)

    def _schedule(self, info: EvalInfo) -> None:
        c = self.config
        self._dense = self.scheduled_dense_steps(info.steps)
        sparse = [s for s in range(info.steps) if s not in self._dense]
        self._counts = ssd_counts(sparse, info.steps, info.num_tokens, c.sample_ratio, c.ratio_spread, c.tau1, c.tau2)

    def plan(self, info: EvalInfo) -> Optional[torch.Tensor]:
        self._last_info = info
        if self._dense is None:
            self._schedule(info)
        count = self._counts.get(info.step)
        reason = (self._dense.get(info.step, "dense") if count is None else "no segmentation yet" if self._labels is None
                  else "drift reset" if self._reset_pending else "sparse")
        self.reasons[info.index] = reason
        if reason != "sparse":
            self._reset_pending = False        # any dense evaluation is the reset a pending one asked for
            self._age = None                   # every token runs
            return None
        batch, n = self._labels.shape[0], info.num_tokens
        age = self._age if self._age is not None else torch.zeros(batch, n, dtype=torch.int64)
        forced = age >= self.config.max_skip_age if self.config.max_skip_age > 0 else None
        budget = self.budget(count, n)
        if budget >= n:                        # every token, an inpainting mask's outside too (ratio 1)
            selected = torch.arange(n).expand(batch, n)
        else:
            selected = select_regions(self._labels, self._aged_scores(age), self._complexity, budget,
                                      self.config.dilation, self.config.dilation_mode, forced=forced,
                                      selectable=self.selectable, connectivity=self.config.connectivity)
        active = self._with_probes(info, selected.cpu(), n)
        ran = torch.zeros(batch, n, dtype=torch.bool).scatter_(1, active, True)
        self._age = torch.where(ran, torch.zeros_like(age), age + 1)
        return active

    def _aged_scores(self, age: torch.Tensor) -> torch.Tensor:
        """Eq. 6 scores raised by how long a region has waited: score x (1 + w x mean age of its tokens),
        so regions that are never the most complex still get their turn (no starved regions). One pass
        over the batch, on the scores' device."""
        weight = self.config.age_weight
        if weight <= 0:
            return self._scores
        batch, regions = self._scores.shape
        labels = batch_region_labels(self._labels, regions)
        sizes = torch.bincount(labels, minlength=batch * regions).clamp_min(1)
        waited = torch.bincount(labels, weights=age.to(labels.device, wide_float(labels.device)).reshape(-1),
                                minlength=batch * regions)
        mean_age = (waited / sizes).view(batch, regions)
        return self._scores * (1 + weight * mean_age.to(self._scores.dtype))

    def _with_probes(self, info: EvalInfo, selected: torch.Tensor, n: int) -> torch.Tensor:
        """A few tokens drawn at random from the skipped ones are computed too: comparing them with what
        the extrapolation predicted for them gives the drift where it matters (on skipped tokens)."""
        count = min(int(round(self.config.probe_fraction * n)), n - selected.shape[1])
        if self.config.probe_fraction <= 0 or count <= 0:
            return selected
        skipped = torch.ones(selected.shape[0], n, dtype=torch.bool).scatter_(1, selected, False)
        if self.selectable is not None:
            skipped &= self.selectable.cpu()
        keys = torch.rand(selected.shape[0], n, generator=self._generator).masked_fill_(~skipped, 2.0)
        count = min(count, int(skipped.sum(dim=1).min()))
        if count <= 0:
            return selected
        probes = keys.topk(count, dim=1, largest=False).indices
        self._probes[info.index] = probes
        self.probe_counts[info.index] = count
        return torch.cat([selected, probes], dim=1).sort(dim=1).values

    def observe(self, step: StepOutput) -> None:
        """Segments and scores this evaluation's output for the next evaluation's choice."""
        c = self.config
        features = token_features(step.denoised, step.noise, self.patch_size, self.temporal_patch)  # (B, h, w, 2C)
        params = c.quickshift()
        with profiling.span(profiling.SEGMENT):
            labels = segment_batch(features, params, c.backend, c.frame_scale, self.quickshift_parents)
        complexity = token_complexity(step.x, step.denoised, self.patch_size, c.alpha, c.gamma, c.beta,
                                      c.temporal_weight, self.temporal_patch)
        self._labels = labels
        self._complexity = complexity
        self._scores = region_scores_batch(labels, complexity, c.top_q)
        if self._last_info is not None:
            self.label_maps[self._last_info.index] = labels.to(torch.int32)
            self.complexity_maps[self._last_info.index] = complexity.to(torch.float16)

    # ---- what skipped tokens take ---------------------------------------------------------------
    def _predict(self, history: OutputHistory, sigma: float) -> torch.Tensor:
        return history.predict(sigma, self.config.decay, horizon=self.config.horizon)

    def inactive_output(self, stream: Hashable, info: EvalInfo, last_output: torch.Tensor) -> torch.Tensor:
        history = self.histories.get(stream)
        if history is None or history.values is None or self.config.order == 0:
            return last_output
        predicted = self._predict(history, info.sigma)
        self._prediction = (stream, info.index, predicted)    # on_output measures it against this forward's output
        return predicted                                      # float32: the engine casts it as it copies it in

    def _predicted(self, stream: Hashable, info: EvalInfo, history: OutputHistory) -> torch.Tensor:
        """What inactive_output predicted for this forward (the history has not moved since), else anew."""
        kept, self._prediction = self._prediction, None
        if kept is not None and kept[0] == stream and kept[1] == info.index:
            return kept[2]
        return self._predict(history, info.sigma)

    def forget(self, stream: Hashable) -> None:
        self.histories.pop(stream, None)

    def on_output(self, stream: Hashable, info: EvalInfo, output: torch.Tensor,
                  computed: Optional[torch.Tensor]) -> None:
        history = self.histories.setdefault(stream, OutputHistory(self.config.order))
        if computed is not None and history.values is not None:
            # How well the extrapolation predicted the tokens just computed triggers the error resets
            # (measured: a better trigger than the probes, bench/sdit_sweep.py); the probes, drawn from
            # the skipped tokens, report the error where it matters, in the trace.
            predicted = self._predicted(stream, info, history)

            def error_on(where):
                where = where.to(output.device)
                return relative_error(gather_rows(predicted, where), gather_rows(output, where))
            errors = [error_on(computed)]
            probes = self._probes.get(info.index)
            if probes is not None and output.shape[1] == info.num_tokens:  # a context window: probes are video-wide
                errors.append(error_on(probes.repeat(output.shape[0] // probes.shape[0], 1)))
            values = torch.stack(errors).tolist()                          # one read to the host for both
            error, skipped = values[0], values[-1]
            self.drift_computed[info.index] = max(error, self.drift_computed.get(info.index, 0.0))
            self.drift[info.index] = max(skipped, self.drift.get(info.index, 0.0))
            if self.config.drift_threshold > 0 and error > self.config.drift_threshold:
                self._reset_pending = True
        history.record(output, info.sigma, computed)
