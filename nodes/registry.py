"""Every node class of the pack, registered the classic way (NODE_CLASS_MAPPINGS)."""
from .demo_nodes import SDiTDemoDecode, SDiTDemoModelLoader
from .ras_nodes import RASModelPatch, RASOptions, RASSampler
from .sdit_nodes import SDiTModelPatch, SDiTOptions, SDiTSampler
from .visual_nodes import ComplexityMap, RegionVisualizer

NODE_CLASS_MAPPINGS = {
    "RegionVisualizer": RegionVisualizer,
    "ComplexityMap": ComplexityMap,
    "SDiTSampler": SDiTSampler,
    "SDiTModelPatch": SDiTModelPatch,
    "SDiTOptions": SDiTOptions,
    "RASSampler": RASSampler,
    "RASModelPatch": RASModelPatch,
    "RASOptions": RASOptions,
    "SDiTDemoModelLoader": SDiTDemoModelLoader,
    "SDiTDemoDecode": SDiTDemoDecode,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "RegionVisualizer": "Region Visualizer",
    "ComplexityMap": "Complexity Map",
    "SDiTSampler": "SDiT Sampler",
    "SDiTModelPatch": "SDiT Model Patch",
    "SDiTOptions": "SDiT Options",
    "RASSampler": "RAS Sampler",
    "RASModelPatch": "RAS Model Patch",
    "RASOptions": "RAS Options",
    "SDiTDemoModelLoader": "SDiT Demo Model Loader",
    "SDiTDemoDecode": "SDiT Demo Decode",
}
