"""Every node class of the pack, registered the classic way (NODE_CLASS_MAPPINGS)."""
NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
