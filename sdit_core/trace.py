"""REGION_TRACE: what a region-adaptive run did, step by step; compact and on the CPU."""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from .engine import EvalRecord, SparseRun
from .tokens import index_to_mask, token_grid


PIXELS_PER_LATENT = 8       # most VAEs downscale by 8 in each side; a model that says otherwise is read


@dataclass
class StepTrace:
    eval_index: int
    step: int
    sigma: float
    dense: bool
    active: torch.Tensor                 # (B, *grid) bool: tokens computed this evaluation (grid: (h, w) or (t, h, w))
    tokens: int                          # image tokens computed per image (row-weighted over calls)
    metric: Optional[torch.Tensor] = None   # (B, *grid) fp16 score map from this evaluation's output
    labels: Optional[torch.Tensor] = None   # (B, *grid) int32 region labels (SDiT)
    reason: str = ""                        # why the evaluation ran dense or sparse
    drift: Optional[float] = None           # SDiT: extrapolation's relative error on skipped (probe) tokens
    drift_computed: Optional[float] = None  # SDiT: ... on the computed tokens (what error resets act on)
    probes: int = 0                         # SDiT: of `tokens`, drawn from the skipped ones to measure drift


@dataclass
class RegionTrace:
    method: str
    grid: Tuple[int, int]
    batch: int
    patch_size: int
    steps: List[StepTrace] = field(default_factory=list)
    settings: Dict[str, object] = field(default_factory=dict)
    pixels_per_latent: int = PIXELS_PER_LATENT      # image pixels per latent pixel (side): the model's VAE downscale

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def update_count(self) -> torch.Tensor:
        """(B, h, w): evaluations in which each token was computed."""
        if not self.steps:
            return torch.zeros(self.batch, *self.grid, dtype=torch.int32)
        return torch.stack([s.active for s in self.steps]).sum(dim=0, dtype=torch.int32)

    @property
    def tokens_per_step(self) -> List[int]:
        return [s.tokens for s in self.steps]

    @property
    def work_fraction(self) -> float:
        """Image-token work through the transformer relative to dense sampling."""
        if not self.steps:
            return 1.0
        return sum(self.tokens_per_step) / (len(self.steps) * self.num_tokens)

    @property
    def dense_steps(self) -> int:
        return sum(1 for s in self.steps if s.dense)

    def summary(self) -> Dict[str, object]:
        return {"method": self.method, "evaluations": len(self.steps), "dense_evaluations": self.dense_steps,
                "sparse_evaluations": len(self.steps) - self.dense_steps,
                "work_fraction": round(self.work_fraction, 4), "grid": list(self.grid)}

    def __repr__(self) -> str:  # shown by ComfyUI debugging tools; keep it short
        return f"RegionTrace({self.summary()})"


def empty_trace(method: str, latent_shape, patch_size: int, settings=None, temporal_patch: int = 1,
                pixels_per_latent: int = PIXELS_PER_LATENT) -> RegionTrace:
    """The trace of a run that sampled nothing (denoise 0: the latent comes back unchanged)."""
    grid = token_grid(latent_shape, patch_size, temporal_patch)
    return RegionTrace(method=method, grid=grid, batch=int(latent_shape[0]), patch_size=patch_size,
                       settings=dict(settings or {}), pixels_per_latent=pixels_per_latent)


def evaluation_tokens(record: EvalRecord, num_tokens: int) -> Tuple[int, bool]:
    """Tokens per image the evaluation computed, as a share of the grid: a context window's forward
    counts against the tokens of its own frames."""
    rows = sum(c.rows for c in record.calls)
    if rows == 0:
        return num_tokens, True
    work = sum(c.rows * c.image_tokens for c in record.calls)
    covered = sum(c.rows * (c.grid_tokens or num_tokens) for c in record.calls)
    return int(round(num_tokens * work / covered)), all(c.dense for c in record.calls)


def trace_from_run(run: SparseRun, method: str, metric_maps: Optional[Dict[int, torch.Tensor]] = None,
                   label_maps: Optional[Dict[int, torch.Tensor]] = None, settings=None,
                   reasons: Optional[Dict[int, str]] = None, drift: Optional[Dict[int, float]] = None,
                   probes: Optional[Dict[int, int]] = None,
                   drift_computed: Optional[Dict[int, float]] = None,
                   pixels_per_latent: int = PIXELS_PER_LATENT) -> RegionTrace:
    trace = RegionTrace(method=method, grid=run.grid, batch=run.batch, patch_size=run.patch_size,
                        settings=dict(settings or {}), pixels_per_latent=pixels_per_latent)
    for record in run.evals:
        tokens, dense = evaluation_tokens(record, math.prod(run.grid))
        if dense or record.active is None:
            active = torch.ones(run.batch, *run.grid, dtype=torch.bool)
        else:
            active = index_to_mask(record.active, math.prod(run.grid)).view(run.batch, *run.grid)
        index = record.info.index
        trace.steps.append(StepTrace(
            eval_index=index, step=record.info.step, sigma=record.info.sigma, dense=dense, active=active,
            tokens=tokens, metric=_on_host((metric_maps or {}).get(index)),
            labels=_on_host((label_maps or {}).get(index)),
            reason=(reasons or {}).get(index, "dense" if dense else "sparse"), drift=(drift or {}).get(index),
            drift_computed=(drift_computed or {}).get(index),
            probes=0 if dense else (probes or {}).get(index, 0)))
    return trace


def _on_host(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A per-evaluation map the policy kept on the sampler's device, moved to the host once the run is over."""
    return None if tensor is None else tensor.cpu()


def longest_skip(trace) -> int:
    """Longest run of consecutive evaluations in which some token was not computed."""
    streak = torch.zeros_like(trace.steps[0].active, dtype=torch.int64)
    longest = 0
    for s in trace.steps:
        streak = torch.where(s.active, torch.zeros_like(streak), streak + 1)
        longest = max(longest, int(streak.max()))
    return longest
