#!/usr/bin/env bash
# Device check for the GPU path, on a machine with an NVIDIA GPU (PyTorch+CUDA may be there; no
# TensorRT needed). Installs onnxruntime-gpu ALONE (removing a CPU onnxruntime) plus cuda-python
# into the current venv (or ./.venv-gpu, made here, with --fresh), then:
#   1. the CUDA backend and the backend tests with the real CUDA bindings (the fake TensorRT
#      engine runs its ONNX on ONNX Runtime's CUDA provider, its buffers and stream are real);
#   2. bench/gpu_check.py: open on one thread, run/close/reopen 20 times from another, GPU and
#      host memory before/after, throughput per bundled model, FP16 vs FP32 agreement on the GPU.
# Usage: bench/gpu_check.sh [--fresh]      (writes its report to stdout; about 5 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fresh" ]; then
  python3 -m venv --system-site-packages .venv-gpu   # system site: a preinstalled PyTorch stays usable
  PY=.venv-gpu/bin/python
  "$PY" -m pip install --quiet -e ".[test]"
else
  PY=${PYTHON:-.venv/bin/python}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
# the two packages install the same module: never both (ONNX Runtime's install notes)
"$PY" -m pip uninstall --quiet -y onnxruntime onnxruntime-gpu >/dev/null 2>&1 || true
"$PY" -m pip install --quiet "onnxruntime-gpu[cuda,cudnn]>=1.21,<1.27" "cuda-bindings>=12.6,<13"
"$PY" - <<'PY'
import onnxruntime as ort
ort.preload_dlls()
print("onnxruntime", ort.__version__, ort.get_device(), ort.get_available_providers())
assert "CUDAExecutionProvider" in ort.get_available_providers(), "onnxruntime-gpu lacks CUDA"
PY
echo "== backend tests, real CUDA bindings (PHASEWATCH_REAL_CUDA=1)"
PHASEWATCH_REAL_CUDA=1 "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_backends.py tests/test_tensorrt_backend.py tests/test_build_engine.py tests/test_engine.py || status=$?
echo "== gpu_check.py"
"$PY" bench/gpu_check.py
exit "${status:-0}"
