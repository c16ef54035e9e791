"""Which sampling steps run densely: warm-up, error resets, cool-down (RAS Sec. 3.3, SDiT Sec. 4)."""
from typing import Dict, Iterable, List, Sequence, Set


def parse_step_list(spec: str) -> List[float]:
    """'0.4, 0.67' or '12, 20' -> numbers. Fractions (< 1) are positions in the run, so they scale
    with the step count; whole numbers >= 1 are step indices."""
    values = []
    for part in spec.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"'{part}' is not a number (expected e.g. '0.4, 0.67' or '12, 20')") from None
        if value < 0:
            raise ValueError(f"step {value} is negative")
        if value >= 1 and value != int(value):
            raise ValueError(f"step {value}: use a fraction below 1 or a whole step number")
        values.append(value)
    return values


def resolve_steps(values: Iterable[float], steps: int) -> Set[int]:
    """Fractions -> round(fraction * steps); whole numbers stay. Steps outside the run are dropped."""
    resolved = set()
    for value in values:
        step = int(round(value * steps)) if value < 1 else int(value)
        if 0 <= step < steps:
            resolved.add(step)
    return resolved


def dense_step_reasons(steps: int, warmup: int, resets: Sequence[float] = (), cooldown: int = 0) -> Dict[int, str]:
    """Step index -> why that step runs every token: 'warm-up', 'cool-down' or 'reset'."""
    if warmup < 0 or cooldown < 0:
        raise ValueError("warm-up and cool-down step counts must be >= 0")
    reasons = {step: "reset" for step in resolve_steps(resets, steps)}
    reasons.update({step: "cool-down" for step in range(max(steps - cooldown, 0), steps)})
    reasons.update({step: "warm-up" for step in range(min(warmup, steps))})
    return reasons


def dense_steps(steps: int, warmup: int, resets: Sequence[float] = (), cooldown: int = 0) -> Set[int]:
    """The set of step indices that run every token."""
    return set(dense_step_reasons(steps, warmup, resets, cooldown))
