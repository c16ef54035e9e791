"""Test host: ComfyUI imported as a library (on the CPU), this pack imported as `comfyui_sdit`."""
import os
import sys
import pathlib

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
import torch  # noqa: E402

from pack_host import REPO_ROOT, comfyui_root, import_comfyui, load_pack  # noqa: E402,F401

# Tests compare against exact expectations in fp32: run them on the CPU unless asked otherwise.
COMFYUI_ROOT = import_comfyui(cpu=not (torch.cuda.is_available() and os.environ.get("SDIT_TESTS_ON_GPU") == "1"))
load_pack()


@pytest.fixture(autouse=True)
def no_dead_loaded_models_from_earlier_tests():
    """Each test starts without ComfyUI loaded-model entries whose patchers died while their model lives on (a clone
    of a clone of a model an earlier test cached): ComfyUI keeps such an entry, and `loaded_models()` hands out None
    for it, which its ControlNets' VAE hint encoding then calls a method of. Not what any test here is about."""
    import comfy.model_management
    loaded = comfy.model_management.current_loaded_models
    loaded[:] = [entry for entry in loaded if not entry.is_dead()]
    yield
