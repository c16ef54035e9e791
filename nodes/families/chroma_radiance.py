"""Chroma Radiance (comfy/ldm/chroma_radiance/model.py, ChromaRadiance): Chroma in pixel space.

The "latent" is the RGB image. `forward_orig` (Chroma's) patchifies it by a strided convolution (`img_in`, a method of
its own here) into one token per 16x16 pixel patch, runs Chroma's blocks over [text | image] and hands back each
token's hidden state; `forward_nerf` then decodes every patch's pixels from its hidden state and its own noisy pixels
(a small MLP whose weights come from the hidden state) and a final layer maps the reassembled image to the output: one
linear layer per pixel, or (newer checkpoints) a 3x3 convolution over the whole image. The adapter hooks methods,
never their code:
- `forward_orig`: the image tokens' RoPE ids and ControlNet residuals are gathered; `img_in`'s output: the tokens;
- `forward_nerf` gets every patch's hidden state: the running ones computed, the others the last computed in this
  stream (so the convolution's border pixels see their neighbours' latest features); its output image is cut into
  patches, the running ones kept and the others filled by the policy.
With the linear head every pixel is its patch's own, so the running patches are exact; the 3x3 head reads one pixel
into each neighbour, so a running patch next to a skipped one differs from a dense forward on its border pixels.
"""
import torch

from .base import (FamilyAdapter, every_token_carried, gather_control, patch_method, runs_class_methods,
                   scatter_pixel_patches)

_MODULE = "comfy.ldm.chroma_radiance.model"
_PATCH = ("chroma radiance", "patch")          # a per-forward layout key: the patch size forward_nerf decodes with
_HIDDEN = ("chroma radiance", "hidden")        # the stream's every-patch hidden states, as last computed


class ChromaRadianceFamily(FamilyAdapter):
    names = ("Chroma Radiance",)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, _MODULE, "ChromaRadiance",
                                  ("forward", "_forward", "forward_orig", "forward_nerf", "img_in"))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size)

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        blocks = len(diffusion_model.double_blocks) + len(diffusion_model.single_blocks)
        return [(text_tokens + image_tokens, diffusion_model.hidden_size)] * blocks

    def install(self, patcher, slot) -> None:
        patch_method(patcher, slot, "diffusion_model.forward_orig", before=_gather_ids)
        patch_method(patcher, slot, "diffusion_model.img_in", after=lambda call, tokens: call.gather(tokens))
        patch_method(patcher, slot, "diffusion_model.forward_nerf", before=_every_patch_hidden, after=_scatter_patches)


def _gather_ids(call, arguments) -> None:
    arguments["img_ids"] = call.gather(arguments["img_ids"])       # RoPE positions follow their tokens
    arguments["control"] = gather_control(call, arguments.get("control"))


def _every_patch_hidden(call, arguments) -> None:
    call.layout[_PATCH] = int(arguments["params"].patch_size)
    arguments["img_out"] = every_token_carried(call, arguments["img_out"], _HIDDEN)


def _scatter_patches(call, image: torch.Tensor) -> torch.Tensor:
    return scatter_pixel_patches(call, image, call.layout[_PATCH])
