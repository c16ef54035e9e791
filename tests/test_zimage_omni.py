"""Z-Image Omni (newer ComfyUI: Z-Image's `NextDiT` with reference images, `ref_latents`) on tiny random-weight
instances of the real class (CPU, fp32): the references' tokens lead the noise refiner's sequence and the image's
slice of each sequence takes the current timestep's modulation, the rest timestep 0's (`timestep_zero_index`). The
exactness set with one and two references (one with a caption of its own), the output the policies read (the
image's tokens where the latent has them), the memory plan, both sampler nodes and both Model Patch nodes. Skipped
where the running ComfyUI's Lumina takes no references (0.3.75)."""
import pytest
import torch

from comfyui_sdit.nodes.comfy_compat import takes_reference_latents
from sdit_testkit import TINY_ZIMAGE, ksample, text_conditioning, tiny_zimage
from test_engine_exactness import dense_sparse_plain
from test_memory_plan import sample_patched
from test_video import (assert_within_scale, every_token_active, exact_on_a_third_of_the_tokens,
                        model_patch_nodes_under_ksampler, sampler_node_end_to_end)

if not takes_reference_latents(tiny_zimage(seed=0).model.diffusion_model):
    pytest.skip("this ComfyUI's Lumina takes no reference latents (Z-Image Omni)", allow_module_level=True)

