"""Per-model-family adapters: where image tokens are gathered and the output is scattered back.

Each adapter patches the model only through ComfyUI's ModelPatcher (object patches on methods that
call through to the original); the engine and the policies stay family-agnostic.
"""
from typing import List

from ..errors import SDiTInputError
from .auraflow import AuraFlowFamily
from .base import FamilyAdapter
from .boogu import BooguFamily
from .chroma_radiance import ChromaRadianceFamily
from .cogvideox import CogVideoXFamily
from .cosmos import CosmosFamily
from .cosmos1 import Cosmos1Family
from .ernie import ErnieImageFamily
from .flux import FluxFamily
from .flux_controlnet import FluxControlNet
from .helios import HeliosFamily
from .hidream import HiDreamFamily
from .hidream_o1 import HiDreamO1Family
from .hunyuan_dit import HunyuanDiTFamily
from .hunyuan_video import HunyuanVideoFamily
from .ideogram4 import Ideogram4Family
from .joyimage import JoyImageFamily
from .kandinsky5 import Kandinsky5Family
from .kandinsky6 import Kandinsky6Family
from .krea2 import Krea2Family
from .lens import LensFamily
from .ltx2 import LTX2Family
from .ltxv import LTXVFamily
from .lumina import LuminaFamily
from .mage_flow import MageFlowFamily
from .minimax_h3 import MiniMaxH3Family
from .mochi import MochiFamily
from .omnigen2 import OmniGen2Family
from .pid import PiDFamily
from .pixart import PixArtFamily
from .pixeldit import PixelDiTFamily
from .prism import PrismFamily
from .qwen_image import QwenImageFamily
from .qwen_image_controlnet import QwenImageControlNet
from .qwen_image_fun_controlnet import QwenImageFunControlNet
from .qwen_image21 import QwenImage21Family
from .sd3 import SD3Family
from .sd3_controlnet import SD35ControlNet, SD3ControlNet
from .sensenova import SenseNovaFamily
from .wan import WanFamily
from .wan_animate import WanAnimateFamily
from .wan_animate2 import WanAnimate2Family
from .wan_dancer import WanDancerFamily
from .wan_humo import WanHumoFamily
from .wan_s2v import WanS2VFamily
from .wan_scail import WanSCAILFamily
from .wan_vace import WanVaceFamily
from .zimage_pixel import ZImagePixelSpaceFamily

FAMILIES: List[FamilyAdapter] = [FluxFamily(), SD3Family(), LuminaFamily(), QwenImageFamily(), WanFamily(),
                               WanVaceFamily(), WanAnimateFamily(), WanAnimate2Family(), WanHumoFamily(),
                               WanS2VFamily(), WanSCAILFamily(), WanDancerFamily(), HunyuanVideoFamily(),
                               CosmosFamily(), HiDreamFamily(), Kandinsky5Family(), LTXVFamily(), LTX2Family(),
                               MochiFamily(), AuraFlowFamily(), Krea2Family(), Ideogram4Family(), MageFlowFamily(),
                               LensFamily(), JoyImageFamily(), CogVideoXFamily(), OmniGen2Family(), BooguFamily(),
                               ErnieImageFamily(), PixArtFamily(), QwenImage21Family(),
                               ChromaRadianceFamily(), HunyuanDiTFamily(),
                               ZImagePixelSpaceFamily(), MiniMaxH3Family(), Cosmos1Family(),
                               PixelDiTFamily(), PiDFamily(), HiDreamO1Family(), SenseNovaFamily(), PrismFamily(),
                               HeliosFamily(), Kandinsky6Family()]


def supported_family_names() -> str:
    return ", ".join(name for family in FAMILIES for name in family.names)


def adapter_for(model_patcher, node: str, input_name: str = "model") -> FamilyAdapter:
    """The adapter for a MODEL, or a clear error naming the model class and what is supported."""
    inner = getattr(model_patcher, "model", None)
    diffusion_model = getattr(inner, "diffusion_model", None)
    if diffusion_model is None:
        raise SDiTInputError(node, input_name, f"expected a diffusion MODEL, got {type(model_patcher).__name__}")
    for family in FAMILIES:
        if family.matches(diffusion_model):
            reason = family.refused_model(diffusion_model)
            if reason:
                raise SDiTInputError(node, input_name, reason)
            return family
    raise SDiTInputError(
        node, input_name,
        f"model class {type(inner).__name__} ({type(diffusion_model).__module__}.{type(diffusion_model).__name__}) "
        f"is not supported: region-adaptive sampling needs a diffusion transformer of a supported family "
        f"({supported_family_names()}); UNet models such as SD1.5/SDXL cannot skip tokens")


# ControlNet networks (ComfyUI's Apply ControlNet) that run token-sparse with the model they feed (sparse_controlnet.py)
CONTROLNETS = [FluxControlNet(), QwenImageControlNet(), QwenImageFunControlNet(), SD3ControlNet(), SD35ControlNet()]


def controlnet_adapter_for(control_model, family: FamilyAdapter):
    """The adapter of a ControlNet's network feeding a model of `family`, or None (it runs over every token)."""
    return next((c for c in CONTROLNETS if c.matches(control_model) and c.feeds(family)), None)
