#!/usr/bin/env bash
# One-step setup on a fresh machine: a virtual environment with phasewatch and its test/export tools.
# torch is installed first and pinned, so that nothing later pulls a CUDA build of it.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[cpu,export,test,bench]"   # cpu: onnxruntime (gpu is the alternative)
echo "phasewatch installed in $(pwd)/.venv  (activate: . .venv/bin/activate)"
