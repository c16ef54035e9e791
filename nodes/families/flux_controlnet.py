"""ComfyUI's Flux ControlNets (comfy/ldm/flux/controlnet.py `ControlNetFlux`: XLabs, InstantX / Union, Mistoline),
run token-sparse with a Flux model (sparse_controlnet.py).

The network is a Flux of a few blocks. Its `forward_orig` embeds the latent's tokens and the hint's tokens (the hint
image encoded and cut into the same 2x2 patches) token by token (`img_in`, `pos_embed_input`) and builds RoPE from
[text ids (a Union ControlNet's mode token first) | image ids] (`pe_embedder`): the running rows are gathered at those
three modules, which is exact, as for the model (flux.py); the network's own methods are left alone. Each
block's image output becomes a residual through a per-token linear layer: the residuals come out in the rows that
ran. Attention is joint over [text | image] as in the model (a Union ControlNet's mode token leads the text); the
network calls its blocks without transformer_options, so they are handed the pack's attention override.
"""
from .base import ControlNetAdapter, gather_grid_ids, gather_hint, hand_attention_override, patch_module_forward
from .flux import FluxFamily


class FluxControlNet(ControlNetAdapter):
    name = "Flux ControlNet"

    def matches(self, control_model) -> bool:
        import comfy.ldm.flux.controlnet
        return isinstance(control_model, comfy.ldm.flux.controlnet.ControlNetFlux)

    def feeds(self, family) -> bool:
        return isinstance(family, FluxFamily)

    def block_paths(self, control_model) -> list:
        return ([f"double_blocks.{i}" for i in range(len(control_model.double_blocks))]
                + [f"single_blocks.{i}" for i in range(len(control_model.single_blocks))])

    def kv_cache_layers(self, control_model, image_tokens: int, text_tokens: int, control) -> list:
        mode_token = int(control_model.controlnet_mode_embedder is not None
                         and len(control.extra_args.get("control_type") or []) > 0)
        tokens = text_tokens + mode_token + image_tokens
        return [(tokens, control_model.hidden_size)] * len(self.block_paths(control_model))

    def install(self, patcher, slot) -> None:
        patch_module_forward(patcher, slot, "img_in", before=lambda call, img: call.gather(img))
        patch_module_forward(patcher, slot, "pos_embed_input", before=gather_hint)
        patch_module_forward(patcher, slot, "pe_embedder", before=gather_grid_ids)
        for path in self.block_paths(patcher.model):
            hand_attention_override(patcher, slot, path, graph=True)     # each block may replay from a CUDA graph

