from typing import Tuple


class FamilyAdapter:
    """Interface of a model-family adapter."""
    names: Tuple[str, ...] = ()

    def matches(self, diffusion_model) -> bool:
        raise NotImplementedError

    def patch_size(self, diffusion_model) -> int:
        raise NotImplementedError

    def install(self, patcher, slot) -> None:
        """Adds the object patches that gather image tokens and scatter the output."""
        raise NotImplementedError
