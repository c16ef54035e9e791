"""SD3 / SD3.5 with ComfyUI's own ControlNets (Apply ControlNet, the hint encoded by the VAE) run on the tokens the model
runs (nodes/sparse_controlnet.py, nodes/families/sd3_controlnet.py), on a tiny random-weight SD3 / SD3.5 and tiny
instances of ComfyUI's two SD3 ControlNet classes (CPU, fp32): `comfy.cldm.mmdit.ControlNet` (SD3's diffusers-format
ControlNets, joint attention over text and image; SD3.5 Medium's with a second, image-only attention; alimama's
inpainting one, applied with its mask) and `comfy.cldm.dit_embedder.ControlNetEmbedder` under
`ControlNetSD35` (Stability's SD3.5 Large ControlNets: image-only attention, every block reading the network's input;
and the variant whose blocks are chained). Every token active == the ControlNet run whole by ComfyUI; a sparse step
after a dense one exact on the tokens that ran with the ControlNet's own forward on those tokens only (batch 2 with
CFG, other tokens per image); a chain of both kinds; the K/V cache as planned; the restated block checked against
ComfyUI's own; the ControlNet passed in untouched; both sampler nodes and both Model Patch nodes end to end."""
import importlib

import pytest
import torch

import comfy.cldm.dit_embedder
import comfy.cldm.mmdit
import comfy.controlnet
import comfy.latent_formats
import comfy.model_management
import comfy.ops

from comfyui_sdit.nodes.sparse_patch import apply_token_sparse
from comfyui_sdit.sdit_core.policy import FixedPlanPolicy
from sdit_testkit import (TINY_SD3, TINY_SD35, assert_exact_on_active_tokens, init_weights_, ksample, pooled_conditioning,
                          random_active, tiny_sd3, tiny_sd35)
from test_flux_controlnet import (controlnet_passed_in_is_untouched, dense_then_sparse,
                                  dropped_controlnet_is_freed_at_once, side_calls)
from test_video import assert_within, every_token_active, model_patch_nodes_under_ksampler, sampler_node_end_to_end

