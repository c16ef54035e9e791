"""What a token policy costs per evaluation, outside the model: operators dispatched, host reads, time.

    python bench/policy_cost.py                                  # CPU: operator and read counts (+ CPU time)
    python bench/policy_cost.py --device cuda --grid 64 128      # GPU: the same, timed, syncs counted by CUDA

Between two forwards the sampler waits for the policy: SDiT segments the last output and picks the next
tokens, RAS ranks its metric. Its tensors are small (one value per token), so on a GPU its time is made of
kernel launches and host syncs, not of work: each dispatched operator costs the CPU several microseconds
and each value read on the host waits for the GPU's queue. This counts both for one evaluation of each
phase (plan, inactive_output, on_output, observe) on synthetic post-CFG outputs of a `grid` x `grid`
token image, batch 2 (cfg > 1: one active set per image, two rows each): operators through PyTorch's
dispatcher (launches: views excluded, they launch nothing) and Triton's launches (SDiT's window pass on a
GPU, kernels/quickshift.py; on the CPU with TRITON_INTERPRET=1), syncs through
`torch.cuda.set_sync_debug_mode` on CUDA (every synchronising CUDA call) and through the dispatcher's value reads on the CPU; time is the median
wall time of the phase with the GPU idle before it (the bubble it puts between two forwards).
"""
import argparse
import collections
import contextlib
import json
import pathlib
import statistics
import sys
import time
import warnings

import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from pack_host import import_comfyui, load_pack  # noqa: E402

VALUE_READS = ("aten::_local_scalar_dense", "aten::equal", "aten::nonzero", "aten::_unique2", "aten::is_nonzero")


