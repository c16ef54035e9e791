"""Tiny random-weight instances of ComfyUI's real model classes, and sampling helpers."""
import math

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.sample
import comfy.samplers
import comfy.supported_models

TINY_FLUX = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32,
                 hidden_size=64, mlp_ratio=2.0, num_heads=4, depth=2, depth_single_blocks=2,
                 axes_dim=[4, 6, 6], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)


def init_weights_(module: torch.nn.Module, seed: int) -> None:
    """ComfyUI allocates weights uninitialised; give every parameter and buffer a seeded value."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        with torch.no_grad():
            if param.ndim >= 2:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))
            elif name.endswith("scale") or name.endswith("weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))


def make_patcher(model) -> comfy.model_patcher.ModelPatcher:
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device,
                                            offload_device=comfy.model_management.unet_offload_device())


def tiny_flux(seed: int = 0, **overrides) -> comfy.model_patcher.ModelPatcher:
    config = dict(TINY_FLUX, **overrides)
    model = comfy.supported_models.Flux(config).get_model({})
    init_weights_(model.diffusion_model, seed)
    return make_patcher(model)


def flux_conditioning(seed: int, text_tokens: int = 7, context_dim: int = 32, pooled_dim: int = 32, guidance: float = 3.5):
    generator = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, text_tokens, context_dim, generator=generator)
    pooled = torch.randn(1, pooled_dim, generator=generator)
    return [[cond, {"pooled_output": pooled, "guidance": guidance}]]


def noise_like(latent: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))


def ksample(model, latent, seed=0, steps=6, cfg=1.0, sampler="euler", scheduler="simple",
            positive=None, negative=None, denoise=1.0):
    positive = positive if positive is not None else flux_conditioning(1)
    negative = negative if negative is not None else flux_conditioning(2)
    return comfy.sample.sample(model, noise_like(latent, seed), steps, cfg, sampler, scheduler, positive, negative,
                               latent, denoise=denoise, seed=seed, disable_pbar=True)


def sample_with(model, latent, sampler_function, sigmas, cfg=1.0, positive=None, negative=None, seed=0):
    """Runs ComfyUI's sampling with a hand-written sampler function (model evaluations under control)."""
    positive = positive if positive is not None else flux_conditioning(1)
    negative = negative if negative is not None else flux_conditioning(2)
    sampler = comfy.samplers.KSAMPLER(sampler_function)
    return comfy.sample.sample_custom(model, noise_like(latent, seed), cfg, sampler, sigmas, positive, negative,
                                      latent, disable_pbar=True, seed=seed)


TINY_SD15_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
                  "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 32,
                  "num_res_blocks": [1], "transformer_depth": [1], "channel_mult": [1], "transformer_depth_middle": 1,
                  "use_linear_in_transformer": False, "context_dim": 32, "num_heads": 1, "num_head_channels": -1,
                  "transformer_depth_output": [1, 1]}


def tiny_sd15(seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """A real SD1.5-class UNet (not a transformer the pack can sparsify)."""
    model = comfy.supported_models.SD15(dict(TINY_SD15_UNET)).get_model({})
    init_weights_(model.diffusion_model, seed)
    return make_patcher(model)


TINY_CHROMA = dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=32, hidden_size=64,
                   mlp_ratio=2.0, num_heads=4, depth=2, depth_single_blocks=2, axes_dim=[4, 6, 6], theta=10000,
                   patch_size=2, qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=64, n_layers=2)


def tiny_chroma(seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    model = comfy.supported_models.Chroma(dict(TINY_CHROMA)).get_model({})
    init_weights_(model.diffusion_model, seed)
    return make_patcher(model)
