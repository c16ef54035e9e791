#!/usr/bin/env bash
# Where no torchaudio wheel matches the installed torch (none for 2.12+ on PyPI), installs a stub package
# into the given Python that fails on use: ComfyUI imports torchaudio when it loads its audio nodes, and
# without it prints IMPORT FAILED at start-up. Nothing the pack, its demo or its tests run uses audio.
#
#   scripts/torchaudio_stub.sh /path/to/python
set -euo pipefail
python=${1:?usage: $0 PYTHON}
"$python" -c "import torchaudio" 2>/dev/null && exit 0
site="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$site/torchaudio"
for module in __init__ functional transforms; do
  printf '"""Stub (scripts/torchaudio_stub.sh): no torchaudio wheel matches this torch."""\n\n\ndef __getattr__(name):\n    raise ImportError(f"torchaudio stub: {name} is not available")\n' \
    > "$site/torchaudio/$module.py"
done
echo "note: torchaudio stub installed (no torchaudio wheel matches this torch; audio nodes fail on use)" >&2
