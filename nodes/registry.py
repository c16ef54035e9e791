"""Every node class of the pack, registered the classic way (NODE_CLASS_MAPPINGS)."""
from .demo_nodes import SDiTDemoDecode, SDiTDemoModelLoader
from .ras_nodes import RASModelPatch, RASSampler

NODE_CLASS_MAPPINGS = {
    "RASSampler": RASSampler,
    "RASModelPatch": RASModelPatch,
    "SDiTDemoModelLoader": SDiTDemoModelLoader,
    "SDiTDemoDecode": SDiTDemoDecode,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "RASSampler": "RAS Sampler",
    "RASModelPatch": "RAS Model Patch",
    "SDiTDemoModelLoader": "SDiT Demo Model Loader",
    "SDiTDemoDecode": "SDiT Demo Decode",
}
