"""Lumina 2 and Z-Image (comfy/ldm/lumina/model.py, NextDiT).

`patchify_and_embed` embeds the image tokens per token, pads them to a multiple (Z-Image), builds
RoPE `freqs_cis` for [caption | image], runs the caption refiner (text-only attention), then the
noise refiner (image-only attention), and concatenates [caption | image] for the joint layers.
The adapter hooks layers, never that function's code:
- the first noise-refiner layer gathers the image tokens (grid tokens; padding tokens always run)
  and, like every later layer, the image part of its RoPE frequencies;
- `unpatchify` scatters the image part of the final layer's output back to the full grid;
- `patchify_and_embed`'s caption length becomes everything before the image rows that ran (other nodes' layer
  patches cut the image there), and `_forward` swaps the Z-Image Fun ControlNet's patch for a copy that runs on the
  running tokens (zimage_fun_controlnet.py); such patches run between the layers, which stay graphed.
Z-Image Omni (newer ComfyUI: reference images, each with its own caption and SigLIP features) puts the reference
images' tokens before the image's in the noise refiner's sequence, and marks the image's slice of each sequence for
the current timestep's modulation (`timestep_zero_index`; the rest takes timestep 0's). The first noise-refiner layer
moves the references' tokens after the image's (they run on every step, as the padding does), every layer gets its
RoPE rows in that order and the image's slice where it now is, and so does the final layer.
Ming-Image (newer ComfyUI: `image_model="ming_image"`, Z-Image's network without learned padding) takes latents with a
frame axis (one frame, or Ming-Image-Layer's composite and layers: tokens numbered (frame, row, column) as it embeds
them), the text encoder's `direct_context` tokens after the caption's, and reference latents as clean frames after the
image's tokens (`ref_frames`: they run on every step, as the padding does); nothing else differs for the adapter.
Each layer's sparse calls may replay from a CUDA graph of that layer (forward_graphs.py).
Attention before the first gather (the caption refiner) passes through untouched.

What differs between ComfyUI versions is read off the call, never assumed: RoPE frequencies may be
built for one image and broadcast (newer) or per image (older), and the caption length handed to
`unpatchify` may be derived from the dense image length (newer), so the adapter takes the caption
part as "everything before the image rows that ran".
"""
import math

import torch

from ..comfy_compat import lumina_takes_frames, references_follow_as_frames, takes_reference_latents
from . import zimage_fun_controlnet
from .base import FamilyAdapter, gathered_freqs, patch_method, runs_class_methods


