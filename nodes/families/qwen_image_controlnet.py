"""ComfyUI's InstantX Qwen-Image ControlNets (comfy/ldm/qwen_image/controlnet.py `QwenImageControlNetModel`: Union and
inpainting), run token-sparse with a Qwen-Image model (sparse_controlnet.py).

The network is a Qwen-Image of a few blocks. Its forward patchifies the latent and the hint's latent alike, embeds
each token by itself (`img_in`, `controlnet_x_embedder`) and builds RoPE from [text ids | image ids] with
`pe_embedder`, as the model does (qwen_image.py): the running rows of the tokens, the hint's tokens and the image ids
are gathered at those modules. Each block's image output becomes a residual through a per-token linear layer, so the
residuals come out in the rows that ran. Attention is joint over [text | image]; the network calls its blocks without
transformer_options, so they are handed the pack's attention override.
"""
from .base import ControlNetAdapter, gather_grid_ids, gather_hint, hand_attention_override, patch_module_forward
from .qwen_image import QwenImageFamily


class QwenImageControlNet(ControlNetAdapter):
    name = "Qwen-Image InstantX ControlNet"

    def matches(self, control_model) -> bool:
        try:
            import comfy.ldm.qwen_image.controlnet as controlnet
        except ImportError:         # a ComfyUI without Qwen-Image ControlNets
            return False
        return isinstance(control_model, getattr(controlnet, "QwenImageControlNetModel", ()))

    def feeds(self, family) -> bool:
        return isinstance(family, QwenImageFamily)

    def block_paths(self, control_model) -> list:
        return [f"transformer_blocks.{i}" for i in range(len(control_model.transformer_blocks))]

    def kv_cache_layers(self, control_model, image_tokens: int, text_tokens: int, control) -> list:
        return [(text_tokens + image_tokens, control_model.inner_dim)] * len(control_model.transformer_blocks)

    def install(self, patcher, slot) -> None:
        patch_module_forward(patcher, slot, "pe_embedder", before=gather_grid_ids)
        patch_module_forward(patcher, slot, "img_in", before=lambda call, x: call.gather(x))
        patch_module_forward(patcher, slot, "controlnet_x_embedder", before=gather_hint)
        for path in self.block_paths(patcher.model):
            hand_attention_override(patcher, slot, path, graph=True)     # each block may replay from a CUDA graph

