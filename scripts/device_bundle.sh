#!/usr/bin/env bash
# Builds .dev/ (gitignored): what the lent GPU machine needs beyond its own image to import ComfyUI as a
# library, namely the ComfyUI tree without its tests, API nodes and custom nodes (~23 MB), and the torchsde
# and trampoline wheels. Device calls name it in `carry`; bench/gpu_runbook.sh installs it there.
set -euo pipefail
cd "$(dirname "$0")/.."
source_tree=${COMFYUI_PATH:-.comfyui}
rm -rf .dev && mkdir -p .dev/comfyui .dev/whl
tar -C "$source_tree" --exclude=__pycache__ --exclude=./tests --exclude=./tests-unit --exclude=./comfy_api_nodes \
    --exclude='./custom_nodes/*' --exclude=./input --exclude=./output --exclude=./temp -cf - . | tar -C .dev/comfyui -xf -
rm -f .dev/comfyui/extra_model_paths.yaml
python3 -m pip download -q --no-deps --only-binary=:all: -d .dev/whl torchsde==0.2.6 trampoline==0.1.2
du -sh .dev
