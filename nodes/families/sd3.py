"""SD3 / SD3.5 (comfy/ldm/modules/diffusionmodules/mmdit.py, MMDiT).

`forward_core_with_concat(x, c_mod, context, control, transformer_options)` receives the image
tokens after patch embedding and the cropped absolute position embedding (so gathering them there
carries each token's position along) and returns the final layer's per-token output, before
unpatchify. Attention is joint over [registers | context | x] (QK-norm applied before the call, so
the cache holds normed keys); SD3.5's second, image-only attention (`x_block_self_attn`) has no
prefix and gets its own cache layer.
"""
import inspect

from .base import FamilyAdapter, gather_control


class SD3Family(FamilyAdapter):
    names = ("SD3", "SD3.5")

    def matches(self, diffusion_model) -> bool:
        import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
        return isinstance(diffusion_model, mmdit.MMDiT)

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size)

    def install(self, patcher, slot) -> None:
        diffusion_model = patcher.model.diffusion_model
        original = patcher.get_model_object("diffusion_model.forward_core_with_concat")
        signature = inspect.signature(type(diffusion_model).forward_core_with_concat.__get__(diffusion_model))

        def sparse_forward_core(*args, **kwargs):
            call = slot.current_call()
            if call is None:
                return original(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            arguments = bound.arguments
            arguments["x"] = call.gather(arguments["x"])
            arguments["control"] = gather_control(call, arguments.get("control"))
            return call.scatter(original(*bound.args, **bound.kwargs))

        patcher.add_object_patch("diffusion_model.forward_core_with_concat", sparse_forward_core)
