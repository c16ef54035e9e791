"""Interface of a model-family adapter, and the patching helpers every adapter shares."""
import inspect
from typing import Callable, Optional, Tuple

import torch


def patch_method(patcher, slot, path: str, before: Optional[Callable] = None, after: Optional[Callable] = None) -> None:
    """Object-patches the method at `path` (e.g. "diffusion_model.forward_orig") through the ModelPatcher.
    While a forward of the engine is open, `before(call, arguments)` edits the arguments (bound by the
    method's own signature, whatever wraps it) and `after(call, result)` maps the result; otherwise the
    method runs unchanged. It calls through to whatever was installed before (another node's patch)."""
    owner_path, name = path.rsplit(".", 1)
    owner = patcher.get_model_object(owner_path)
    original = patcher.get_model_object(path)
    signature = inspect.signature(getattr(type(owner), name).__get__(owner))

    def patched(*args, **kwargs):
        call = slot.current_call()
        if call is None:
            return original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        if before is not None:
            before(call, bound.arguments)
        result = original(*bound.args, **bound.kwargs)
        return after(call, result) if after is not None else result

    patcher.add_object_patch(path, patched)


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
