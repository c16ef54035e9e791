"""OmniGen2 (comfy/ldm/omnigen/omnigen2.py, OmniGen2Transformer2DModel): text-to-image and editing with reference
images.

`forward` embeds the caption and refines it alone (`context_refiner`), embeds the image's patches (`x_embedder`) and
refines them alone (`noise_refiner`: image-only attention), embeds and refines each reference image alone
(`ref_image_refiner`), then runs the joint layers over [caption | references | image] with RoPE for that sequence
and a per-token output layer (`norm_out`), whose image rows it cuts by their count. The adapter hooks layers, never
that function's code:
- the first noise-refiner layer gathers the image tokens and, like every later one, their rows of its RoPE;
- the reference refiner's attention (references alone, after the image was gathered) passes the K/V cache by; the
  references' tokens then run on every step, beside the caption, before the image's;
- every joint layer gets the running tokens' rows of its RoPE (after the caption's and the references');
- `norm_out`'s image part is scattered back to every token (the model then takes the last rows: the image's).
Keys and values reach attention as the model makes them: with fewer heads than the queries where this ComfyUI
hands grouped-query attention its K/V as they are (`comfy_compat.attention_takes_grouped_kv`).
"""
import math

from ..comfy_compat import attention_takes_grouped_kv
from .base import (FamilyAdapter, gathered_freqs, passthrough_method, patch_method, reference_latents,
                   runs_class_methods, scatter_image_after_prefix)


class OmniGen2Family(FamilyAdapter):
    names = ("OmniGen2",)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.omnigen.omnigen2", "OmniGen2Transformer2DModel",
                                  ("forward", "img_patch_embed_and_refine", "flat_and_pad_to_seq"))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size)

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        channels = kv_channels(diffusion_model.layers[0].attn)
        references = reference_tokens(diffusion_model, values)
        return ([(image_tokens, channels)] * len(diffusion_model.noise_refiner)
                + [(text_tokens + references + image_tokens, channels)] * len(diffusion_model.layers))

    def joint_layers(self, diffusion_model) -> str:
        """The joint layers' attribute (OmniGen2's layers over [caption | references | image])."""
        return "layers"

    def install(self, patcher, slot) -> None:
        dm = patcher.model.diffusion_model
        if len(dm.noise_refiner) == 0:
            raise ValueError(f"{self.names[0]} model without noise-refiner layers is not supported")
        for i in range(len(dm.noise_refiner)):
            patch_method(patcher, slot, f"diffusion_model.noise_refiner.{i}.forward",
                         before=_gather_tokens_and_freqs if i == 0 else _gather_freqs, graph=True)
        for i in range(len(dm.ref_image_refiner)):
            passthrough_method(patcher, slot, f"diffusion_model.ref_image_refiner.{i}.forward")
        joint = self.joint_layers(dm)
        for i in range(len(getattr(dm, joint))):
            patch_method(patcher, slot, f"diffusion_model.{joint}.{i}.forward", before=_gather_freqs, graph=True)
        patch_method(patcher, slot, "diffusion_model.norm_out.forward",
                     after=lambda call, out: scatter_image_after_prefix(call, out))


def reference_tokens(diffusion_model, values: dict) -> int:
    """Tokens a prompt's reference latents put into the sequence (each padded to the patch)."""
    p = diffusion_model.patch_size
    return sum(math.ceil(r.shape[-2] / p) * math.ceil(r.shape[-1] / p) for r in reference_latents(values))


def kv_channels(attention) -> int:
    """Channels of the keys (and values) an OmniGen2 attention module hands ComfyUI's attention: its K/V heads' where
    this ComfyUI passes grouped K/V, its query heads' where it repeats them first."""
    heads = attention.kv_heads if attention_takes_grouped_kv(type(attention).forward) else attention.heads
    return heads * attention.dim_head


def _gather_tokens_and_freqs(call, arguments) -> None:
    """The first noise-refiner layer: the image's tokens enter sparse here (dense: unchanged, but counted)."""
    arguments["hidden_states"] = call.gather(arguments["hidden_states"])
    _gather_freqs(call, arguments)


def _gather_freqs(call, arguments) -> None:
    """The running tokens' rows of a layer's RoPE, after those of what precedes the image (caption, references)."""
    freqs = arguments["image_rotary_emb"]
    if not call.dense and freqs.shape[1] != arguments["hidden_states"].shape[1]:
        before = arguments["hidden_states"].shape[1] - call.image_rows
        arguments["image_rotary_emb"] = gathered_freqs(call, freqs, before)
