"""Test host: ComfyUI imported as a library (on the CPU), this pack imported as `comfyui_sdit`."""
import os
import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
import torch  # noqa: E402

from pack_host import REPO_ROOT, comfyui_root, import_comfyui, load_pack  # noqa: E402,F401

# Tests compare against exact expectations in fp32: run them on the CPU unless asked otherwise.
COMFYUI_ROOT = import_comfyui(cpu=not (torch.cuda.is_available() and os.environ.get("SDIT_TESTS_ON_GPU") == "1"))
load_pack()
