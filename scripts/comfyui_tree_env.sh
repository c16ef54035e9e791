#!/usr/bin/env bash
# A Python environment for a ComfyUI source tree other than the vendored 0.3.75 (e.g. the newest one), so
# the suite can run on it:
#
#   scripts/comfyui_tree_env.sh /path/to/ComfyUI /path/to/venv
#   COMFYUI_PATH=/path/to/ComfyUI PYTHON=/path/to/venv/bin/python make test
#   TORCH="torch==2.7.1 torchvision==0.22.1" scripts/comfyui_tree_env.sh .comfyui /path/to/venv   # an older torch
#
# Installs the torch pins of scripts/install_comfyui.sh (or $TORCH's), the tree's requirements (minus torch,
# torchvision, torchaudio) and the newest frontend. ComfyUI imports torchaudio at start-up; where no torchaudio wheel
# matches this torch, a stub package that fails on use stands in (nothing the pack or its tests run uses it).
set -euo pipefail
tree=${1:?usage: $0 COMFYUI_TREE VENV}
venv=${2:?usage: $0 COMFYUI_TREE VENV}
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -f "$tree/comfy/model_management.py" ] || { echo "$tree is not a ComfyUI tree" >&2; exit 1; }
[ -x "$venv/bin/python" ] || "${PYTHON:-python3.11}" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
read -r -a torch_pins <<< "${TORCH:-torch==2.14.1 torchvision==0.29.1}"
"${pip[@]}" "${torch_pins[@]}"
grep -viE '^(torch|torchaudio|torchvision)([<>=~! ].*)?$' "$tree/requirements.txt" > "$venv/tree-requirements.txt"
# requests: ComfyUI imports it, and 0.3.75 (the vendored tree) does not list it
"${pip[@]}" -r "$venv/tree-requirements.txt" requests -r "$repo_root/requirements-dev.txt" "${torch_pins[@]}"
"${pip[@]}" --upgrade comfyui-frontend-package
"$repo_root/scripts/torchaudio_stub.sh" "$venv/bin/python"
echo "ready: COMFYUI_PATH=$tree PYTHON=$venv/bin/python make test"