def counting_mode():
    """Counts every operator dispatched, and those that launch a kernel on a GPU (views launch none);
    `triton_launches` counts Triton's launches, and the operators Triton's interpreter dispatches while
    it runs a kernel on the CPU (its copies of the arguments) are not counted."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from comfyui_sdit.sdit_core.profiling import launches_kernel

    class Counter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()
            self.launches = 0
            self.triton_launches = 0
            self.in_triton = False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not self.in_triton:
                self.ops[func.name()] += 1
                self.launches += launches_kernel(func)
            return func(*args, **(kwargs or {}))

        @contextlib.contextmanager
        def counting_triton(self):
            """Counts Triton kernel launches (compiled or interpreted), which the dispatcher does not see."""
            try:
                from triton.runtime.interpreter import GridExecutor
                from triton.runtime.jit import JITFunction
            except ImportError:
                yield
                return
            # compiled kernels launch through JITFunction.run; interpreted ones through a GridExecutor (which
            # Triton 3.3's interpreter calls without a `run` of its own)
            launchers = ((JITFunction, "run"), (GridExecutor, "__call__"))
            originals = {cls: (name, getattr(cls, name)) for cls, name in launchers}

            def counted(original):
                def run(kernel, *args, **kwargs):
                    self.triton_launches += not kwargs.get("warmup")
                    self.in_triton = True
                    try:
                        return original(kernel, *args, **kwargs)
                    finally:
                        self.in_triton = False
                return run
            for cls, (name, original) in originals.items():
                setattr(cls, name, counted(original))
            try:
                yield
            finally:
                for cls, (name, original) in originals.items():
                    setattr(cls, name, original)
    return Counter()


def synthetic_step(grid: int, device: str, seed: int):
    """Post-CFG x, x_pred (smooth, a few edges) and eps of a batch-2 16-channel latent, 2x2 pixels a token."""
    from comfyui_sdit.sdit_core.policy import StepOutput
    g = torch.Generator().manual_seed(seed)
    shape = (2, 16, 2 * grid, 2 * grid)
    x = torch.randn(shape, generator=g)
    denoised = torch.randn(shape, generator=g).cumsum(-1).cumsum(-2) / grid
    return StepOutput(*(t.to(device) for t in (x, denoised, x - denoised)), torch.ones(2, device=device))


def policies():
    """Node defaults but for the dense steps (one warm-up step, no resets: every measured evaluation is
    sparse); SDiT's drift threshold is 0 so that random outputs trigger no reset (its error is still
    measured every evaluation, as at the default)."""
    from comfyui_sdit.kernels.quickshift import quickshift_parents
    from comfyui_sdit.sdit_core.ras import RASConfig, RASPolicy
    from comfyui_sdit.sdit_core.sdit import SDiTConfig, SDiTPolicy
    return {"SDiT": lambda: SDiTPolicy(SDiTConfig(sample_ratio=0.25, warmup_steps=1, drift_threshold=0.0), 2,
                                       quickshift_parents=quickshift_parents),     # as the node makes it
            "RAS": lambda: RASPolicy(RASConfig(sample_ratio=0.25, warmup_steps=1, reset_steps=()), 2)}


def measure(make_policy, grid: int, device: str, repeats: int) -> dict:
    """One run: a dense evaluation and a sparse one (lazy constants, caches), then `repeats` sparse
    evaluations; in the first of those each phase is counted, in the others timed."""
    from comfyui_sdit.sdit_core.policy import EvalInfo
    policy, rows = make_policy(), 4                            # batch 2 at cfg > 1: 4 rows
    output = torch.randn(rows, grid * grid, 64, device=device)
    step_output = synthetic_step(grid, device, seed=0)
    state = {}
    phases = {
        "plan": lambda info: state.update(active=policy.plan(info)),
        "inactive_output": lambda info: policy.inactive_output("rows", info, output),
        "on_output": lambda info: policy.on_output("rows", info, output, None if state["active"] is None else
                                                   state["active"].to(device).repeat(rows // 2, 1)),
        "observe": lambda info: policy.observe(step_output),
    }
    counts, times = {}, collections.defaultdict(list)
    for index in range(repeats + 3):
        info = EvalInfo(index, index, 28, 1.0 - index / 28, (grid, grid), 2)
        for name, phase in phases.items():
            if index < 2:
                phase(info)
            elif name not in counts:
                counts[name] = count(lambda: phase(info), device)
            else:
                times[name].append(timed(lambda: phase(info), device))
        if index >= 1 and state["active"] is None:
            raise RuntimeError(f"evaluation {index} ran dense: the cost of sparse evaluations is measured")
    return {name: dict(counts[name], ms=round(statistics.median(times[name]), 3)) for name in counts}


def count(phase, device: str) -> dict:
    mode = counting_mode()
    with warnings.catch_warnings(record=True) as caught, mode.counting_triton():
        warnings.simplefilter("always")
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with mode:
                phase()
        finally:
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    reads = sum(n for name, n in mode.ops.items() if name in VALUE_READS)
    syncs = sum("synchronizing" in str(w.message) for w in caught) if device == "cuda" else reads
    return {"operators": sum(mode.ops.values()), "launches": mode.launches + mode.triton_launches,
            "triton_launches": mode.triton_launches, "syncs": syncs}


def timed(phase, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    phase()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def arguments() -> argparse.ArgumentParser:
    """The command line (tests/test_gpu_runbook.py parses every runbook command with it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--grid", type=int, nargs="+", default=[64])
    parser.add_argument("--policies", nargs="+", default=["SDiT", "RAS"], choices=["SDiT", "RAS"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gpu-path", action="store_true",
                        help="on the CPU, take the code paths a GPU takes (Quickshift's window by one unfold, not a "
                             "loop over its offsets), to count the operators a GPU would launch")
    parser.add_argument("--json", default="")
    return parser


def main() -> None:
    args = arguments().parse_args()
    import_comfyui(cpu=args.device == "cpu")
    load_pack()
    if args.gpu_path:
        import functools
        from comfyui_sdit.sdit_core.segmentation import quickshift_torch
        quickshift_torch._window_sq_dist = functools.partial(quickshift_torch._window_sq_dist, unfold=True)
    rows = []
    for grid in args.grid:
        for name in args.policies:
            phases = measure(policies()[name], grid, args.device, args.repeats)
            total = {key: round(sum(p[key] for p in phases.values()), 3) for key in ("operators", "launches", "syncs", "ms")}
            rows.append({"policy": name, "grid": grid, "device": args.device, "gpu_path": args.gpu_path,
                         "phases": phases, "total": total})
            print(f"{name:5s} {grid}x{grid} {args.device}: " + ", ".join(
                f"{phase} {p['launches']} launches / {p['syncs']} syncs / {p['ms']:.2f} ms" for phase, p in phases.items())
                + f" | total {total['launches']} launches, {total['syncs']} syncs, {total['ms']:.2f} ms")
    if args.json:
        gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
        pathlib.Path(args.json).write_text(json.dumps({"rows": rows, "torch": torch.__version__, "gpu": gpu}, indent=1))


if __name__ == "__main__":
    main()
