"""Builds the demo model from `models/sdit_demo_flux.safetensors` (or a seeded placeholder)."""
import json
import logging
import pathlib
from typing import Optional, Tuple

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.supported_models
import comfy.utils

from ..comfy_compat import flux_unet_config, load_state_dict_strictly
from .codec import PatchCodec
from .vocabulary import PROMPT_TOKENS, WORDS, parse_prompt

WEIGHTS = pathlib.Path(__file__).resolve().parents[2] / "models" / "sdit_demo_flux.safetensors"

# ComfyUI's Flux class at a tiny size; patch 2 over 16 latent channels, guidance-free (cfg works).
DEMO_FLUX_CONFIG = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=64, context_in_dim=64,
                        hidden_size=256, mlp_ratio=4.0, num_heads=4, depth=2, depth_single_blocks=4,
                        axes_dim=[8, 28, 28], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=False)


DEFAULT_IMAGE_SIZE = 256                     # what the CPU-trained weights were trained at


class DemoModel:
    def __init__(self, patcher, codec: PatchCodec, word_embedding: torch.Tensor, trained: bool,
                 image_size: int = DEFAULT_IMAGE_SIZE):
        self.patcher = patcher
        self.codec = codec
        self.word_embedding = word_embedding       # (len(WORDS), context_dim)
        self.trained = trained
        self.image_size = image_size               # pixels; the latent is image_size / 8 on each side

    def empty_latent(self, batch: int = 1) -> torch.Tensor:
        """Zeros of the size the model was trained at (ComfyUI samplers add the noise)."""
        side = self.image_size // 8
        return torch.zeros(batch, 16, side, side)

    def conditioning(self, prompt: str):
        """ComfyUI CONDITIONING for a class prompt: the word vectors as "text" tokens, their mean pooled."""
        colour, shape = parse_prompt(prompt)
        tokens = self.word_embedding[[colour, shape]][None]          # (1, PROMPT_TOKENS, dim)
        return [[tokens.clone(), {"pooled_output": tokens.mean(dim=1)}]]


def build_flux(config: dict):
    return comfy.supported_models.FluxSchnell(flux_unet_config(config)).get_model({})


def placeholder_state(config: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    model = build_flux(config)
    sd = {}
    norms = {name for name, module in model.diffusion_model.named_modules() if "RMSNorm" in type(module).__name__}
    for name, p in model.diffusion_model.named_parameters():
        if p.ndim >= 2:
            sd["diffusion_model." + name] = torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5
        elif name.endswith("scale") or name.rsplit(".", 1)[0] in norms:
            sd["diffusion_model." + name] = torch.ones(p.shape)
        else:
            sd["diffusion_model." + name] = torch.zeros(p.shape)
    sd.update(PatchCodec.placeholder(seed).state_dict())
    sd["text.word_embedding"] = torch.randn(len(WORDS), config["context_in_dim"], generator=g)
    return sd


_CACHE = {}


def load_demo_model(path: Optional[pathlib.Path] = None) -> DemoModel:
    path = pathlib.Path(path) if path is not None else WEIGHTS
    key = str(path)
    if key in _CACHE:
        return _CACHE[key]
    if path.is_file():
        sd, metadata = comfy.utils.load_torch_file(str(path), safe_load=True, return_metadata=True)
        config = json.loads((metadata or {}).get("config", "null")) or DEMO_FLUX_CONFIG
        trained, image_size = True, int((metadata or {}).get("image_size", DEFAULT_IMAGE_SIZE))
    else:
        logging.warning("SDiT demo model: %s not found, using untrained placeholder weights", path)
        config, sd, trained = DEMO_FLUX_CONFIG, placeholder_state(DEMO_FLUX_CONFIG), False
        image_size = DEFAULT_IMAGE_SIZE
    model = build_flux(config)
    diffusion_sd = {k[len("diffusion_model."):]: v for k, v in sd.items() if k.startswith("diffusion_model.")}
    load_state_dict_strictly(model.diffusion_model, diffusion_sd)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                               offload_device=comfy.model_management.unet_offload_device())
    demo = DemoModel(patcher, PatchCodec.from_state_dict(sd), sd["text.word_embedding"].float(), trained, image_size)
    _CACHE[key] = demo
    return demo


def prompt_tokens() -> Tuple[int, int]:
    return PROMPT_TOKENS, DEMO_FLUX_CONFIG["context_in_dim"]
