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
