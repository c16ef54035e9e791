"""The fp8 (e4m3) K/V cache store: half the bytes of bf16, fresh rows exact, stale rows within fp8's
rounding, never NaN; and a sampler run with it stays close to dense on the active tokens."""
import pytest
import torch

from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.kv_cache import FP8_MAX, JointKVCache
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from comfyui_sdit.sdit_core.tokens import index_to_mask
from sdit_testkit import FAMILIES, random_active, sample_with


@pytest.mark.parametrize("layout", ["BHLD", "BLC"])
def test_fp8_store_keeps_fresh_rows_exact_and_stale_rows_close(layout):
    g = torch.Generator().manual_seed(0)
    batch, heads, length, dim, text, n = 2, 3, 40, 16, 5, 9
    seq_dim = 2 if layout == "BHLD" else 1
    shape = (batch, heads, length, dim) if layout == "BHLD" else (batch, length, heads * dim)
    k, v = torch.randn(shape, generator=g), torch.randn(shape, generator=g) * 30.0
    cache = JointKVCache(store="fp8_e4m3")
    cache.store_dense("layer", k, v, seq_dim)
    rows = torch.stack([torch.cat([torch.arange(text), text + torch.randperm(length - text, generator=g)[:n]])
                        for _ in range(batch)])
    new_shape = list(shape)
    new_shape[seq_dim] = text + n
    new_k = torch.randn(new_shape, generator=g) * 5.0          # past the dense amax: clamped, never NaN
    new_v = torch.randn(new_shape, generator=g)
    full_k, full_v = cache.write_sparse("layer", new_k, new_v, rows, seq_dim, shared=False)
    assert torch.isfinite(full_k).all() and torch.isfinite(full_v).all()
    seq_first = (lambda t: t.transpose(1, 2)) if seq_dim == 2 else (lambda t: t)
    fresh = index_to_mask(rows, length)
    for full, new, dense in ((full_k, new_k, k), (full_v, new_v, v)):
        written = seq_first(full)[torch.arange(batch)[:, None], rows]      # (batch, text + n, ...)
        assert torch.equal(written, seq_first(new))
        stale, reference = seq_first(full)[~fresh], seq_first(dense)[~fresh]
        # e4m3 keeps 3 mantissa bits: relative rounding <= 2^-4 of the value, or of the channel's
        # amax / 448 * 2^-9 near zero (subnormals)
        bound = reference.abs() / 16 + dense.abs().amax() / FP8_MAX
        assert ((stale - reference).abs() <= bound).all()
        assert not torch.equal(stale, reference)              # it really is rounded
    fp32_bytes = 2 * k.numel() * 4
    assert cache.nbytes() < fp32_bytes / 3                     # 1 byte per value (+ scales) vs 4


def test_unknown_store_is_refused():
    with pytest.raises(ValueError, match="fp8_e4m3"):
        JointKVCache(store="int4")


class RecordingPolicy(FixedPlanPolicy):
    def __init__(self, plans):
        super().__init__(plans)
        self.outputs = []

    def on_output(self, stream, info, output, computed):
        self.outputs.append((output.clone(), computed))


def run_dense_then_sparse(model, kv_cache):
    spec = FAMILIES["flux"]
    latent = spec.latent(2, 16, 16)
    tokens = spec.tokens(16, 16)
    active = random_active(2, tokens, tokens // 4, seed=1)
    policy = RecordingPolicy([None, active])
    patched, _ = apply_token_sparse(model, lambda run: policy, node="test", kv_cache=kv_cache)

    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        for _ in range(2):                                  # the same input twice: dense, then sparse
            model(x, sigmas[0] * s_in, **extra_args)
        return x
    sample_with(patched, latent, sampler, torch.tensor([0.8, 0.0]), cfg=1.0, seed=9,
                positive=spec.positive(), negative=spec.negative())
    (dense, _), (sparse, computed) = policy.outputs
    mask = index_to_mask(computed, tokens)
    return dense[:, :tokens][mask], sparse[:, :tokens][mask]


def test_sampling_with_an_fp8_cache_stays_close_to_dense_on_active_tokens():
    model = FAMILIES["flux"].build(seed=4)
    dense, exact = run_dense_then_sparse(model, None)
    assert (exact - dense).abs().max().item() <= 1e-5          # control: the exact store is exact
    dense, sparse = run_dense_then_sparse(model, "fp8_e4m3")
    error = ((sparse - dense).norm() / dense.norm()).item()
    assert 0 < error < 3e-2                                    # H200, Flux-dev size: 1.2e-2 (BENCHMARKS)


def test_a_cache_that_does_not_fit_says_how_big_it_is(monkeypatch):
    """Out of memory while the first dense step fills the cache: an out-of-memory error (ComfyUI frees
    its models after one) that says what the cache holds and what makes it smaller."""
    from comfyui_sdit.sdit_core import kv_cache
    stored = []

    def copy_until_full(t):
        if len(stored) == 4:                   # two layers of K and V fit, the third does not
            raise torch.OutOfMemoryError("CUDA out of memory")
        stored.append(t)
        return t.contiguous().clone()
    monkeypatch.setattr(kv_cache, "_stored_copy", copy_until_full)
    cache = kv_cache.JointKVCache()
    k = torch.zeros(1, 1024, 256, dtype=torch.float16)         # 0.5 MiB each for K and V
    cache.store_dense(0, k, k)
    cache.store_dense(1, k, k)
    with pytest.raises(kv_cache.KVCacheOutOfMemory, match=r"2\.0 MiB held for 2 layers, and the next layer's 1\.0 MiB did not fit.*fp8_e4m3.*KSampler") as caught:
        cache.store_dense(2, k, k)
    assert isinstance(caught.value, torch.OutOfMemoryError)
    assert len(cache) == 2


def test_a_device_without_float8_is_told_before_sampling(monkeypatch):
    """Where PyTorch has no float8 on the sampling device (Apple's MPS), the fp8 store is refused before
    the first forward, naming the input and what to choose instead; the model-dtype store samples."""
    from comfyui_sdit.nodes.errors import SDiTInputError
    from comfyui_sdit.sdit_core import device_support
    monkeypatch.setattr(device_support, "_makes", lambda device_type, dtype: dtype != torch.float8_e4m3fn)
    model = FAMILIES["flux"].build(seed=4)
    forwards = []

    def counted(apply, args):
        forwards.append(1)
        return apply(args["input"], args["timestep"], **args["c"])
    model.set_model_unet_function_wrapper(counted)
    with pytest.raises(SDiTInputError, match=r"input 'kv_cache': fp8_e4m3 needs float8 on the sampling device "
                                             r"\(cpu\).*use 'model dtype'"):
        run_dense_then_sparse(model, "fp8_e4m3")
    assert forwards == []
    dense, exact = run_dense_then_sparse(model, "model dtype")
    assert len(forwards) == 2 and (exact - dense).abs().max().item() <= 1e-5