HEIGHT, WIDTH = 8, 12                            # a non-square latent: 4 x 6 tokens (padded to 32 by Z-Image)
TOKENS = (HEIGHT // 2) * (WIDTH // 2)
MULTIPLE = TINY_ZIMAGE["pad_tokens_multiple"]
# Sampled runs compare to 4e-6 of the largest value: the references' tokens attend in another place in the sequence
assert_sampled_close = assert_within_scale(4e-6)


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def latent(batch=1):
    return torch.zeros(batch, 16, HEIGHT, WIDTH)


def prompts(references=1, own_caption=False):
    """Prompts of different lengths (two streams at cfg > 1) with `references` reference latents (the second of
    another size); `own_caption`: the first one's caption (`reference_latents_text_embeds`)."""
    values = {}
    if references:
        values["reference_latents"] = [randn(1, 16, HEIGHT, WIDTH, seed=1), randn(1, 16, 4, 8, seed=2)][:references]
    if own_caption:
        values["reference_latents_text_embeds"] = [randn(1, 3, 32, seed=3)]
    return dict(positive=text_conditioning(1, 7, **values), negative=text_conditioning(2, 5, **values))


PROMPTS = {"one reference": dict(), "two references, one captioned": dict(references=2, own_caption=True)}


def reference_tokens(references=1, **_):
    return [MULTIPLE, MULTIPLE + MULTIPLE][references - 1]      # each reference's tokens padded to 32


def test_the_references_change_the_image():
    model = tiny_zimage(seed=4)
    plain = ksample(model, latent(), seed=5, steps=3, **prompts(references=0))
    assert (ksample(model, latent(), seed=5, steps=3, **prompts()) - plain).abs().max().item() > 1e-3


@pytest.mark.parametrize("case", sorted(PROMPTS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_all_tokens_active_equals_unpatched(case, batch, cfg):
    every_token_active(tiny_zimage(seed=3), latent(batch), cfg, prompts(**PROMPTS[case]), TOKENS, assert_sampled_close)


@pytest.mark.parametrize("case", sorted(PROMPTS))
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_dense_then_sparse_matches_dense_on_active_tokens(case, batch, cfg):
    """A third of the tokens, in random order and different per image; the image's padding and the references'
    tokens (after the grid in the output the policies read) run on every step."""
    exact_on_a_third_of_the_tokens(tiny_zimage(seed=4), latent(batch), cfg, prompts(**PROMPTS[case]), TOKENS,
                                   extra=MULTIPLE - TOKENS + reference_tokens(**PROMPTS[case]))


def test_the_policies_see_the_image_where_the_latent_has_it():
    """One dense and one sparse forward on the model's own inputs equal the model's; the output the policies read has
    the image's tokens first, in the latent's order, though the references' lead the model's sequence."""
    model = tiny_zimage(seed=15)
    x = randn(1, 16, HEIGHT, WIDTH, seed=8)
    kwargs = dict(context=randn(1, 7, 32, seed=9), num_tokens=7, ref_latents=[randn(1, 16, HEIGHT, WIDTH, seed=10)])
    dense, sparse, plain, run = dense_sparse_plain(model, x, 0.6, 10, **kwargs)
    assert (dense - plain).abs().max().item() <= 1e-5 and (sparse - plain).abs().max().item() <= 1e-5
    (stream,) = run.streams.values()
    tokens = plain.view(1, 16, HEIGHT // 2, 2, WIDTH // 2, 2).permute(0, 2, 4, 3, 5, 1).flatten(3).flatten(1, 2)
    assert (stream.last_output[:, :TOKENS] + tokens).abs().max().item() <= 1e-5     # the model returns minus it


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_planned_cache_is_what_the_streams_hold(cfg):
    """The noise refiner over [image | references] and the joint layers over [captions | image | references], every
    part padded to 32 (a reference without a caption of its own adds a block of caption padding)."""
    run = sample_patched(tiny_zimage(seed=0), latent(2), cfg, prompts(references=2, own_caption=True))
    assert run.kv_planned_bytes == run.kv_peak_bytes > 0


SIGLIP = 24      # a SigLIP image encoder's hidden size (the real model's is 1152)


def tiny_zimage_siglip(seed: int):
    """Z-Image Omni as its checkpoint is (a SigLIP embedder and refiner: ComfyUI configures them where the weights
    have `siglip_embedder`): the joint layers run over [captions | SigLIP tokens | image | references]."""
    from sdit_testkit import build_tiny
    import comfy.supported_models
    return build_tiny(comfy.supported_models.ZImage, dict(TINY_ZIMAGE, siglip_feat_dim=SIGLIP), seed)


def siglip_prompts(references=2):
    """TextEncodeZImageOmni's conditioning with an image encoder: each reference with its SigLIP features (a grid of
    16-px cells: 3 x 5 and 2 x 2 here, padded to 32 each), beside the image's own block of SigLIP padding."""
    import comfy.clip_vision
    encoded = []
    for i, (height, width) in enumerate([(48, 80), (32, 32)][:references]):
        output = comfy.clip_vision.Output()
        output["last_hidden_state"] = randn(1, (height // 16) * (width // 16), SIGLIP, seed=20 + i)
        output["image_sizes"] = [(3, height, width)]
        encoded.append(output)
    conditioning = prompts(references=references, own_caption=True)
    for entry in (*conditioning["positive"], *conditioning["negative"]):
        entry[1]["clip_vision_outputs"] = encoded
    return conditioning


def test_siglip_features_change_the_image():
    model = tiny_zimage_siglip(seed=4)
    plain = ksample(model, latent(), seed=5, steps=3, **prompts(references=2, own_caption=True))
    assert (ksample(model, latent(), seed=5, steps=3, **siglip_prompts()) - plain).abs().max().item() > 1e-3


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_siglip_all_tokens_active_equals_unpatched(batch, cfg):
    every_token_active(tiny_zimage_siglip(seed=3), latent(batch), cfg, siglip_prompts(), TOKENS, assert_sampled_close)


@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_siglip_dense_then_sparse_matches_dense_on_active_tokens(batch, cfg):
    """The SigLIP refiner runs before the image's tokens enter (untouched); its tokens join the captions' before the
    image's in the joint layers and run on every step."""
    exact_on_a_third_of_the_tokens(tiny_zimage_siglip(seed=4), latent(batch), cfg, siglip_prompts(), TOKENS,
                                   extra=MULTIPLE - TOKENS + reference_tokens(references=2))


@pytest.mark.parametrize("cfg", [1.0, 3.0])
@pytest.mark.parametrize("references", [1, 2])
def test_planned_cache_counts_the_siglip_tokens(cfg, references):
    """The joint layers' keys also hold every reference's SigLIP tokens and the image's block of SigLIP padding (one
    reference: a block of 32; two: 32 each (15 and 4 features padded), and the image's 32)."""
    run = sample_patched(tiny_zimage_siglip(seed=0), latent(2), cfg, siglip_prompts(references))
    without = sample_patched(tiny_zimage(seed=0), latent(2), cfg, prompts(references=references, own_caption=True))
    joint_layers, width, rows, value_bytes = TINY_ZIMAGE["n_layers"], TINY_ZIMAGE["dim"], 2, 4
    streams = 2 if cfg > 1 else 1
    siglip_tokens = MULTIPLE * (references + 1)
    assert run.kv_planned_bytes == run.kv_peak_bytes == (
        without.kv_peak_bytes + streams * joint_layers * rows * siglip_tokens * width * 2 * value_bytes)


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end_leave_the_model_untouched(method):
    _, _, trace, _ = sampler_node_end_to_end(tiny_zimage(seed=7), {"samples": latent(2)}, prompts(), method, TOKENS)
    assert trace.grid == (HEIGHT // 2, WIDTH // 2)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_zimage(seed=8), {"samples": latent(2)}, prompts(), assert_sampled_close)