comfy_nodes = importlib.import_module("nodes")   # ComfyUI's nodes.py
controlnet_nodes = importlib.import_module("comfy_extras.nodes_controlnet")
TOL = 1e-5
HEIGHT, WIDTH = 8, 12                             # a non-square latent
TOKENS = (HEIGHT // 2) * (WIDTH // 2)
TEXT = 7                                          # pooled_conditioning's prompt tokens
HIDDEN = 64 * TINY_SD3["depth"]                   # MMDiT: 64 per block of depth, a head per block


class StandInSD3VAE:
    """SD3's VAE as the ControlNet's node uses it: 16 channels, 8 pixels a latent pixel (random, fixed by the pixels'
    shape)."""

    def encode(self, pixels):
        generator = torch.Generator().manual_seed(pixels.shape[1] * 31 + pixels.shape[2])
        return torch.randn(pixels.shape[0], 16, pixels.shape[1] // 8, pixels.shape[2] // 8, generator=generator)

    def spacial_compression_encode(self):
        return 8


def latent(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 16, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(8))


def sd3_controlnet(seed: int, blocks: int = 2, config: dict = TINY_SD3, inpainting: bool = False):
    """ComfyUI's SD3 ControlNet (an MMDiT of `blocks` joint blocks) for the tiny SD3 (or, `config` TINY_SD35, SD3.5
    Medium's: QK-norm and the image-only second attention in its first block; `inpainting`: alimama's, its hint the
    masked image's latent and the mask, 17 channels), as load_controlnet_mmdit wraps one."""
    network = comfy.cldm.mmdit.ControlNet(num_blocks=blocks, control_latent_channels=17 if inpainting else 16,
                                          operations=comfy.ops.disable_weight_init, **config)
    init_weights_(network, seed)
    with torch.no_grad():           # its position embedding is a buffer, loaded from the checkpoint
        network.pos_embed.copy_(0.1 * torch.randn(network.pos_embed.shape, generator=torch.Generator().manual_seed(seed)))
    latent_format = comfy.latent_formats.SD3()
    latent_format.shift_factor = 0
    return comfy.controlnet.ControlNet(network, compression_ratio=1, latent_format=latent_format,
                                       load_device=comfy.model_management.get_torch_device(), concat_mask=inpainting)


def sd35_controlnet(seed: int, blocks: int = 1, reads_input: bool = True):
    """ComfyUI's SD3.5 ControlNet (ControlNetEmbedder under ControlNetSD35) for the tiny SD3.5, as
    load_controlnet_sd35 wraps one: `reads_input` (the Large ones') every block reads the network's input, else the
    blocks are chained."""
    network = comfy.cldm.dit_embedder.ControlNetEmbedder(
        img_size=None, patch_size=2, in_chans=16, num_layers=blocks, main_model_double=TINY_SD3["depth"],
        double_y_emb=reads_input, attention_head_dim=64, num_attention_heads=TINY_SD3["depth"],
        adm_in_channels=TINY_SD3["adm_in_channels"], device=None, dtype=None, operations=comfy.ops.disable_weight_init)
    init_weights_(network, seed)
    return comfy.controlnet.ControlNetSD35(network, compression_ratio=1, latent_format=comfy.latent_formats.SD3(),
                                           load_device=comfy.model_management.get_torch_device())


def prompts(*controls) -> dict:
    """SD3 prompts under ControlNets applied one after the other by ComfyUI's ControlNetApplyAdvanced (a chain):
    each `(control, start_percent, end_percent)`; an inpainting ControlNet by ComfyUI's alimama node, with a mask."""
    positive, negative = pooled_conditioning(1, TEXT), pooled_conditioning(2, TEXT)
    for number, (control, start, end) in enumerate(controls):
        image = torch.rand(1, HEIGHT * 8, WIDTH * 8, 3, generator=torch.Generator().manual_seed(20 + number))
        if control.concat_mask:
            mask = torch.zeros(1, HEIGHT * 8, WIDTH * 8)
            mask[:, :, : WIDTH * 4] = 1.0
            positive, negative = controlnet_nodes.ControlNetInpaintingAliMamaApply.execute(
                positive, negative, control, StandInSD3VAE(), image, mask, 0.8, start, end)
            continue
        positive, negative = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(
            positive, negative, control, image, 0.8, start, end, vae=StandInSD3VAE())
    return dict(positive=positive, negative=negative)


KINDS = {  # a ControlNet of each kind beside the model it feeds
    "sd3": (tiny_sd3, lambda seed: sd3_controlnet(seed)),
    "sd3.5 medium": (tiny_sd35, lambda seed: sd3_controlnet(seed, config=TINY_SD35)),
    "sd3 inpainting": (tiny_sd3, lambda seed: sd3_controlnet(seed, inpainting=True)),
    "sd3.5 large": (tiny_sd35, lambda seed: sd35_controlnet(seed, blocks=2)),
    "sd3.5 chained": (tiny_sd35, lambda seed: sd35_controlnet(seed, blocks=2, reads_input=False)),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_every_token_active_equals_the_controlnet_run_whole(kind, batch, cfg):
    model, controlnet = KINDS[kind]
    run = every_token_active(model(seed=3), latent(batch), cfg, prompts((controlnet(5), 0.0, 1.0)), TOKENS,
                             assert_within(TOL))
    # the ControlNet ran through the engine: dense with the model first, then on the model's tokens
    assert [c.dense for c in side_calls(run, 0)] == [True]
    assert all(not c.dense and c.image_tokens == TOKENS for e in range(1, 4) for c in side_calls(run, e))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch,cfg", [(1, 1.0), (2, 3.0)])
def test_a_sparse_step_after_a_dense_one_is_exact_and_the_controlnet_runs_those_tokens(kind, batch, cfg):
    """A third of the tokens, in random order and other ones per image."""
    model, controlnet = KINDS[kind]
    active = random_active(batch, TOKENS, TOKENS // 3, seed=1)
    by_stream, run = dense_then_sparse(model(seed=4), latent(batch), active, cfg, prompts((controlnet(6), 0.0, 1.0)))
    assert_exact_on_active_tokens(by_stream, TOKENS)
    rows = 2 * batch if cfg > 1 else batch          # cond and uncond batched
    assert [(c.dense, c.rows, c.image_tokens) for c in side_calls(run, 1)] == [(False, rows, TOKENS // 3)]


def test_a_chain_of_both_kinds_whose_second_starts_later():
    """An SD3.5 Large ControlNet and, from 40%, a chained one: the second's first forward runs dense while the first's
    runs sparse."""
    model = tiny_sd35(seed=5)
    chain = prompts((sd35_controlnet(7), 0.0, 1.0), (sd35_controlnet(8, blocks=1, reads_input=False), 0.4, 1.0))
    run = every_token_active(model, latent(2), 3.0, chain, TOKENS, assert_within(TOL))
    assert [[c.dense for c in side_calls(run, e)] for e in range(4)] == [[True], [False], [False, True], [False, False]]
    by_stream, run = dense_then_sparse(model, latent(2), random_active(2, TOKENS, TOKENS // 3, seed=2), 3.0, chain)
    assert_exact_on_active_tokens(by_stream, TOKENS)
    assert [c.dense for c in side_calls(run, 1)] == [False, False]


@pytest.mark.parametrize("kind", KINDS)
def test_the_cache_is_as_planned(kind):
    """The ControlNet's layers beside the model's: SD3's joint blocks over text + image (SD3.5 Medium's first one with
    a second attention over the image), SD3.5's ControlNetEmbedder's over the image."""
    model, controlnet = KINDS[kind]
    policy = FixedPlanPolicy([None] + [random_active(2, TOKENS, TOKENS // 3, seed=3)] * 3)
    patched, slot = apply_token_sparse(model(seed=7), lambda run: policy, node="test")
    ksample(patched, latent(2), seed=5, steps=4, cfg=3.0, **prompts((controlnet(10), 0.0, 1.0)))
    run = slot.last_run
    rows = 4
    main = (TEXT + TOKENS) * 2 + (TOKENS if model is tiny_sd35 else 0)    # SD3.5's first block: a second attention
    side = {"sd3": 2 * (TEXT + TOKENS), "sd3 inpainting": 2 * (TEXT + TOKENS),
            "sd3.5 medium": 2 * (TEXT + TOKENS) + TOKENS}.get(kind, 2 * TOKENS)
    assert run.kv_planned_bytes == run.kv_peak_bytes == rows * (main + side) * HIDDEN * 2 * 4


def test_the_restated_block_is_checked_against_comfyuis_own(monkeypatch):
    """A ComfyUI whose SD3.5 ControlNet block computes something else stops at the first dense forward with a clear
    error instead of sampling a wrong image."""
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
    post_attention = mmdit.DismantledBlock.post_attention
    original_forward = mmdit.DismantledBlock.forward

    def forward(self, x, c):        # ComfyUI's block, but its output twice as large
        return 2 * original_forward(self, x, c)
    monkeypatch.setattr(mmdit.DismantledBlock, "forward", forward)
    assert mmdit.DismantledBlock.post_attention is post_attention
    policy = FixedPlanPolicy([None] + [random_active(1, TOKENS, TOKENS // 3, seed=3)] * 3)
    patched, _ = apply_token_sparse(tiny_sd35(seed=8), lambda run: policy, node="test")
    with pytest.raises(NotImplementedError, match="SD3.5 ControlNet: this ComfyUI's DismantledBlock.forward"):
        ksample(patched, latent(1), seed=5, steps=4, cfg=1.0, **prompts((sd35_controlnet(11), 0.0, 1.0)))


@pytest.mark.parametrize("kind", KINDS)
def test_the_controlnet_passed_in_is_untouched(kind):
    model, controlnet = KINDS[kind]
    controlnet_passed_in_is_untouched(model(seed=9), latent(2), prompts((controlnet(12), 0.0, 1.0)), TOKENS)


@pytest.mark.parametrize("method", ["RAS", "SDiT"])
def test_sampler_nodes_end_to_end(method):
    sampler_node_end_to_end(tiny_sd35(seed=10), {"samples": latent(2)}, prompts((sd35_controlnet(13), 0.0, 1.0)),
                            method, TOKENS)


def test_model_patch_nodes_under_ksampler():
    model_patch_nodes_under_ksampler(tiny_sd3(seed=11), {"samples": latent(1)},
                                     prompts((sd3_controlnet(14), 0.0, 1.0)), assert_within(TOL))


@pytest.mark.parametrize("kind", KINDS)
def test_a_dropped_controlnet_is_freed_at_once(kind):
    model, controlnet = KINDS[kind]
    dropped_controlnet_is_freed_at_once(model(seed=15), latent(2), lambda: prompts((controlnet(16), 0.0, 1.0)), TOKENS)
