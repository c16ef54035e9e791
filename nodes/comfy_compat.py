"""Every place where the pack adapts to what the running ComfyUI has: feature probes, never version
numbers, gathered here so the differences we handle can be read in one place."""


def weights_may_move(patcher) -> bool:
    """Can the model's weights change address during a forward? Low-VRAM mode streams them in block by
    block; dynamic VRAM (`ModelPatcherDynamic`, newer ComfyUI, default on CUDA there) stages them on
    demand and never sets `model_lowvram`. A replayed CUDA graph would read freed memory."""
    if getattr(patcher.model, "model_lowvram", False):
        return True
    is_dynamic = getattr(patcher, "is_dynamic", None)
    return bool(is_dynamic()) if callable(is_dynamic) else False
