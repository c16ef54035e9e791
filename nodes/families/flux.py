"""Flux, Flux 2, Flux Kontext and Chroma (comfy/ldm/flux, comfy/ldm/chroma).

`forward_orig(img, img_ids, txt, txt_ids, ...)` sits between patchify and unpatchify. Its first
layer (`img_in`) is per-token, so gathering the active rows of `img` and `img_ids` (RoPE positions)
before it is exact; its output comes back per token and is scattered to full size after it.
Attention is joint over [txt | img] everywhere, with txt first.
"""
import inspect

from .base import FamilyAdapter, gather_control


class FluxFamily(FamilyAdapter):
    names = ("Flux", "Flux 2", "Flux Kontext", "Chroma")

    def matches(self, diffusion_model) -> bool:
        import comfy.ldm.chroma.model
        import comfy.ldm.chroma_radiance.model
        import comfy.ldm.flux.model
        # Chroma Radiance works in pixel space with a NeRF head after the blocks: not covered
        return (isinstance(diffusion_model, (comfy.ldm.flux.model.Flux, comfy.ldm.chroma.model.Chroma))
                and not isinstance(diffusion_model, comfy.ldm.chroma_radiance.model.ChromaRadiance))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size)

    def install(self, patcher, slot) -> None:
        diffusion_model = patcher.model.diffusion_model
        original = patcher.get_model_object("diffusion_model.forward_orig")  # may be another node's patch
        # Bind arguments by the model's own signature, whatever wraps it.
        signature = inspect.signature(type(diffusion_model).forward_orig.__get__(diffusion_model))

        def sparse_forward_orig(*args, **kwargs):
            call = slot.current_call()
            if call is None:
                return original(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            arguments = bound.arguments
            arguments["img"] = call.gather(arguments["img"])          # dense: unchanged, but counted
            arguments["img_ids"] = call.gather(arguments["img_ids"])
            if arguments.get("control") is not None and not call.dense:
                arguments["control"] = gather_control(call, arguments["control"])
            return call.scatter(original(*bound.args, **bound.kwargs))

        patcher.add_object_patch("diffusion_model.forward_orig", sparse_forward_orig)
