"""Mapping model evaluations onto sampling steps."""
import torch


def step_of_sigma(sample_sigmas: torch.Tensor, sigma: float) -> int:
    """Index of the step whose interval [sigmas[i], sigmas[i+1]) holds sigma (schedules descend).

    A step's own sigma maps to that step; the intermediate evaluations of multi-stage samplers
    (DPM++ 2S, ...) fall between two schedule sigmas and map to the step they refine. An evaluation
    exactly at sigma_{i+1} (Heun's corrector) cannot be told apart from step i+1 and counts there.
    """
    starts = sample_sigmas[:-1].cpu().double()        # on the host: the sampler's device may lack float64
    if starts.numel() == 0:
        return 0
    tolerance = 1e-6 * max(1.0, abs(sigma))
    index = int((starts >= sigma - tolerance).sum().item()) - 1
    return min(max(index, 0), starts.numel() - 1)
