from typing import Tuple

import torch


def gather_control(call, control: dict) -> dict:
    """ControlNet residuals are added to the image tokens block by block: gather them alike."""
    if control is None or call.dense:
        return control
    gathered = {}
    for name, residuals in control.items():
        if isinstance(residuals, (list, tuple)):
            gathered[name] = [call.gather_grid(r) if torch.is_tensor(r) else r for r in residuals]
        else:
            gathered[name] = residuals
    return gathered


class FamilyAdapter:
    """Interface of a model-family adapter."""
    names: Tuple[str, ...] = ()

    def matches(self, diffusion_model) -> bool:
        raise NotImplementedError

    def patch_size(self, diffusion_model) -> int:
        raise NotImplementedError

    def install(self, patcher, slot) -> None:
        """Adds the object patches that gather image tokens and scatter the output."""
        raise NotImplementedError
