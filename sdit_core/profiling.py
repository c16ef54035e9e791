"""Named ranges for the profiler (bench/speed.py's per-step breakdown). Off by default: then a span
is a no-op context, so sampling pays nothing for it. And which dispatched operators launch a kernel on
a GPU (bench/policy_cost.py and tests/test_host_syncs.py count them)."""
import contextlib

import torch

ENABLED = False
GATHER, SCATTER, KV_WRITE, PLAN, OBSERVE, SEGMENT = (
    "sdit.gather", "sdit.scatter", "sdit.kv_write", "sdit.plan", "sdit.observe", "sdit.segmentation")
RANGES = (GATHER, SCATTER, KV_WRITE, PLAN, OBSERVE, SEGMENT)


def span(name: str):
    return torch.profiler.record_function(name) if ENABLED else contextlib.nullcontext()


def launches_kernel(func) -> bool:
    """Whether an operator seen by a TorchDispatchMode launches a kernel on a GPU: views (and detach,
    lift_fresh, which only wrap) launch none."""
    return not func.is_view and func.overloadpacket not in (torch.ops.aten.detach, torch.ops.aten.lift_fresh)
