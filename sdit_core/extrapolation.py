"""Velocity-space Newton extrapolation of skipped tokens' model outputs (SDiT Eq. 9-14).

In ComfyUI's sampling space every model type's output is the ODE velocity d = (x - x0) / sigma
(flow models: v; eps models: eps), already normalised for the step size: it is the paper's
v_t = eps_t / (sigma_t - sigma_{t-1}) (Eq. 9), with eps_t the step's increment. So the history holds
the model outputs themselves, per token, at the sigmas where that token was last computed.

    v(sigma) ~ sum_k w_k alpha_k(sigma) v[s_0, ..., s_k]                      (Eq. 13)
    alpha_k(sigma) = prod_{j<k} (sigma - s_j)                                (Eq. 11)
    w_k = exp(-lambda |s_0 - s_k|)                                           (Eq. 12)

with s_0 the token's newest sample and v[...] divided differences (Eq. 10). Eq. 12 writes
sigma_t - sigma_{t-k}, which is negative on a decreasing schedule and would amplify; the paper's
stated intent is to attenuate, hence the absolute gap. Order 0 returns the newest sample: RAS reuse.

Eq. 12 damps by the spacing of the history, so nothing weakens a prediction as it reaches further
ahead; measured on dense trajectories of the demo model, a linear step beats reuse up to about 4 steps
ahead and loses beyond 6. Every term of order >= 1 is therefore also weighted by the horizon,
exp(-lambda_h |sigma - s_0|) (lambda_h = `horizon`, 0 = off), which fades the extrapolation into reuse
for tokens skipped long. The history is kept in float32 whatever the model's dtype, its sigmas and the
divided differences in float64 where the device has it (device_support.wide_float).
"""
from typing import Optional

import torch

from .device_support import wide_float


class OutputHistory:
    """Per token, the newest `order + 1` computed outputs and their sigmas (index 0 = newest)."""

    def __init__(self, order: int):
        if order < 0:
            raise ValueError("extrapolation order must be >= 0")
        self.order = order
        self.values: Optional[torch.Tensor] = None     # (K, R, N, C)
        self.sigmas: Optional[torch.Tensor] = None     # (K, R, N) float64 (float32 where the device has none)
        self.count: Optional[torch.Tensor] = None      # (R, N) samples held

    def record(self, output: torch.Tensor, sigma: float, computed: Optional[torch.Tensor]) -> None:
        """output (R, N, C) of one forward; computed (R, n) token indices, None = every token."""
        k = self.order + 1
        rows, tokens, _ = output.shape
        if self.values is None or self.values.shape[1:] != output.shape:
            # at least float32: a bf16 history would round every divided difference
            self.values = output.new_zeros((k,) + tuple(output.shape),
                                           dtype=torch.promote_types(output.dtype, torch.float32))
            self.sigmas = torch.zeros(k, rows, tokens, dtype=wide_float(output.device), device=output.device)
            self.count = torch.zeros(rows, tokens, dtype=torch.int64, device=output.device)
        mask = torch.ones(rows, tokens, dtype=torch.bool, device=output.device)
        if computed is not None:
            mask = torch.zeros_like(mask).scatter_(1, computed.to(output.device), True)
        if k > 1:  # shift the computed tokens' samples one slot older
            shifted_v = torch.cat([self.values[:1], self.values[:-1]])
            shifted_s = torch.cat([self.sigmas[:1], self.sigmas[:-1]])
            self.values = torch.where(mask[None, ..., None], shifted_v, self.values)
            self.sigmas = torch.where(mask[None], shifted_s, self.sigmas)
        self.values[0] = torch.where(mask[..., None], output.to(self.values.dtype), self.values[0])
        self.sigmas[0] = torch.where(mask, torch.full_like(self.sigmas[0], float(sigma)), self.sigmas[0])
        self.count = torch.where(mask, torch.clamp(self.count + 1, max=k), self.count)

    def predict(self, sigma: float, decay: float = 0.0, order: Optional[int] = None,
                horizon: float = 0.0) -> torch.Tensor:
        """Extrapolated outputs (R, N, C, the history's dtype) at `sigma` for every token (Eq. 13)."""
        if self.values is None:
            raise RuntimeError("no outputs recorded yet")
        order = self.order if order is None else min(order, self.order)
        return newton_extrapolate(self.values[: order + 1], self.sigmas[: order + 1], self.count, sigma, decay,
                                  horizon)


def newton_extrapolate(values: torch.Tensor, sigmas: torch.Tensor, count: torch.Tensor, sigma: float,
                       decay: float, horizon: float = 0.0) -> torch.Tensor:
    """values (K, R, N, C) newest first, sigmas (K, R, N), count (R, N) valid samples per token."""
    k = values.shape[0]
    table = values.to(wide_float(values.device))
    result = table[0].clone()
    basis = torch.ones_like(sigmas[0])
    usable = torch.ones_like(count, dtype=torch.bool)
    entry_ok = torch.ones_like(sigmas, dtype=torch.bool)                  # finite divided differences
    for level in range(1, k):
        gap = sigmas[: k - level] - sigmas[level:]                          # s_j - s_{j+level}
        entry_ok = entry_ok[:-1] & entry_ok[1:] & (gap.abs() > 1e-12)
        safe = torch.where(entry_ok, gap, torch.ones_like(gap))
        table = (table[: k - level] - table[1: k - level + 1]) / safe[..., None]
        # a token uses this order only with enough distinct samples
        usable = usable & (count > level) & entry_ok[0]
        basis = basis * (sigma - sigmas[level - 1])
        weight = torch.exp(-decay * (sigmas[0] - sigmas[level]).abs() - horizon * (sigma - sigmas[0]).abs())
        term = (weight * basis)[..., None] * table[0]
        result = result + torch.where(usable[..., None], term, torch.zeros_like(term))
    return result.to(values.dtype)


def relative_error(predicted: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    """||predicted - actual|| / ||actual|| (the drift measure of SDiT's error resets), a 0-d tensor on their
    device (float64 where it has it): reading it on the host waits for the GPU, so callers read several at once."""
    wide = wide_float(actual.device)
    return (torch.linalg.vector_norm((predicted - actual).to(wide)) /
            torch.linalg.vector_norm(actual.to(wide)).clamp_min(1e-12))
