"""Z-Image pixel space (comfy/ldm/lumina/model.py, NextDiTPixelSpace; newer ComfyUI): Z-Image on RGB pixels.

Lumina's NextDiT (lumina.py) with its own `_forward`: the same noise refiner and joint layers over patches of the RGB
image, then, instead of the final layer, a small per-patch decoder (`dec_net`) that maps each patch's pixels and the
last layer's hidden state for it to the patch's predicted pixels. The forward cuts the last layer's output to the
image's first N rows (every patch's, by position) before the decoder. The adapter hooks as Lumina's and then:
- `patchify_and_embed`'s caption length is the caption's own (as Lumina's: newer ComfyUI derives it from the
  sequence's length);
- the last joint layer's output gets every image token's row (the skipped ones zero) for that cut;
- the decoder runs on the running patches alone and its output gets every patch's row back: the running ones
  computed, the others from the policy.
Reference images (Z-Image Omni's conditioning) are refused: this forward's cut assumes the image's rows come first.
"""
from .base import every_image_row_after, patch_method, runs_class_methods
from .lumina import LEAD, LuminaFamily, install_layers

_MODULE = "comfy.ldm.lumina.model"
REFERENCES = ("Z-Image pixel space with reference images is not supported by region-adaptive sampling; sample it with "
              "KSampler")


class ZImagePixelSpaceFamily(LuminaFamily):
    names = ("Z-Image pixel space",)
    handled_patches = ()        # the Z-Image Fun ControlNet, which Lumina's adapter runs token-sparse: untested here

    def matches(self, diffusion_model) -> bool:
        decoder = getattr(diffusion_model, "dec_net", None)
        return (runs_class_methods(diffusion_model, _MODULE, "NextDiTPixelSpace", ("forward", "_forward"))
                and runs_class_methods(decoder, _MODULE, "SimpleMLPAdaLN", ("forward",)))

    def refused_conditioning(self, diffusion_model, values):
        return REFERENCES if values.get("reference_latents") else None

    def install(self, patcher, slot) -> None:
        install_layers(patcher, slot, after_last=_every_image_row)
        patch_method(patcher, slot, "diffusion_model.dec_net.forward", before=_running_patches, after=_scatter_patches)


def _every_image_row(call, out):
    """[caption | running image tokens | padding] -> [caption | every image token's row | padding]."""
    if call.layout.get(LEAD):
        raise NotImplementedError(REFERENCES)
    return every_image_row_after(call, out, out.shape[1] - call.image_rows)


def _running_patches(call, arguments) -> None:
    """The decoder's (rows * patches, 1, pixels) inputs and (rows * patches, hidden) conditions -> the running
    patches'."""
    if call.dense:
        return
    rows = call.image_index_now().shape[0]
    for name in ("x", "c"):
        value = arguments[name]
        patches = call.gather_grid(value.reshape(rows, call.grid_tokens, *value.shape[1:]).flatten(2))
        arguments[name] = patches.reshape(-1, *value.shape[1:])


def _scatter_patches(call, out):
    """(rows * running patches, 1, pixels) -> (rows * every patch, 1, pixels)."""
    rows = call.image_index_now().shape[0] if not call.dense else out.shape[0] // call.grid_tokens
    full = call.scatter(out.reshape(rows, -1, out.shape[-1]))
    return full.reshape(-1, 1, full.shape[-1])
