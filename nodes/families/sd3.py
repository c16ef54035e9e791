"""SD3 / SD3.5 (comfy/ldm/modules/diffusionmodules/mmdit.py, MMDiT).

`forward_core_with_concat(x, c_mod, context, control, transformer_options)` receives the image
tokens after patch embedding and the cropped absolute position embedding (so gathering them there
carries each token's position along) and returns the final layer's per-token output, before
unpatchify. Attention is joint over [registers | context | x] (QK-norm applied before the call, so
the cache holds normed keys); SD3.5's second, image-only attention (`x_block_self_attn`) has no
prefix and gets its own cache layer.
"""
from .base import FamilyAdapter, gather_control, patch_method, runs_class_methods


class SD3Family(FamilyAdapter):
    names = ("SD3", "SD3.5")

    def matches(self, diffusion_model) -> bool:
        # a subclass with a core of its own is another model (ComfyUI's own wrapper changes `forward` alone)
        return runs_class_methods(diffusion_model, "comfy.ldm.modules.diffusionmodules.mmdit", "MMDiT",
                                  ("forward_core_with_concat",))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size)

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        joint = diffusion_model.register_length + text_tokens + image_tokens
        layers = []
        for block in diffusion_model.joint_blocks:
            layers.append((joint, diffusion_model.hidden_size))
            if block.x_block.x_block_self_attn:         # the image-only second attention
                layers.append((image_tokens, diffusion_model.hidden_size))
        return layers

    def install(self, patcher, slot) -> None:
        def gather_image(call, arguments):
            arguments["x"] = call.gather(arguments["x"])
            arguments["control"] = gather_control(call, arguments.get("control"))

        patch_method(patcher, slot, "diffusion_model.forward_core_with_concat", before=gather_image,
                     after=lambda call, out: call.scatter(out), graph=True)
