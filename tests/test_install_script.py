"""scripts/install_comfyui.sh picks the torch build for the machine: CUDA only where an NVIDIA GPU answers."""
import os
import subprocess

import pytest

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "install_comfyui.sh"


def torch_plan(tmp_path, nvidia_smi: str) -> str:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\n" + nvidia_smi + "\n")
    (fake / "nvidia-smi").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    return subprocess.run(["bash", str(SCRIPT), "--torch-plan"], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.parametrize("nvidia_smi, plan", [
    ('echo "GPU 0: NVIDIA H200 (UUID: GPU-0)"', "cuda"),
    ('echo "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver."; exit 9', "cpu"),
    ("exit 0", "cpu"),                                                     # a tool that lists no GPU
])
def test_torch_build_follows_the_gpu(tmp_path, nvidia_smi, plan):
    assert torch_plan(tmp_path, nvidia_smi) == plan


def link_into(tmp_path, existing) -> subprocess.CompletedProcess:
    """The script with COMFYUI_PATH set to a bare ComfyUI tree whose custom_nodes/comfyui-sdit is `existing(path)`'s
    (pip stands in: nothing is installed)."""
    tree = tmp_path / "ComfyUI"
    (tree / "comfy").mkdir(parents=True)
    (tree / "comfy" / "model_management.py").write_text("")
    (tree / "custom_nodes").mkdir()
    existing(tree / "custom_nodes" / "comfyui-sdit")
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\nexit 0\n")
    python.chmod(0o755)
    env = dict(os.environ, COMFYUI_PATH=str(tree), PYTHON=str(python))
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, check=True)


def test_the_pack_is_linked_from_this_checkout(tmp_path):
    """A link left by another checkout (another clone's `make test` on the same ComfyUI) is pointed here, so the
    server tests load this checkout's nodes; a copy of the pack is left alone and named."""
    other = tmp_path / "other-checkout"
    other.mkdir()
    link_into(tmp_path, lambda target: target.symlink_to(other))
    assert (tmp_path / "ComfyUI" / "custom_nodes" / "comfyui-sdit").resolve() == REPO_ROOT.resolve()

    copy = tmp_path / "copy"
    result = link_into(copy, lambda target: target.mkdir())
    assert not (copy / "ComfyUI" / "custom_nodes" / "comfyui-sdit").is_symlink()
    assert "a copy of the pack" in result.stderr

    fresh = tmp_path / "fresh"
    link_into(fresh, lambda target: None)
    assert (fresh / "ComfyUI" / "custom_nodes" / "comfyui-sdit").resolve() == REPO_ROOT.resolve()
