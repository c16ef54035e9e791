"""Flux, Flux 2, Flux Kontext and Chroma (comfy/ldm/flux, comfy/ldm/chroma).

`forward_orig(img, img_ids, txt, txt_ids, ...)` sits between patchify and unpatchify. Its first
layer (`img_in`) is per-token, so gathering the active rows of `img` and `img_ids` (RoPE positions)
before it is exact; its output comes back per token and is scattered to full size after it.
Attention is joint over [txt | img] everywhere, with txt first. Reference tokens (Kontext, Flux 2 edit)
follow the grid and always run; where they are marked by position (`timestep_zero_index`, newer ComfyUI)
the positions are mapped to the gathered sequence. ComfyUI's Flux KV Cache takes the references out after
`img_in` (a `post_input` patch) once it keeps their keys: the gather here comes before, so the engine sees the
whole layout in the keys (ForwardCall.dropped_extras).
"""
from ..neighbours import FLUX_KV_CACHE_PATCH
from .base import FamilyAdapter, gather_control, patch_method, reference_latents, runs_class_methods


FLUX2_PROMPT = 512      # ComfyUI's Flux 2 pads shorter prompts to this many tokens (model_base.Flux2.extra_conds)


class FluxFamily(FamilyAdapter):
    names = ("Flux", "Flux 2", "Flux Kontext", "Chroma")
    handled_patches = (FLUX_KV_CACHE_PATCH,)    # gathered before the node takes the references out: engine.py

    def matches(self, diffusion_model) -> bool:
        import comfy.ldm.chroma_radiance.model
        # A subclass with a forward of its own is another model (a custom pack's); Chroma Radiance works in pixel
        # space with a NeRF head after the blocks: an adapter of its own
        return (any(runs_class_methods(diffusion_model, module, name, ("forward", "_forward", "forward_orig"))
                    for module, name in (("comfy.ldm.flux.model", "Flux"), ("comfy.ldm.chroma.model", "Chroma")))
                and not isinstance(diffusion_model, comfy.ldm.chroma_radiance.model.ChromaRadiance))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size)

    def prompt_tokens(self, base_model, tokens, values):
        import comfy.model_base
        return max(tokens, FLUX2_PROMPT) if isinstance(base_model, comfy.model_base.Flux2) else tokens

    def sequence_references(self, diffusion_model, values):
        return reference_latents(values)

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        blocks = len(diffusion_model.double_blocks) + len(diffusion_model.single_blocks)
        return [(text_tokens + image_tokens, diffusion_model.hidden_size)] * blocks

    def install(self, patcher, slot) -> None:
        def gather_image(call, arguments):
            arguments["img"] = call.gather(arguments["img"])          # dense: unchanged, but counted
            arguments["img_ids"] = call.gather(arguments["img_ids"])   # RoPE positions follow their tokens
            arguments["control"] = gather_control(call, arguments.get("control"))
            # newer ComfyUI marks reference tokens that take timestep 0 by [start, end) in the image sequence
            if arguments.get("timestep_zero_index") is not None:
                arguments["timestep_zero_index"] = [[call.position_after_gather(start), call.position_after_gather(end)]
                                                    for start, end in arguments["timestep_zero_index"]]

        patch_method(patcher, slot, "diffusion_model.forward_orig", before=gather_image,
                     after=lambda call, out: call.scatter(out), graph=True)
