"""Boogu-Image (comfy/ldm/boogu/model.py, BooguTransformer2DModel; newer ComfyUI): OmniGen2's network with a
dual-stream stage between its refiners and its joint layers.

Its refiners, joint (single-stream) layers and output layer are OmniGen2's, hooked as omnigen2.py hooks them. Each
dual-stream block attends twice: the instruction with the references and the image ([instruction | references |
image], RoPE for that sequence), then the references and the image alone ([references | image], the same RoPE
after the instruction's rows): each block gets the running tokens' rows of both. The references' tokens run on
every step, before the image's, as in OmniGen2.
"""
from .base import gathered_freqs, patch_method, runs_class_methods
from .omnigen2 import OmniGen2Family, kv_channels, reference_tokens


class BooguFamily(OmniGen2Family):
    names = ("Boogu-Image",)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.boogu.model", "BooguTransformer2DModel",
                                  ("forward", "img_patch_embed_and_refine", "flat_and_pad_to_seq"))

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        channels = kv_channels(diffusion_model.single_stream_layers[0].attn)
        references = reference_tokens(diffusion_model, values)
        joint, images = text_tokens + references + image_tokens, references + image_tokens
        return ([(image_tokens, channels)] * len(diffusion_model.noise_refiner)
                + [(joint, channels), (images, channels)] * len(diffusion_model.double_stream_layers)
                + [(joint, channels)] * len(diffusion_model.single_stream_layers))

    def joint_layers(self, diffusion_model) -> str:
        return "single_stream_layers"

    def install(self, patcher, slot) -> None:
        super().install(patcher, slot)
        for i in range(len(patcher.model.diffusion_model.double_stream_layers)):
            patch_method(patcher, slot, f"diffusion_model.double_stream_layers.{i}.forward", before=_gather_freqs_twice,
                         graph=True)


def _gather_freqs_twice(call, arguments) -> None:
    """A dual-stream block's RoPE rows for the running tokens: of [instruction | references | image] and of
    [references | image]."""
    if call.dense:
        return
    images = arguments["img_hidden_states"].shape[1]            # references + running image tokens
    before = images - call.image_rows                            # the references'
    instruction = arguments["instruct_hidden_states"].shape[1]
    arguments["joint_rotary_emb"] = gathered_freqs(call, arguments["joint_rotary_emb"], instruction + before)
    arguments["img_rotary_emb"] = gathered_freqs(call, arguments["img_rotary_emb"], before)
