"""Every node class of the pack, registered the classic way (NODE_CLASS_MAPPINGS)."""
from .ras_nodes import RASModelPatch, RASSampler

NODE_CLASS_MAPPINGS = {
    "RASSampler": RASSampler,
    "RASModelPatch": RASModelPatch,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "RASSampler": "RAS Sampler",
    "RASModelPatch": "RAS Model Patch",
}
