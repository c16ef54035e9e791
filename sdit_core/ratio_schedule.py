"""How many image tokens each sparse step computes (RAS Sec. 3.3: static or dynamic ratio)."""
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
    """Integer rounding that keeps the exact total (largest remainders get the leftover tokens)."""
    floors = [max(lo, min(hi, int(v))) for v in values]
    leftover = total - sum(floors)
    order = sorted(range(len(values)), key=lambda i: values[i] - int(values[i]), reverse=leftover > 0)
    i = 0
    while leftover != 0 and i < 4 * len(values):
        j = order[i % len(values)]
        step = 1 if leftover > 0 else -1
        if lo <= floors[j] + step <= hi:
            floors[j] += step
            leftover -= step
        i += 1
    return floors
