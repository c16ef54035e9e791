"""Triton kernels against their PyTorch references, on the CPU through Triton's interpreter."""
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

try:
    import triton  # noqa: F401
    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False


@pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed (the PyTorch reference is used then)")
def test_kv_write_triton_matches_reference_in_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "kernel_checks.py")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kv_write ok" in result.stdout
    assert "fp8_dequant ok" in result.stdout
    assert "quickshift ok" in result.stdout
