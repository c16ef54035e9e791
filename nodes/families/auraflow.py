"""AuraFlow (comfy/ldm/aura/mmdit.py, MMDiT; Pony Diffusion V7 is an AuraFlow model).

The forward patchifies the latent into tokens over (rows, cols), embeds them per token and adds a learned position
embedding per token, puts register tokens before the text, runs double blocks (joint attention over [registers + text
| image], each stream with its own weights) and single blocks over their concatenation, each modulated per image, and
a per-token final layer. The adapter hooks modules, never the forward's code:
- the first block that runs gathers the image tokens (after their position embedding): a double block its image
  argument, a single block (the double ones all replaced by another node) the image part of its sequence;
- the final linear layer's output is scattered back to every token.
"""
from .base import FamilyAdapter, gather_image_after, patch_method, patch_module_forward, runs_class_methods


class AuraFlowFamily(FamilyAdapter):
    names = ("AuraFlow",)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.aura.mmdit", "MMDiT", ("forward", "_forward"))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size)

    def prompt_tokens(self, base_model, tokens, values):
        return tokens + int(base_model.diffusion_model.register_tokens.shape[1])   # registers before the text

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        layers = len(diffusion_model.double_layers) + len(diffusion_model.single_layers)
        return [(text_tokens + image_tokens, diffusion_model.positional_encoding.shape[-1])] * layers

    def install(self, patcher, slot) -> None:
        dm = patcher.model.diffusion_model
        for i in range(len(dm.double_layers)):
            patch_method(patcher, slot, f"diffusion_model.double_layers.{i}.forward", before=_gather_image, graph=True)
        for i in range(len(dm.single_layers)):
            patch_method(patcher, slot, f"diffusion_model.single_layers.{i}.forward", before=_gather_joint, graph=True)
        patch_module_forward(patcher, slot, "diffusion_model.final_linear", after=lambda call, out: call.scatter(out))


def _gather_image(call, arguments) -> None:
    if call.image_rows is None:                     # the first block that runs
        arguments["x"] = call.gather(arguments["x"])    # dense: unchanged, but counted


def _gather_joint(call, arguments) -> None:
    """[registers + text | image]: the image part gathered where no double block gathered it."""
    if call.image_rows is None:
        arguments["cx"] = gather_image_after(call, arguments["cx"], arguments["cx"].shape[1] - call.grid_tokens)
