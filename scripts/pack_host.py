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


def comfyui_version() -> str:
    """The ComfyUI tree's version (its comfyui_version.py), '' where it has none."""
    import re
    version_file = comfyui_root() / "comfyui_version.py"
    found = re.search(r'__version__\s*=\s*"([^"]+)"', version_file.read_text()) if version_file.is_file() else None
    return found.group(1) if found else ""


def enable_dynamic_vram(device_index: int) -> None:
    """Loads models the way a newer ComfyUI server does by default on NVIDIA GPUs (its main.py): comfy-aimdo
    hooks the driver's allocations, models get `ModelPatcherDynamic` (weights stay in RAM and are staged
    into a virtual VRAM region as their layers run) and ComfyUI's ops take the dynamic path. Benchmarks
    use it to time what users of the newest ComfyUI get; call after import_comfyui, before building models."""
    import comfy.model_patcher
    if not hasattr(comfy.model_patcher, "ModelPatcherDynamic"):
        raise SystemExit(f"the ComfyUI at {comfyui_root()} has no dynamic VRAM (ModelPatcherDynamic): "
                         "set COMFYUI_PATH to a newer tree")
    import comfy.memory_management
    import comfy_aimdo.control
    if not (comfy_aimdo.control.init() and comfy_aimdo.control.init_devices([device_index])):
        raise SystemExit("comfy-aimdo could not take over the GPU's allocations (dynamic VRAM needs an NVIDIA GPU)")
    comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
    comfy.memory_management.aimdo_enabled = True


def with_context_windows(model, length: int, overlap: int, schedule: str = "standard_static", dim: int = 2):
    """A clone of `model` sampled in ComfyUI's context windows over the frame axis (`dim` 2 of a video latent), as its
    Wan Context Windows node sets them up: windows of `length` latent frames overlapping by `overlap`, pyramid
    blending; another `dim` as its Context Windows (Manual) node does (an image's height 2 or width 3: tiles)."""
    import comfy.context_windows as context_windows
    windowed = model.clone()
    windowed.model_options["context_handler"] = context_windows.IndexListContextHandler(
        context_schedule=context_windows.get_matching_context_schedule(schedule),
        fuse_method=context_windows.get_matching_fuse_method("pyramid"),
        context_length=length, context_overlap=overlap, dim=dim)
    context_windows.create_prepare_sampling_wrapper(windowed)
    return windowed


def load_pack():
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module
