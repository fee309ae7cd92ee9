#!/usr/bin/env bash
# Device check for the GPU path, on a machine with an NVIDIA GPU (no TensorRT needed). Then:
#   1. the backend tests with the real CUDA bindings (PHASEWATCH_REAL_CUDA=1: the fake TensorRT
#      engine's buffers and stream are real; it runs its ONNX on ONNX Runtime's CUDA provider
#      where onnxruntime-gpu is installed, else on the CPU provider);
#   2. bench/gpu_check.py: the CUDA backend where onnxruntime-gpu is there; each bundled network in
#      PyTorch on the GPU (FP16 vs FP32, the GPU floor); open on one thread, run/close/reopen 20
#      times from another, GPU and host memory before/after.
# Usage: bench/gpu_check.sh [--fresh | --offline]      (writes its report to stdout; minutes)
#   (default)  the current venv (.venv): installs onnxruntime-gpu ALONE (removing a CPU
#              onnxruntime) and cuda-python from PyPI
#   --fresh    the same into ./.venv-gpu, made here over the system site (a preinstalled PyTorch)
#   --offline  no package index: the machine's python3 with its own PyTorch, onnxruntime and
#              cuda-bindings; the other dependencies as wheels in ./.whl (pip download them
#              elsewhere), this project installed without dependencies
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  --fresh)
    python3 -m venv --system-site-packages .venv-gpu
    PY=.venv-gpu/bin/python
    "$PY" -m pip install --quiet -e ".[test]" ;;
  --offline)
    PY=python3
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . ;;
  *)
    PY=${PYTHON:-.venv/bin/python} ;;
esac
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
if [ "${1:-}" != "--offline" ]; then
  # the two packages install the same module: never both (ONNX Runtime's install notes)
  "$PY" -m pip uninstall --quiet -y onnxruntime onnxruntime-gpu >/dev/null 2>&1 || true
  "$PY" -m pip install --quiet "onnxruntime-gpu[cuda,cudnn]>=1.21,<1.27" "cuda-bindings>=12.6,<13"
fi
"$PY" - <<'PY'
import importlib.metadata as md
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.get_available_providers())
for name in ("cuda-bindings", "torch", "numpy"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
PY
echo "== backend tests, real CUDA bindings (PHASEWATCH_REAL_CUDA=1)"
PHASEWATCH_REAL_CUDA=1 "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_backends.py tests/test_tensorrt_backend.py tests/test_build_engine.py tests/test_engine.py || status=$?
echo "== gpu_check.py"
"$PY" bench/gpu_check.py || status=$?
exit "${status:-0}"
