"""ComfyUI's Qwen-Image Fun ControlNets (comfy/ldm/qwen_image/controlnet.py `QwenImageFunControlNetModel` under
`QwenFunControlNet`: Qwen-Image 2512's Fun ControlNet Union; newer ComfyUI), run token-sparse with a Qwen-Image model
(sparse_controlnet.py).

The network runs the model's own embedders (handed it as `base_model`): the latent's tokens through `img_in` and
[text ids | image ids] through `pe_embedder`, which the model's adapter gathers (qwen_image.py: the text length noted
here, as the network's forward opens); the hint's tokens (embedded one by one by `control_img_in`) are gathered with
them. Its few control blocks are Qwen-Image blocks, attention joint over [text | image]; each block's output becomes a
residual through a per-token linear layer, so the residuals come out in the rows that ran. The network calls its blocks
with transformer_options of its own (none from ComfyUI), so they are handed the pack's attention override.
"""
from .base import ControlNetAdapter, gather_hint, hand_attention_override, patch_module_forward
from .qwen_image import QwenImageFamily


class QwenImageFunControlNet(ControlNetAdapter):
    name = "Qwen-Image Fun ControlNet"

    def matches(self, control_model) -> bool:
        try:
            import comfy.ldm.qwen_image.controlnet as controlnet
        except ImportError:         # a ComfyUI without Qwen-Image ControlNets
            return False
        return isinstance(control_model, getattr(controlnet, "QwenImageFunControlNetModel", ()))

    def feeds(self, family) -> bool:
        return isinstance(family, QwenImageFamily)

    def block_paths(self, control_model) -> list:
        return [f"control_blocks.{i}" for i in range(len(control_model.control_blocks))]

    def kv_cache_layers(self, control_model, image_tokens: int, text_tokens: int, control) -> list:
        width = control_model.control_img_in.weight.shape[0]
        return [(text_tokens + image_tokens, width)] * len(control_model.control_blocks)

    def opened(self, call, arguments: dict) -> None:
        call.text_len = arguments["context"].shape[1]       # where the image's ids start in pe_embedder's input

    def install(self, patcher, slot) -> None:
        patch_module_forward(patcher, slot, "control_img_in", before=gather_hint)
        for path in self.block_paths(patcher.model):
            hand_attention_override(patcher, slot, path, graph=True)     # each block may replay from a CUDA graph