class LuminaFamily(FamilyAdapter):
    names = ("Lumina 2", "Z-Image", "Ming-Image")
    handled_patches = (zimage_fun_controlnet.PATCH_CLASS,)

    def matches(self, diffusion_model) -> bool:
        # A subclass with a forward of its own is another model (Z-Image pixel space: an adapter of its own).
        return runs_class_methods(diffusion_model, "comfy.ldm.lumina.model", "NextDiT", ("forward", "_forward"))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size)

    def takes_frames(self, diffusion_model) -> bool:
        return lumina_takes_frames(diffusion_model)

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        multiple = getattr(diffusion_model, "pad_tokens_multiple", None)    # Z-Image pads both to a multiple

        def padded(tokens):
            return tokens + (-tokens) % multiple if multiple else tokens
        direct = values.get("direct_context")       # Ming-Image: the text encoder's own tokens after the caption's
        caption = padded(text_tokens + (int(direct.shape[-2]) if direct is not None else 0))
        if references_follow_as_frames(diffusion_model):
            image = padded(image_tokens + self._reference_frame_tokens(diffusion_model, values))
            joint = caption + image
        else:
            references, captions, siglip = self._omni_tokens(diffusion_model, values, padded)
            image = padded(image_tokens) + references
            joint = caption + captions + siglip + image
        return ([(image, diffusion_model.dim)] * len(diffusion_model.noise_refiner)
                + [(joint, diffusion_model.dim)] * len(diffusion_model.layers))

    @staticmethod
    def _reference_frame_tokens(diffusion_model, values: dict) -> int:
        """Ming-Image: every frame of every reference latent, embedded after the image's tokens."""
        return sum(_latent_tokens(r, int(diffusion_model.patch_size)) for r in values.get("reference_latents") or [])

    @staticmethod
    def _omni_tokens(diffusion_model, values: dict, padded) -> tuple:
        """Z-Image Omni: the tokens its reference images put into the image sequence (each padded), into the
        caption (each reference's own text, or a block of pad tokens), and, where the model has a SigLIP embedder,
        into the SigLIP part before the image's (each reference's image-encoder features, or a block of pad tokens,
        and a block of pad tokens for the image)."""
        references = list(values.get("reference_latents") or []) if takes_reference_latents(diffusion_model) else []
        image = sum(padded(_latent_tokens(r, int(diffusion_model.patch_size))) for r in references)
        texts = list(values.get("reference_latents_text_embeds") or [])
        multiple = getattr(diffusion_model, "pad_tokens_multiple", None) or 0
        captions = sum(padded(int(texts[i].shape[1])) if i < len(texts) else multiple for i in range(len(references)))
        captions += sum(padded(int(t.shape[1])) for t in texts[len(references):])
        siglip = 0
        if references and getattr(diffusion_model, "siglip_embedder", None) is not None:
            # what TextEncodeZImageOmni's image encoder gave (one per image; none: the model's padding blocks), else
            # unCLIP conditioning's, as the model's extra_conds reads them
            outputs = values.get("clip_vision_outputs",
                                 [u.get("clip_vision_output") for u in values.get("unclip_conditioning") or []])
            features = [o["last_hidden_state"] for o in outputs or [] if o is not None]
            siglip = sum(padded(int(features[i].shape[1])) if i < len(features) else multiple
                         for i in range(len(references))) + multiple
        return image, captions, siglip

    def patch_cache_layers(self, diffusion_model, transformer_options, image_tokens):
        return zimage_fun_controlnet.cache_layers(transformer_options, len(diffusion_model.layers),
                                                  len(diffusion_model.noise_refiner), image_tokens, diffusion_model.dim)

    def install(self, patcher, slot) -> None:
        patch_method(patcher, slot, "diffusion_model._forward", before=_patches_on_tokens)
        install_layers(patcher, slot)
        patch_method(patcher, slot, "diffusion_model.final_layer.forward", before=_final_image_slice)
        patch_method(patcher, slot, "diffusion_model.unpatchify", before=_scatter_image_part)


def _latent_tokens(latent, patch_size: int) -> int:
    """A latent's tokens as the model embeds it: each frame padded to the patch size."""
    frames = latent.shape[2] if latent.ndim == 5 else 1
    return frames * math.ceil(latent.shape[-2] / patch_size) * math.ceil(latent.shape[-1] / patch_size)


PATCHES_BETWEEN_LAYERS = ("noise_refiner", "double_block")     # NextDiT's patch lists, run after each layer


def install_layers(patcher, slot, after_last=None) -> None:
    """The noise-refiner and joint layers' patches (the gather at the first noise-refiner layer, every layer's RoPE
    rows); `after_last(call, out)` maps the last joint layer's output."""
    diffusion_model = patcher.model.diffusion_model
    if len(diffusion_model.noise_refiner) == 0:
        raise ValueError("Lumina 2 model without noise-refiner layers is not supported")
    # no method spans the sparse part alone (it starts inside patchify_and_embed): a graph per layer; other nodes'
    # patches of the refiner and the joint layers run between them (the Z-Image Fun ControlNet's: eager, and graphed
    # layers around them)
    for i in range(len(diffusion_model.noise_refiner)):
        patch_method(patcher, slot, f"diffusion_model.noise_refiner.{i}.forward",
                     before=_gather_tokens_and_freqs if i == 0 else _gather_freqs, graph=True,
                     patches_between=PATCHES_BETWEEN_LAYERS)
    last = len(diffusion_model.layers) - 1
    for i in range(last + 1):
        patch_method(patcher, slot, f"diffusion_model.layers.{i}.forward", before=_gather_freqs,
                     after=after_last if i == last else None, graph=True, patches_between=PATCHES_BETWEEN_LAYERS)
    patch_method(patcher, slot, "diffusion_model.patchify_and_embed", after=_caption_length)


def _caption_length(call, result):
    """`patchify_and_embed` says how long the caption is by the sequence's length less the image's (newer ComfyUI),
    which the gather shortens: the caption's own length (everything before the image rows that ran), so the forward
    finds the image's rows where it cuts them for other nodes' layer patches (and Z-Image pixel space's decoder)."""
    embedded, caption = result[0], result[3]
    if call.dense or call.image_rows is None:
        return result
    return (*result[:3], [embedded.shape[1] - call.image_rows] * len(caption), *result[4:])


