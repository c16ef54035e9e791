#!/usr/bin/env bash
# Builds .dev/ (gitignored): what the lent GPU machine needs beyond its own image to import ComfyUI as a
# library, namely the ComfyUI tree without its tests, API nodes and custom nodes (~23 MB), and the torchsde
# and trampoline wheels. Device calls name it in `carry`; bench/gpu_runbook.sh installs it there.
#
#   scripts/device_bundle.sh --newest /path/to/newer/ComfyUI   builds .dev-newest/ instead: that tree as a
#   tarball and the wheels it needs beyond the device's image (comfy-kitchen, comfy-aimdo, ...) for its
#   Python 3.12, for the runbook's `newest*` parts (dynamic VRAM). Carried alone: with .dev it is over 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
excludes=(--exclude=__pycache__ --exclude=.git --exclude=./tests --exclude=./tests-unit --exclude=./comfy_api_nodes
          --exclude='./custom_nodes/*' --exclude=./input --exclude=./output --exclude=./temp --exclude=./extra_model_paths.yaml)
if [ "${1:-}" = "--newest" ]; then
  tree=${2:?usage: $0 --newest /path/to/ComfyUI}
  [ -f "$tree/comfy/model_patcher.py" ] || { echo "$tree is not a ComfyUI tree" >&2; exit 1; }
  rm -rf .dev-newest && mkdir -p .dev-newest/whl
  tar -C "$tree" "${excludes[@]}" -czf .dev-newest/comfyui.tgz .
  # the tree's own pins for what the device lacks (its image has torch, transformers, ...: KINDS.md)
  wanted=$(grep -iE '^(comfy-kitchen|comfy-aimdo|blake3|simpleeval|torchsde)([<>=~ ].*)?$' "$tree/requirements.txt")
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .dev-newest/whl $wanted trampoline==0.1.2
  # comfy-kitchen ships a ROCm library beside its CUDA one (10 MB packed; it loads only under a ROCm torch): left
  # out, so the bundle stays under the device's 64 MiB carry (0.33's comfy-kitchen 0.2.31 is 58 MB packed)
  python3 - .dev-newest/whl/comfy_kitchen-*.whl <<'PY'
import sys, zipfile
for path in sys.argv[1:]:
    def dropped(name):
        return name.startswith("comfy_kitchen/backends/hip/") and ".so" in name
    with zipfile.ZipFile(path) as old:
        entries = [(info, old.read(info)) for info in old.infolist() if not dropped(info.filename)]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as new:
        for info, data in entries:
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(True) if not dropped(line.decode()))
            new.writestr(info, data)
PY
  du -sh .dev-newest
  exit 0
fi
source_tree=${COMFYUI_PATH:-.comfyui}
rm -rf .dev && mkdir -p .dev/comfyui .dev/whl
tar -C "$source_tree" "${excludes[@]}" -cf - . | tar -C .dev/comfyui -xf -
python3 -m pip download -q --no-deps --only-binary=:all: -d .dev/whl torchsde==0.2.6 trampoline==0.1.2
du -sh .dev
