"""ComfyUI side of the pack: nodes and per-family model patching."""
