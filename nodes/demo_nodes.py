"""`SDiT Demo Model Loader` and `SDiT Demo Decode`: the pack's own small model, no downloads."""
import torch

from .demo.codec import PATCH
from .demo.model import load_demo_model
from .demo.vocabulary import COLOURS, SHAPES
from .errors import SDiTInputError

DEMO_CATEGORY = "sampling/region adaptive/demo"


class SDiTDemoModelLoader:
    DESCRIPTION = ("Loads the pack's small demo diffusion transformer (ComfyUI's Flux class, 16-channel latent of its own) "
                   "and turns a class prompt into conditioning. Use an empty SD3 latent (16 channels) with it.")
    CATEGORY = DEMO_CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("MODEL", "positive", "negative")
    OUTPUT_TOOLTIPS = ("The demo model.", "Conditioning for the prompt.", "Unconditional conditioning (for cfg > 1).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"prompt": ("STRING", {
            "default": "a red star",
            "tooltip": f"One colour ({', '.join(COLOURS)}) and one shape ({', '.join(SHAPES)})."})}}

    def load(self, prompt):
        demo = load_demo_model()
        try:
            positive = demo.conditioning(prompt)
        except ValueError as error:
            raise SDiTInputError("SDiT Demo Model Loader", "prompt", str(error)) from None
        return (demo.patcher, positive, demo.conditioning(""))


class SDiTDemoDecode:
    DESCRIPTION = "Decodes a latent of the demo model to pixels (its fixed linear patch decoder)."
    CATEGORY = DEMO_CATEGORY
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = (f"Images, {PATCH}x the latent size.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT", {"tooltip": "A latent sampled with the demo model."})}}

    def decode(self, samples):
        latent = samples["samples"]
        if latent.ndim != 4 or latent.shape[1] != 16:
            raise SDiTInputError("SDiT Demo Decode", "samples",
                                 f"expected a 16-channel image latent, got shape {tuple(latent.shape)}")
        images = load_demo_model().codec.decode(latent.to(torch.float32).cpu())
        return (images.permute(0, 2, 3, 1).contiguous(),)
