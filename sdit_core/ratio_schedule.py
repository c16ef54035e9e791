"""How many image tokens each sparse step computes: RAS static or dynamic ratio (Sec. 3.3), SDiT SSD schedule (Eq. 15)."""
import math
from typing import Dict, List, Sequence


def static_counts(sparse_steps: Sequence[int], num_tokens: int, ratio: float) -> Dict[int, int]:
    count = max(1, min(num_tokens, int(round(ratio * num_tokens))))
    return {step: count for step in sparse_steps}


def dynamic_counts(sparse_steps: Sequence[int], num_tokens: int, ratio: float, spread: float = 0.5) -> Dict[int, int]:
    """A ratio that falls linearly over the sparse phase, from ratio*(1+spread) to ratio*(1-spread),
    as the image settles (RAS: the model's focus gets more stable in later steps), with exactly the
    token total of the static schedule (same average)."""
    steps = list(sparse_steps)
    if not steps:
        return {}
    spread = max(0.0, min(spread, 1.0, (1.0 / ratio) - 1.0 if ratio > 0 else 0.0))
    total = max(1, min(num_tokens, int(round(ratio * num_tokens)))) * len(steps)
    if len(steps) == 1:
        return {steps[0]: total}
    weights = [1.0 + spread * (1.0 - 2.0 * i / (len(steps) - 1)) for i in range(len(steps))]
    scale = total / sum(weights)
    counts = _round_to_total([w * scale for w in weights], total, lo=1, hi=num_tokens)
    return dict(zip(steps, counts))


def _round_to_total(values: List[float], total: int, lo: int, hi: int) -> List[int]:
    """Integers within [lo, hi] that keep the shape of `values` and sum exactly to `total`
    (clamped to what [lo, hi] allows): water-filling of the clipped excess, then largest remainders."""
    count = len(values)
    total = max(lo * count, min(hi * count, total))
    x = [min(hi, max(lo, v)) for v in values]
    for _ in range(count + 1):                 # each round saturates at least one entry or finishes
        diff = total - sum(x)
        if abs(diff) < 1e-9:
            break
        free = [i for i in range(count) if (x[i] < hi if diff > 0 else x[i] > lo)]
        if not free:
            break
        for i in free:
            x[i] = min(hi, max(lo, x[i] + diff / len(free)))
    floors = [min(hi, int(math.floor(v + 1e-9))) for v in x]
    order = sorted(range(count), key=lambda i: x[i] - floors[i], reverse=True)
    leftover = total - sum(floors)
    for i in order:
        if leftover <= 0:
            break
        if floors[i] < hi:
            floors[i] += 1
            leftover -= 1
    return floors


def on_count_grid(counts: Dict[int, int], grid: int, num_tokens: int) -> Dict[int, int]:
    """The counts as multiples of `grid` (count_grid.py: few distinct shapes on a GPU) with the same
    total to within half a grid step: rounded in grid units by largest remainders, so the schedule's
    shape and its average work stay, and the engine has nothing to pad."""
    if grid <= 1 or not counts:
        return dict(counts)
    steps = list(counts)
    units = _round_to_total([counts[s] / grid for s in steps], int(round(sum(counts.values()) / grid)),
                            lo=1, hi=max(1, num_tokens // grid))
    return {s: min(num_tokens, u * grid) for s, u in zip(steps, units)}


def ssd_fraction(progress: float, p_max: float, p_min: float, tau1: float = 0.1, tau2: float = 0.95) -> float:
    """SDiT Eq. 15, the Structure-Stable-Detail cosine schedule at progress t/T."""
    if progress < tau1 or progress > tau2:
        return p_max
    phase = (progress - tau1) / max(tau2 - tau1, 1e-9)
    return p_min + 0.5 * (p_max - p_min) * (1.0 + math.cos(math.pi * phase))


def ssd_counts(sparse_steps: Sequence[int], steps: int, num_tokens: int, ratio: float, spread: float,
               tau1: float = 0.1, tau2: float = 0.95) -> Dict[int, int]:
    """Token counts per sparse step following Eq. 15 with p_max = ratio (1 + spread) and
    p_min = ratio (1 - spread), scaled so the sparse steps average exactly `ratio`."""
    steps_list = list(sparse_steps)
    if not steps_list:
        return {}
    spread = max(0.0, min(spread, 1.0))
    shape = [ssd_fraction(s / max(steps, 1), 1.0 + spread, 1.0 - spread, tau1, tau2) for s in steps_list]
    total = max(1, min(num_tokens, int(round(ratio * num_tokens)))) * len(steps_list)
    scale = total / sum(shape) if sum(shape) > 0 else 0.0
    return dict(zip(steps_list, _round_to_total([v * scale for v in shape], total, lo=1, hi=num_tokens)))
