"""Pure torch/numpy core of the pack: token-sparse engine, policies, schedules, traces.

Nothing here imports ComfyUI; the ComfyUI side lives in the pack's `nodes/` package.
"""
