"""Named ranges for the profiler (bench/speed.py's per-step breakdown). Off by default: then a span
is a no-op context, so sampling pays nothing for it."""
import contextlib

import torch

ENABLED = False
GATHER, SCATTER, KV_WRITE, PLAN, OBSERVE, SEGMENT = (
    "sdit.gather", "sdit.scatter", "sdit.kv_write", "sdit.plan", "sdit.observe", "sdit.segmentation")
RANGES = (GATHER, SCATTER, KV_WRITE, PLAN, OBSERVE, SEGMENT)


def span(name: str):
    return torch.profiler.record_function(name) if ENABLED else contextlib.nullcontext()
