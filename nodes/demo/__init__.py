"""The pack's own small demo model: a tiny Flux (ComfyUI's real class) with a linear patch codec,
so the demo and the example workflows run without downloading any weights."""
