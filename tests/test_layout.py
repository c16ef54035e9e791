"""Pack layout and packaging: sdit_core stands alone, metadata is complete, registration is classic."""
import subprocess
import sys
import tomllib

from conftest import REPO_ROOT

CHECK_SDIT_CORE_ALONE = r"""
import importlib, importlib.util, pathlib, pkgutil, sys
root = pathlib.Path(sys.argv[1])
spec = importlib.util.spec_from_file_location("sdit_core", root / "__init__.py", submodule_search_locations=[str(root)])
package = importlib.util.module_from_spec(spec)
sys.modules["sdit_core"] = package
spec.loader.exec_module(package)
names = [m.name for m in pkgutil.iter_modules([str(root)])]
for name in names:
    importlib.import_module("sdit_core." + name)
leaked = sorted(m for m in sys.modules if m == "comfy" or m.startswith("comfy.") or m in ("nodes", "folder_paths"))
assert not leaked, leaked
print("imported", len(names), "modules")
"""


def test_sdit_core_imports_without_comfyui():
    # -I: isolated mode, no PYTHONPATH, no user site, no current directory: ComfyUI cannot be found
    result = subprocess.run([sys.executable, "-I", "-c", CHECK_SDIT_CORE_ALONE, str(REPO_ROOT / "sdit_core")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "imported" in result.stdout


def test_top_level_layout_and_metadata():
    for name in ("__init__.py", "nodes", "sdit_core", "kernels", "web", "example_workflows", "tests", "bench",
                 "docs", "pyproject.toml", "README.md", "Makefile", "requirements.txt", ".ci/run"):
        assert (REPO_ROOT / name).exists(), name
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    deps = " ".join(project["project"]["dependencies"])
    for dep in ("numpy", "scikit-image", "hnswlib", "opencv-python-headless"):
        assert dep in deps
    assert "torch" not in deps.split(), "torch comes with ComfyUI: never re-resolved by an install of the pack"
    assert "triton" in " ".join(project["project"]["optional-dependencies"]["triton"])
    comfy = project["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"]
    requirements = (REPO_ROOT / "requirements.txt").read_text()
    for dep in ("numpy", "scikit-image", "hnswlib", "opencv-python"):
        assert dep in requirements


def test_registration_is_classic_and_points_at_web():
    import comfyui_sdit
    assert comfyui_sdit.WEB_DIRECTORY == "./web"
    assert not hasattr(comfyui_sdit, "comfy_entrypoint")     # one registration style, used everywhere
    assert set(comfyui_sdit.NODE_CLASS_MAPPINGS) == set(comfyui_sdit.NODE_DISPLAY_NAME_MAPPINGS)
    assert any((REPO_ROOT / "web").glob("*.js"))


def test_ci_runs_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert ci.strip().splitlines()[-1] == "make test"


def test_the_suite_runs_from_a_clone_named_like_the_repo(tmp_path):
    """A clone in a folder named comfyui-sdit (the repo's name, and the pack's name in custom_nodes) runs the
    suite: pytest takes tests/ as its root and never imports the pack's __init__.py as a test package."""
    clone = tmp_path / "comfyui-sdit"
    clone.mkdir()
    for entry in REPO_ROOT.iterdir():
        if entry.name != ".git":
            (clone / entry.name).symlink_to(entry)
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run([*pytest, "tests/test_count_grid.py"], cwd=clone, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout
