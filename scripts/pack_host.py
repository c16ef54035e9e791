"""Imports ComfyUI as a library and this pack as the package `comfyui_sdit` (tests, benchmarks).

ComfyUI owns top-level module names (nodes, utils, server, ...), so the repo root is never put on
sys.path; the pack is loaded from its folder under a package name of its own.
"""
import importlib.util
import os
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui_sdit"


def comfyui_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("COMFYUI_PATH") or REPO_ROOT / ".comfyui").resolve()


def import_comfyui(cpu: bool) -> pathlib.Path:
    """Puts ComfyUI on sys.path; with cpu=True ComfyUI runs on the CPU (set before model_management loads)."""
    root = comfyui_root()
    if not (root / "comfy" / "model_management.py").is_file():
        raise RuntimeError(f"no ComfyUI at {root}: run `make test` (installs it) or set COMFYUI_PATH")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from comfy.cli_args import args
    if cpu:
        args.cpu = True
    return root


def load_pack():
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module
