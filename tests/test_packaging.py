"""The registry package: what `comfy node pack` would ship (git-tracked files minus .comfyignore), the
license, and dependency lists that agree."""
import fnmatch
import re
import shutil
import subprocess
import tomllib

import pytest

from conftest import REPO_ROOT

RUNTIME = {"__init__.py", "nodes", "sdit_core", "kernels", "web", "models", "example_workflows", "README.md",
           "LICENSE", "pyproject.toml", "requirements.txt"}


def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def requirement_names(lines) -> list:
    names = []
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.append(re.split(r"[<>=!~\[ ;]", line, maxsplit=1)[0].lower())
    return names


def ignored(path: str, patterns: list) -> bool:
    for pattern in patterns:
        if pattern.endswith("/"):
            if path.startswith(pattern) or f"/{pattern}" in f"/{path}":
                return True
        elif fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern):
            return True
    return False


def packed_files() -> list:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    patterns = [line.strip() for line in (REPO_ROOT / ".comfyignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    return [path for path in tracked.splitlines() if not ignored(path, patterns)]


def test_package_ships_only_what_runs_in_comfyui():
    files = packed_files()
    assert {path.split("/")[0] for path in files} == RUNTIME
    assert not [f for f in files if f.endswith(".json") and not f.startswith("example_workflows/")]
    size = sum((REPO_ROOT / f).stat().st_size for f in files if (REPO_ROOT / f).is_file())
    # the demo model's weights (7.8 MiB) and the example workflows with their thumbnails (~20 KiB each): nothing else big
    assert size < 10 * 2 ** 20, f"package is {size / 2 ** 20:.1f} MiB"


def test_license_file_matches_pyproject():
    assert pyproject()["project"]["license"] == {"file": "LICENSE"}
    assert (REPO_ROOT / "LICENSE").read_text().startswith("MIT License")


def test_requirements_and_pyproject_dependencies_agree():
    project = pyproject()["project"]
    runtime = requirement_names((REPO_ROOT / "requirements.txt").read_text().splitlines())
    assert sorted(runtime) == sorted(requirement_names(project["dependencies"]))
    assert "opencv-python" not in runtime and "opencv-python-headless" in runtime
    dev = (REPO_ROOT / "requirements-dev.txt").read_text().splitlines()
    assert "-r requirements.txt" in [line.split("#")[0].strip() for line in dev]
    assert sorted(requirement_names(dev)) == sorted(requirement_names(project["optional-dependencies"]["dev"]))


@pytest.mark.skipif(shutil.which("comfy") is None, reason="comfy-cli is not installed (pip install comfy-cli)")
def test_comfy_node_validate_passes():
    result = subprocess.run(["comfy", "--skip-prompt", "--no-enable-telemetry", "node", "validate"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


CLAIM = re.compile(r"\b\d+(?:\.\d+)?(?:x\b| dB\b| ms\b)")


def test_every_number_readme_and_pyproject_claim_is_in_the_benchmarks():
    """Speedups, dB and ms quoted to users come from a row of docs/BENCHMARKS.md (which says how and where)."""
    benchmarks = (REPO_ROOT / "docs" / "BENCHMARKS.md").read_text()
    claimed = CLAIM.findall((REPO_ROOT / "README.md").read_text()) + CLAIM.findall(pyproject()["project"]["description"])
    assert len(claimed) > 10
    assert [c for c in claimed if c not in benchmarks] == []
