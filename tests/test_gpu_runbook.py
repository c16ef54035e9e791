"""The GPU runbook (bench/gpu_runbook.sh) is only ever run on a lent GPU, where a typo costs device minutes
that a session may not get back. Here every part runs with a stand-in `python3` that records its command
line, and each recorded benchmark command is parsed by its script's own argument parser."""
import json
import os
import re
import shutil
import stat
import subprocess
import sys

from conftest import REPO_ROOT

RUNBOOK = REPO_ROOT / "bench" / "gpu_runbook.sh"
PARTS = re.findall(r"^    ([a-z0-9]+(?:\|[a-z0-9]+)*)\)", RUNBOOK.read_text(), flags=re.M)

# prints each call as one line, so the calls can be told apart by the runbook's "=== part" lines around them
RECORDING_PYTHON = f"""#!{sys.executable}
import json, os, sys
print("CALL " + json.dumps({{"argv": sys.argv[1:], "comfyui": os.environ.get("COMFYUI_PATH", ""),
                             "pythonpath": os.environ.get("PYTHONPATH", "")}}), flush=True)
"""

# parses each benchmark call with the script's own parser; prints what did not parse
PARSE_CALLS = """
import json, sys
sys.path.insert(0, sys.argv[1])
import importlib
failures = []
for argv in json.loads(sys.stdin.read()):
    script = argv[0].removeprefix("bench/").removesuffix(".py")
    try:
        importlib.import_module(script).arguments().parse_args(argv[1:])
    except SystemExit:
        failures.append(argv)
print(json.dumps(failures))
"""


def fake_tool(folder, name, text):
    path = folder / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def run_every_part(tmp_path) -> dict:
    """Each part's calls: {part: [call, ...]}, from one run of the runbook over every part."""
    repo, tools, out = tmp_path / "repo", tmp_path / "bin", tmp_path / "out"
    (repo / "bench").mkdir(parents=True)
    shutil.copy(RUNBOOK, repo / "bench")
    for folder in (".dev/whl", ".dev/comfyui", ".dev-newest/whl"):
        (repo / folder).mkdir(parents=True)
    (repo / ".dev/whl/a.whl").touch()
    (repo / ".dev-newest/whl/b.whl").touch()
    (repo / ".dev-newest/comfyui.tgz").touch()
    tools.mkdir()
    fake_tool(tools, "python3", RECORDING_PYTHON)
    fake_tool(tools, "nvidia-smi", "#!/bin/sh\necho 'NVIDIA H200, 580'\n")
    fake_tool(tools, "tar", "#!/bin/sh\nexit 0\n")        # the tree tarball is a stand-in
    env = dict(os.environ, PATH=f"{tools}:{os.environ['PATH']}", OUT=str(out))
    env.pop("VIDEO_MODEL", None)
    parts = [p.split("|")[0] for p in PARTS] + [p.split("|")[1] for p in PARTS if "|" in p]
    result = subprocess.run(["bash", str(repo / "bench" / "gpu_runbook.sh"), *parts], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    calls, part = {p: [] for p in parts}, None
    for line in result.stdout.splitlines():
        if line.startswith("=== "):
            part = line[4:]
        elif line.startswith("CALL ") and part is not None:
            calls[part].append(json.loads(line[5:]))
    return calls


def test_every_runbook_command_parses_and_finds_its_files(tmp_path):
    calls = run_every_part(tmp_path)
    assert {"check", "forward", "speed1024", "speed1024b", "newest1024", "train"} <= set(calls)
    assert all(calls.values()), [p for p, c in calls.items() if not c]
    bench = [c["argv"] for part in calls.values() for c in part if c["argv"][0].startswith("bench/")]
    assert len(bench) >= 25
    parsed = subprocess.run([sys.executable, "-c", PARSE_CALLS, str(REPO_ROOT / "bench")], input=json.dumps(bench),
                            capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert parsed.returncode == 0, parsed.stderr[-3000:]
    assert json.loads(parsed.stdout.splitlines()[-1]) == [], parsed.stderr[-3000:]
    named = [a for part in calls.values() for c in part for a in c["argv"] if re.fullmatch(r"(tests|bench)/\w+\.py", a)]
    assert named and [a for a in named if not (REPO_ROOT / a).is_file()] == []


def test_newest_parts_run_on_the_newer_tree_and_the_rest_on_the_vendored_one(tmp_path):
    calls = run_every_part(tmp_path)
    for part, part_calls in calls.items():
        for call in (c for c in part_calls if c["argv"][0].startswith("bench/")):
            if part.startswith("newest"):
                assert call["comfyui"] == "/tmp/comfyui-newest" and call["pythonpath"] == "/tmp/site-newest", call
            else:
                assert call["comfyui"].endswith("/repo/.dev/comfyui") and call["pythonpath"] == "/tmp/site", call
    assert any("--dynamic-vram" in c["argv"] for c in calls["newest1024"])
    tests = [c for c in calls["newestcheck"] if "tests/test_forward_graphs.py" in c["argv"]]
    assert tests and all(c["comfyui"] == "/tmp/comfyui-newest" for c in tests)
