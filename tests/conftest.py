"""Test host: ComfyUI imported as a library, and this pack imported as the package `comfyui_sdit`.

ComfyUI owns top-level module names (nodes, utils, server, ...), so the repo root is never put on
sys.path; the pack is loaded from its folder under a package name of its own.
"""
import importlib.util
import os
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
COMFYUI_ROOT = pathlib.Path(os.environ.get("COMFYUI_PATH") or REPO_ROOT / ".comfyui").resolve()
PACK_NAME = "comfyui_sdit"

if not (COMFYUI_ROOT / "comfy" / "model_management.py").is_file():
    raise RuntimeError(f"no ComfyUI at {COMFYUI_ROOT}: run `make test` (installs it) or set COMFYUI_PATH")
if str(COMFYUI_ROOT) not in sys.path:
    sys.path.insert(0, str(COMFYUI_ROOT))

import torch  # noqa: E402
from comfy.cli_args import args  # noqa: E402

# Tests compare against exact expectations in fp32: run them on the CPU unless asked otherwise.
if not (torch.cuda.is_available() and os.environ.get("SDIT_TESTS_ON_GPU") == "1"):
    args.cpu = True


def load_pack():
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


load_pack()
