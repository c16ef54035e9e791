"""ComfyUI's Flux ControlNets (comfy/ldm/flux/controlnet.py `ControlNetFlux`: XLabs, InstantX / Union, Mistoline),
run token-sparse with a Flux model (sparse_controlnet.py).

The network is a Flux of a few blocks. Its `forward_orig` gets the latent's tokens, the hint's tokens (the hint image
encoded and cut into the same 2x2 patches) and their RoPE ids, and embeds the first two token by token (`img_in`,
`pos_embed_input`), so gathering the running rows of all three there is exact, as for the model (flux.py). Each
block's image output becomes a residual through a per-token linear layer: the residuals come out in the rows that
ran. Attention is joint over [text | image] as in the model (a Union ControlNet's mode token leads the text); the
network calls its blocks without transformer_options, so they are handed the pack's attention override.
"""
from .base import ControlNetAdapter, every_row, hand_attention_override, patch_method
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
        def gather_image(call, arguments):
            rows = arguments["img"].shape[0]
            for name in ("img", "img_ids", "controlnet_cond"):     # tokens, their RoPE positions, the hint's tokens
                arguments[name] = call.gather(every_row(arguments[name], rows))

        patch_method(patcher, slot, "forward_orig", before=gather_image)
        for path in self.block_paths(patcher.model):
            hand_attention_override(patcher, slot, path, graph=True)     # each block may replay from a CUDA graph
