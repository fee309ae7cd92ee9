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
# The real Triton server tests/test_triton_e2e.py runs (PyTriton's tritonserver, CPU): a venv of
# its own, since nvidia-pytriton needs NumPy < 2 (about 450 MB, under a minute to install).
python3 -m venv .venv-triton
.venv-triton/bin/python -m pip install --quiet "nvidia-pytriton==0.7.0" "onnxruntime>=1.18"
echo "phasewatch installed in $(pwd)/.venv  (activate: . .venv/bin/activate)"
