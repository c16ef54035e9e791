"""ComfyUI's "Normalized Attention Guidance" node (newer ComfyUI: `NAGuidance`, experimental) with region-adaptive
sampling, on tiny random-weight Flux, Flux 2 and Krea 2 models (CPU, fp32).

The node patches every block's attention output (`attn1_output_patch`): where cond and uncond run batched, it mixes
each image token's output of the cond rows with the uncond rows' at the same place, per token (over its channels), over
the image part of the sequence (`img_slice`). A sparse forward runs the same tokens, in the same order, for an image's
cond and uncond rows, and `img_slice` is the running tokens' part, so that mix stays exact on the tokens that ran.
Checked: every token active == the node alone; a sparse step after a dense one exact on the tokens that ran (batch 2,
other tokens per image); both sampler nodes end to end."""
import importlib.util

import pytest

from sdit_testkit import FAMILIES, assert_exact_on_active_tokens, random_active, text_conditioning
from test_video import a_patch_runs_with_every_token_active, assert_within, dense_then_sparse, sampler_node_end_to_end

if importlib.util.find_spec("comfy_extras.nodes_nag") is None:
    pytest.skip("this ComfyUI has no Normalized Attention Guidance node", allow_module_level=True)

nag_nodes = importlib.import_module("comfy_extras.nodes_nag")
TOL = 1e-5


def with_nag(model):
    return nag_nodes.NAGuidance.execute(model, nag_scale=5.0, nag_alpha=0.5, nag_tau=1.5)[0]


def image_family(name):
    """A family of sdit_testkit's: its model builder, an 8 x 12 grid's latent for `batch` images, tokens, prompts."""
    spec = FAMILIES[name]
    height, width = spec.same_grid((8, 12))
    return (spec.build, lambda batch: spec.latent(batch, height, width), spec.tokens(height, width),
            dict(positive=spec.positive(), negative=spec.negative()))


def krea2():
    """Prompts of one length, which ComfyUI batches (of two lengths it runs them apart, and the node does nothing)."""
    from test_krea2 import TOKENS, TXT_DIM, TXT_LAYERS, latent, tiny_krea2
    prompts = dict(positive=text_conditioning(1, 7, TXT_LAYERS * TXT_DIM),
                   negative=text_conditioning(2, 7, TXT_LAYERS * TXT_DIM))
    return tiny_krea2, latent, TOKENS, prompts


CASES = {"flux": lambda: image_family("flux"), "flux2": lambda: image_family("flux2"), "krea2": krea2}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("batch", [1, 2])
def test_every_token_active_equals_nag_alone(case, batch):
    build, latent, tokens, prompts = CASES[case]()
    model = build(seed=3)
    a_patch_runs_with_every_token_active(model, with_nag(model), latent(batch), 3.0, prompts, tokens,
                                         assert_within(TOL))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("batch", [1, 2])
def test_a_sparse_step_after_a_dense_one_is_exact_with_nag(case, batch):
    build, latent, tokens, prompts = CASES[case]()
    active = random_active(batch, tokens, tokens // 3, seed=1)
    by_stream = dense_then_sparse(with_nag(build(seed=4)), latent(batch), active, 3.0, prompts)
    assert len(by_stream) == 1, "cond and uncond ran batched: what the node mixes"
    assert_exact_on_active_tokens(by_stream, tokens)


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_with_nag_end_to_end(method):
    build, latent, tokens, prompts = CASES["flux"]()
    sampler_node_end_to_end(with_nag(build(seed=5)), {"samples": latent(1)}, prompts, method, tokens)