def _patches_on_tokens(call, arguments) -> None:
    """Other nodes' layer patches that the adapter runs on the tokens that run (the Z-Image Fun ControlNet's).
    `transformer_options` is a parameter of newer ComfyUI's `_forward`, in its **kwargs in older ones."""
    holder = arguments if "transformer_options" in arguments else arguments.get("kwargs") or {}
    if holder.get("transformer_options"):
        holder["transformer_options"] = zimage_fun_controlnet.token_sparse_options(call, holder["transformer_options"])


OMNI = ("Z-Image Omni's reference images with an image padding mask are not supported by region-adaptive sampling; "
        "sample it with KSampler")


LEAD = ("lumina", "reference tokens")    # a per-forward layout key: Z-Image Omni's reference images' tokens


def _gather_tokens_and_freqs(call, arguments) -> None:
    """First noise-refiner layer: the image tokens (and their padding mask, if any) enter sparse here. Z-Image
    Omni's reference images' tokens lead this sequence (the image's are the last ones, `timestep_zero_index`'s
    slice): they are moved after the image's, where the engine keeps tokens that always run."""
    zero = arguments.get("timestep_zero_index")
    lead = call.layout[LEAD] = zero[0][0] if zero else 0
    if lead and arguments.get("x_mask") is not None:
        raise NotImplementedError(OMNI)
    arguments["x"] = call.gather(_lead_last(arguments["x"], lead))    # dense: unchanged (but for Omni's order)
    if arguments.get("x_mask") is not None and not call.dense:
        arguments["x_mask"] = call.gather(arguments["x_mask"])
    _gather_freqs(call, arguments)


def _gather_freqs(call, arguments) -> None:
    """A layer's RoPE rows for the image sequence that runs (after the caption's), and for Z-Image Omni the
    image's slice of the sequence (`timestep_zero_index`, which takes the current timestep's modulation)."""
    if call.image_rows is None:
        return
    lead = call.layout.get(LEAD, 0)
    if lead:
        _image_slice(call, arguments, lead)
    if call.dense and not lead:
        return
    freqs = arguments["freqs_cis"]
    image = call.image_rows if call.dense else call.image_sequence_length    # the whole image sequence's tokens
    prefix = freqs.shape[1] - image
    key = ("lumina freqs", freqs.data_ptr(), tuple(freqs.shape), lead)
    if key not in call.scratch:
        ordered = torch.cat([freqs[:, :prefix], _lead_last(freqs[:, prefix:], lead)], dim=1) if lead else freqs
        # the reordered tensor stays in the memo: gathered_freqs memoises by its address
        call.scratch[key] = (ordered, ordered if call.dense else gathered_freqs(call, ordered, prefix))
    arguments["freqs_cis"] = call.scratch[key][1]


def _image_slice(call, arguments, lead: int) -> None:
    """Z-Image Omni: the image's tokens in the sequence that runs ([caption ... | image | references]), as the
    first slice of `timestep_zero_index` (the others, the caption's, stay)."""
    zero = arguments.get("timestep_zero_index")
    if zero:
        start = arguments["x"].shape[1] - call.image_rows
        arguments["timestep_zero_index"] = [(start, start + call.image_rows - lead)] + list(zero[1:])


def _final_image_slice(call, arguments) -> None:
    lead = call.layout.get(LEAD, 0)
    if lead and call.image_rows is not None:
        _image_slice(call, arguments, lead)


def _lead_last(tokens: torch.Tensor, lead: int) -> torch.Tensor:
    return torch.cat([tokens[:, lead:], tokens[:, :lead]], dim=1) if lead else tokens


def _scatter_image_part(call, arguments) -> None:
    """unpatchify's input is [caption | image]: the image part goes back to the full grid, and
    unpatchify is told where it starts (the caption is whatever precedes the image rows that ran)."""
    x = arguments["x"]
    prefix = x.shape[1] - call.image_rows
    arguments["x"] = torch.cat([x[:, :prefix], call.scatter(x[:, prefix:])], dim=1)
    arguments["cap_size"] = [prefix] * x.shape[0]
