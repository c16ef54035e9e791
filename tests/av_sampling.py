"""Sampling a latent of several parts (ComfyUI's NestedTensor: a video and its audio, LTX-2's and MiniMax H3's) in the
tests: ComfyUI's own sampling and nodes over it, one result per part."""
import importlib

import torch

import comfy.sample
import comfy.samplers

from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from test_video import RecordingPolicy

comfy_nodes = importlib.import_module("nodes")   # ComfyUI's nodes.py


def outputs(node_output):
    """A node's outputs as a tuple (newer nodes return a NodeOutput)."""
    return tuple(node_output.result) if hasattr(node_output, "result") else tuple(node_output)


def noise_for(samples, seed):
    g = torch.Generator().manual_seed(seed)
    return type(samples)([torch.randn(part.shape, generator=g) for part in samples.unbind()])


def sample(model, latent: dict, cfg, conditioning: dict, steps=4, seed=5):
    """ComfyUI's sampling over the latent: one tensor per part."""
    samples = latent["samples"]
    out = comfy.sample.sample(model, noise_for(samples, seed), steps, cfg, "euler", "simple", conditioning["positive"],
                              conditioning["negative"], samples, noise_mask=latent.get("noise_mask"), seed=seed,
                              disable_pbar=True)
    return tuple(out.unbind())


def ksampler(model, latent: dict, conditioning: dict, cfg=2.5, steps=6):
    out = comfy_nodes.KSampler().sample(model, 3, steps, cfg, "euler", "simple", conditioning["positive"],
                                        conditioning["negative"], latent)[0]["samples"]
    return tuple(out.unbind())


def assert_parts_within(out, reference, tol):
    for part, expected in zip(out, reference, strict=True):
        assert (part - expected).abs().max().item() <= tol


def dense_then_sparse(model, latent: dict, active, cfg, conditioning: dict, audio_values: int, sigma=0.8):
    """One dense and then one sparse forward on the same input at `sigma` through ComfyUI's sampling: the video's
    token outputs by stream ([(dense, computed), (sparse, computed)]) and the audio's part (the packed output's last
    `audio_values`) of the two evaluations' outputs."""
    policy = RecordingPolicy([None, active])
    patched, _ = apply_token_sparse(model, lambda run: policy, node="test")
    audio = []

    def twice(model, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        for _ in range(2):
            audio.append(model(x, sigmas[0] * s_in, **extra_args)[:, 0, -audio_values:].clone())
        return x
    samples = latent["samples"]
    comfy.sample.sample_custom(patched, noise_for(samples, 9), cfg, comfy.samplers.KSAMPLER(twice),
                               torch.tensor([sigma, 0.0]), conditioning["positive"], conditioning["negative"], samples,
                               noise_mask=latent.get("noise_mask"), disable_pbar=True, seed=9)
    by_stream = {}
    for stream, out, computed in policy.outputs:
        by_stream.setdefault(stream, []).append((out, computed))
    return by_stream, audio


def sampler_node_end_to_end(model, latent: dict, conditioning: dict, method: str, grid: tuple, tokens: int):
    """The RAS or SDiT Sampler node over the latent beside KSampler: some steps sparse, every part differing from full
    sampling and finite, the trace over the video's tokens, the model passed in unchanged."""
    from sdit_testkit import ras_sample, sdit_sample
    from test_ras_sampler import ras_args
    from test_sdit_sampler import defaults as sdit_defaults
    from test_video import SDIT_END_TO_END
    a = dict(ras_args(steps=6, cfg=2.5, sample_ratio=0.3, reset_steps=""), **conditioning)
    before = ksampler(model, latent, conditioning)
    if method == "RAS":
        out, trace = ras_sample(model, latent_image=latent, **a)
    else:
        out, trace = sdit_sample(model, 3, 6, 2.5, "euler", "simple", a["positive"], a["negative"], latent, 1.0,
                                 **sdit_defaults(**SDIT_END_TO_END))
    unchanged = ksampler(model, latent, conditioning)
    assert all(torch.equal(x, y) for x, y in zip(before, unchanged)), "the model passed in is unchanged"
    assert trace.grid == grid and trace.batch == latent["samples"].unbind()[0].shape[0]
    assert any(0 < t < tokens for t in trace.tokens_per_step), trace.tokens_per_step
    parts = out["samples"].unbind()
    assert [p.shape for p in parts] == [p.shape for p in before]
    for part, full in zip(parts, before):
        assert torch.isfinite(part).all() and (part - full).abs().max().item() > 1e-4


def model_patch_nodes_under_ksampler(model, latent: dict, conditioning: dict, tol: float):
    """RAS Model Patch at ratio 1 under KSampler gives the model's own parts; RAS and SDiT Model Patch at a lower ratio
    sample; the model passed in is unchanged."""
    from sdit_testkit import ras_model_patch, sdit_model_patch
    from test_sdit_sampler import defaults as sdit_defaults
    from test_video import SDIT_END_TO_END
    reference = ksampler(model, latent, conditioning, cfg=2.0, steps=5)
    assert_parts_within(ksampler(ras_model_patch(model, 1.0, 1, "", 0.1, "std", False)[0], latent, conditioning, 2.0,
                                 5), reference, tol)
    for patched in (ras_model_patch(model, 0.3, 1, "", 0.1, "std", False)[0],
                    sdit_model_patch(model, **sdit_defaults(**SDIT_END_TO_END))[0]):
        video, audio = ksampler(patched, latent, conditioning, 2.0, 5)
        assert torch.isfinite(video).all() and (video - reference[0]).abs().max().item() > 1e-4
        assert torch.isfinite(audio).all()
    assert all(torch.equal(x, y) for x, y in zip(ksampler(model, latent, conditioning, 2.0, 5), reference))
