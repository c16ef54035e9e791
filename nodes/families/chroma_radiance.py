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

from ...sdit_core.tokens import scatter_rows_
from .base import FamilyAdapter, gather_control, patch_method, runs_class_methods

_MODULE = "comfy.ldm.chroma_radiance.model"
_PATCH = ("chroma radiance", "patch")          # a per-forward memo key: the patch size forward_nerf decodes with
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
    """(rows, running patches, hidden) -> (rows, every patch, hidden): the running ones now, the others as last
    computed in this stream (`Stream.carried`: it lives for the sampling run)."""
    call.scratch[_PATCH] = int(arguments["params"].patch_size)
    hidden = arguments["img_out"]
    if call.dense:
        call.stream.carried[_HIDDEN] = hidden.detach().clone()
        return
    last = call.stream.carried.get(_HIDDEN)
    if last is None or last.shape[0] != hidden.shape[0] or (last.device, last.dtype) != (hidden.device, hidden.dtype):
        last = call.stream.carried[_HIDDEN] = hidden.new_zeros(hidden.shape[0], call.grid_tokens, hidden.shape[-1])
    # written in place: the stream's copy is this forward's input and the next one's starting point
    arguments["img_out"] = scatter_rows_(last, call.grid_index.to(hidden.device), hidden.detach())


def _scatter_patches(call, image: torch.Tensor) -> torch.Tensor:
    """(rows, channels, height, width) decoded from every patch -> the running patches' pixels kept, the others filled
    by the policy (as per-patch outputs of channels * patch * patch values)."""
    rows, channels, height, width = image.shape
    patch = call.scratch[_PATCH]
    patches = torch.nn.functional.unfold(image, kernel_size=patch, stride=patch).transpose(1, 2)
    if not call.dense:
        patches = patches.gather(1, call.grid_index.to(image.device)[..., None].expand(-1, -1, patches.shape[-1]))
    full = call.scatter(patches)
    return torch.nn.functional.fold(full.transpose(1, 2), output_size=(height, width), kernel_size=patch, stride=patch)
