"""ComfyUI's SD3 / SD3.5 ControlNets, run token-sparse with an SD3 / SD3.5 model (sparse_controlnet.py):

- `comfy.cldm.mmdit.ControlNet` (SD3's diffusers-format ControlNets: InstantX canny / pose / tile, inpainting): an
  MMDiT of a few joint blocks, attention joint over [text | image] as in the model (sd3.py);
- `comfy.cldm.dit_embedder.ControlNetEmbedder` (Stability's SD3.5 Large blur / canny / depth ControlNets): blocks of
  image-only self-attention (DismantledBlock) with no text at all; in the Large ones (`double_y_emb`) every block reads
  the same input, the embedded latent plus the embedded hint, instead of the previous block's output.

Both embed the latent and the hint token by token and add position embeddings over the whole grid, so the running
rows are gathered at the first block's input (at every block's where each reads the network's input), which is exact.
Each block's image output becomes a residual through a per-token linear layer: the residuals come out in the rows that
ran. The networks call their blocks without transformer_options, so each block is called here through the K/V cache:
the joint block as ComfyUI's own forward handed the pack's attention override; the SD3.5 block's few lines around its
attention restated (checked against the block's own on the first dense forward). Each block may replay from a CUDA
graph.
"""
from ..comfy_compat import sd3_block_mixing_takes_transformer_options
from .base import ControlNetAdapter, attention_through_cache
from .sd3 import SD3Family


class SD3ControlNet(ControlNetAdapter):
    name = "SD3 ControlNet"

    def matches(self, control_model) -> bool:
        import comfy.cldm.mmdit
        return isinstance(control_model, comfy.cldm.mmdit.ControlNet)

    def feeds(self, family) -> bool:
        return isinstance(family, SD3Family)

    def block_paths(self, control_model) -> list:
        return [f"joint_blocks.{i}" for i in range(len(control_model.joint_blocks))]

    def runs_sparse(self, control_model) -> bool:
        return sd3_block_mixing_takes_transformer_options()

    def kv_cache_layers(self, control_model, image_tokens: int, text_tokens: int, control) -> list:
        layers = []
        for block in control_model.joint_blocks:       # no registers: the network's forward adds none
            layers.append((text_tokens + image_tokens, control_model.hidden_size))
            if block.x_block.x_block_self_attn:         # the image-only second attention
                layers.append((image_tokens, control_model.hidden_size))
        return layers

    def install(self, patcher, slot) -> None:
        def joint_block(call, block, context, x, c, use_checkpoint=False):
            """ComfyUI's JointBlock.forward with the override (no checkpointing: it saves memory for training only)."""
            options = {"optimized_attention_override": slot.attention_override}
            return type(block).forward(block, context, x, c=c, use_checkpoint=False, transformer_options=options)

        for i, path in enumerate(self.block_paths(patcher.model)):
            attention_through_cache(patcher, slot, path + ".forward", joint_block, self.name, check=False,
                                    before=_gather_input if i == 0 else None, graph=True)


class SD35ControlNet(ControlNetAdapter):
    name = "SD3.5 ControlNet"

    def matches(self, control_model) -> bool:
        import comfy.cldm.dit_embedder
        return isinstance(control_model, comfy.cldm.dit_embedder.ControlNetEmbedder)

    def feeds(self, family) -> bool:
        return isinstance(family, SD3Family)

    def block_paths(self, control_model) -> list:
        return [f"transformer_blocks.{i}" for i in range(len(control_model.transformer_blocks))]

    def runs_sparse(self, control_model) -> bool:
        """The blocks' one attention, as `_dismantled_block` restates it."""
        return all(not block.pre_only and not block.x_block_self_attn for block in control_model.transformer_blocks)

    def kv_cache_layers(self, control_model, image_tokens: int, text_tokens: int, control) -> list:
        return [(image_tokens, control_model.hidden_size)] * len(control_model.transformer_blocks)

    def install(self, patcher, slot) -> None:
        reads_input = patcher.model.double_y_emb        # every block reads the network's input
        for i, path in enumerate(self.block_paths(patcher.model)):
            attention_through_cache(patcher, slot, path + ".forward", _dismantled_block, self.name, check=i == 0,
                                    before=_gather_input if reads_input or i == 0 else None, graph=True)


def _gather_input(call, arguments) -> None:
    """The block's image tokens, over the whole grid, -> the running rows (once per forward for an input that several
    blocks read)."""
    x = arguments["x"]
    if call.dense:
        call.gather(x)                                  # counted
        return
    key = ("controlnet input", x.data_ptr(), tuple(x.shape))
    if key not in call.scratch:
        call.scratch[key] = call.gather(x)
    arguments["x"] = call.scratch[key]


def _dismantled_block(call, block, x, c):
    """DismantledBlock.forward (one attention, over the image tokens) through the K/V cache."""
    from comfy.ldm.modules.attention import optimized_attention
    qkv, intermediates = block.pre_attention(x, c)
    attention = call.attention(optimized_attention, qkv[0], qkv[1], qkv[2], block.attn.num_heads, {})
    return block.post_attention(attention, *intermediates)
