#!/usr/bin/env bash
# Create .venv-peer: the peer converters for tools/bench_export.py, kept out of the project venv.
#
# litert-torch (formerly ai-edge-torch) brings jax, transformers, torchao and its own MLIR
# converter: about 2 GB that edgeres must not depend on. It lives in its own venv, with torch
# pinned to the project's CPU build (an unpinned torch would pull multi-GB CUDA wheels).
#
#   bash tools/setup_peers.sh            # creates /path/to/repo/.venv-peer (about 2.1 GB)
#   PEER_VENV=/tmp/peer bash tools/setup_peers.sh
#
# Recorded install (2026, Python 3.11, x86_64): torch 2.13.0+cpu, litert-torch 0.10.0,
# torchao 0.18.0, ai-edge-litert 2.3.0, ai-edge-quantizer 0.10.0, litert-converter 0.5.0,
# jax/jaxlib 0.10.2, transformers 5.23.0, numpy 2.4.6 (no nvidia-* packages).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PEER_VENV:-$ROOT/.venv-peer}"
TORCH_VERSION="2.13.0"
LITERT_TORCH_VERSION="0.10.0"
PYTHON="${PYTHON:-python3}"

if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/pip" install --disable-pip-version-check)
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"

# torch first, pinned: pip resolves it to the local CPU wheel.
"${PIP[@]}" "torch==$TORCH_VERSION"

# Refuse a resolution that would fetch CUDA wheels (torch must stay the CPU build).
REPORT="$(mktemp)"
"${PIP[@]}" --dry-run --quiet --report "$REPORT" "litert-torch==$LITERT_TORCH_VERSION" \
  -c "$CONSTRAINTS"
if "$VENV/bin/python" - "$REPORT" <<'EOF'
import json, sys
names = [i["metadata"]["name"] for i in json.load(open(sys.argv[1]))["install"]]
bad = [n for n in names if n.lower().startswith("nvidia") or n.lower() == "torch"]
sys.exit(1 if bad else 0)
EOF
then
  rm -f "$REPORT"
else
  rm -f "$REPORT"
  echo "refusing: litert-torch would replace torch $TORCH_VERSION or pull nvidia-* wheels" >&2
  exit 1
fi

"${PIP[@]}" "litert-torch==$LITERT_TORCH_VERSION" -c "$CONSTRAINTS"
"$VENV/bin/python" -c "import torch, litert_torch; print('peer venv:', '$VENV', 'torch', \
torch.__version__, 'litert-torch', litert_torch.__version__)" 2>/dev/null
