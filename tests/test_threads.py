"""Forwards of one evaluation running at once in several threads, as newer ComfyUI's multi-GPU sampling
runs cond and uncond (one thread per device): each thread's forward must find its own call."""
import threading

import torch

from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.engine import SparseRun
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from sdit_testkit import FAMILIES, flux_conditioning, random_active


def run_evaluations(concurrent: bool):
    """Two evaluations (dense, then sparse) of a cond and an uncond forward; with `concurrent`, the two
    forwards of an evaluation run in two threads that meet inside the first block, so both calls are
    open at once. Returns {(eval, stream): output}."""
    spec = FAMILIES["flux"]
    model = spec.build(seed=16)
    tokens = 6 * 8
    policy = FixedPlanPolicy([None, random_active(1, tokens, 20, seed=4)])
    patched, slot = apply_token_sparse(model, lambda run: policy, node="test")
    x = torch.randn(1, 16, 12, 16, generator=torch.Generator().manual_seed(0))
    conds = {"cond": flux_conditioning(1)[0], "uncond": flux_conditioning(2)[0]}
    run = SparseRun(policy, x.shape, patch_size=2)
    slot.run = run
    meeting = threading.Barrier(2) if concurrent else None
    block = patched.get_model_object("diffusion_model.double_blocks.0")
    original = block.forward

    def meet_then_forward(*args, **kwargs):
        if meeting is not None:
            meeting.wait(timeout=30)
        return original(*args, **kwargs)
    patched.add_object_patch("diffusion_model.double_blocks.0.forward", meet_then_forward)
    outputs, errors = {}, []

    def forward(index, sigma, name):
        try:
            call = run.open_forward(x.shape, sigma, None, name)
            options = dict(patched.model_options["transformer_options"], wrappers=patched.wrappers)
            try:
                context, extra = conds[name]
                out = patched.model.diffusion_model(x, torch.full((1,), sigma), context=context,
                                                    y=extra["pooled_output"], guidance=torch.tensor([3.5]),
                                                    transformer_options=options)
            finally:
                run.close_forward(call, True)
            outputs[(index, name)] = out
        except Exception as error:          # surfaced by the test below
            errors.append(error)
            if meeting is not None:
                meeting.abort()

    patched.patch_model(load_weights=False)
    try:
        for index, sigma in enumerate((0.8, 0.6)):
            if concurrent:
                threads = [threading.Thread(target=forward, args=(index, sigma, name)) for name in conds]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            else:
                for name in conds:
                    forward(index, sigma, name)
    finally:
        patched.unpatch_model(unpatch_weights=False)
        slot.run = None
    assert not errors, errors
    return outputs, run


def test_concurrent_cond_and_uncond_forwards_equal_sequential_ones():
    sequential, _ = run_evaluations(concurrent=False)
    concurrent, run = run_evaluations(concurrent=True)
    assert sequential.keys() == concurrent.keys()
    for key in sequential:
        assert torch.equal(concurrent[key], sequential[key]), key
    # one evaluation record per sigma, each with both forwards, the second one sparse
    assert [len(e.calls) for e in run.evals] == [2, 2]
    assert [c.dense for c in run.evals[1].calls] == [False, False]
