"""The GPU device check's measurements (run by bench/gpu_check.sh, which installs what it needs).

On a GPU machine with cuda-python but no TensorRT:
  * per bundled model, where onnxruntime-gpu is installed: the CUDA backend's throughput on tile
    batches, and FP16 vs FP32 agreement computed on the GPU (model.fp16.onnx and model.onnx both
    on the CUDA provider, the gate's numbers on the bundle's reference tiles);
  * per bundled model, where PyTorch with CUDA is installed: the network rebuilt from the bundle
    by the export stage's own code, FP16 vs FP32 on the GPU, FP32 on the GPU vs the ONNX on the
    CPU, and one whole-field pass (the GPU floor) in FP32 and FP16;
  * reloads: each backend (the CUDA backend, and the native TensorRT backend around the test
    fake's engine, which runs on the CUDA provider with real buffers and stream) opened on one
    thread, then run, closed and reopened 20 times from another; GPU memory (cudaMemGetInfo) and
    host memory (RSS) before and after. Growth of more than a few MB over 20 reloads is a leak.
Prints one line per measurement; exits 1 if a backend fails or memory grows past LEAK_MB.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from phasewatch.backends.base import Backend
from phasewatch.backends.onnxruntime import OrtBackend, preload_gpu_libraries
from phasewatch.backends.registry import open_backend
from phasewatch.bundle import Bundle, bundled_model_names, load_bundle
from phasewatch.export.engine_gate import compare_logits, load_reference_tiles

RELOADS = 20
LEAK_MB = 64.0  # allocator caches settle within the first reloads; a leak grows with each
FAKES = Path(__file__).resolve().parent.parent / "tests" / "fakes"


def gpu_used_mb() -> float:
    from cuda.bindings import runtime as cudart

    cudart.cudaSetDevice(0)
    error, free, total = cudart.cudaMemGetInfo()
    if error != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"cudaMemGetInfo failed: {error}")
    return (total - free) / 2**20


def host_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def on_thread(work: Callable[[], Any]) -> Any:
    """``work()`` on a new thread; its result, or its exception raised here."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:  # handed back to the caller
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def throughput(bundle: Bundle, backend: Backend, batch: int = 8, runs: int = 20) -> str:
    tiles = np.random.default_rng(0).normal(0, 1, (batch, bundle.channels, bundle.tile, bundle.tile))
    tiles = tiles.astype(np.float32)
    for _ in range(3):  # warm-up: cuDNN's algorithm search, allocator growth
        backend.run(tiles)
    start = time.perf_counter()
    for _ in range(runs):
        backend.run(tiles)
    seconds = time.perf_counter() - start
    return (f"{runs * batch / seconds:.1f} tiles/s, "
            f"{runs * batch * bundle.tile**2 / seconds / 1e6:.1f} Mpx/s ({bundle.tile}x{bundle.tile}, batch {batch})")


def fp16_agreement(bundle: Bundle) -> str:
    """FP16 vs FP32 ONNX, both on the CUDA provider: FP16 arithmetic, unlike the CPU export gate."""
    tiles = load_reference_tiles(bundle)
    fp32 = OrtBackend(bundle.onnx_path, "cuda", 8).run(tiles)
    fp16 = OrtBackend(bundle.onnx_fp16_path, "cuda", 8).run(tiles)
    result = compare_logits(fp32, fp16)
    verdict = "passes" if result.passed else "FAILS"
    return f"{verdict} the gate: {result.reason()}, max |logit diff| {result.max_abs_logit_diff:.4f}"


def reloads(name: str, open_: Callable[[], Backend], tiles: np.ndarray) -> bool:
    """Open on one thread, then run/close/reopen RELOADS times from another; memory before/after."""
    backend = on_thread(open_)
    backend.run(tiles)  # first run: allocator and kernel caches settle before the baseline
    gpu0, host0 = gpu_used_mb(), host_rss_mb()

    def cycle() -> Backend:
        current = backend
        for _ in range(RELOADS):
            current.run(tiles)
            current.close()
            current = open_()
        return current

    backend = on_thread(cycle)
    backend.close()
    gpu1, host1 = gpu_used_mb(), host_rss_mb()
    grew = max(gpu1 - gpu0, host1 - host0)
    print(f"reloads {name}: {RELOADS} x run/close/open from another thread: GPU {gpu0:.0f} -> {gpu1:.0f} MB, "
          f"host RSS {host0:.0f} -> {host1:.0f} MB {'OK' if grew <= LEAK_MB else 'LEAK?'}")
    return grew <= LEAK_MB


def native_backend_opener(bundle: Bundle, workdir: Path) -> Callable[[], Backend]:
    """The native TensorRT backend around the test fake's engine on the real CUDA (no TensorRT
    here): the engine is built by build-engine, with the fake, for a copy of the bundle, into an
    engines folder of the check's own (not the machine's /var/lib/phasewatch)."""
    import cuda.bindings.runtime  # noqa: F401 - the real one, before the fakes' folder

    sys.path.insert(0, str(FAKES))
    from phasewatch.backends.tensorrt import open_tensorrt_backend
    from phasewatch.export.build_engine import build_engine

    copy = load_bundle(shutil.copytree(bundle.path, workdir / bundle.name))
    engines = workdir / "engines"
    build_engine(copy, max_batch=8, max_side=2 * copy.tile,  # a multiple of any spatial_multiple
                 progress=lambda message: print(f"  build-engine (fake TensorRT): {message}"), engines=engines)
    return lambda: open_tensorrt_backend(copy, 8, engines)


def ort_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def torch_on_gpu(bundle: Bundle, device: str = "cuda") -> None:
    """The bundle's network rebuilt in PyTorch (the export stage's own architecture and the
    bundle's weights) on the GPU: FP16 arithmetic against FP32 on the gate's reference tiles,
    FP32 on the GPU against the bundle's ONNX on the CPU, and one pass over a whole 1024 x 1024
    field (the GPU floor) in FP32 and FP16. Needs no ONNX Runtime GPU build."""
    import torch

    from phasewatch.export.finetune import load_parent_weights
    from phasewatch.export.models import build_model

    model = build_model(bundle.architecture, bundle.channels, bundle.num_classes, **bundle.manifest["model_kwargs"])
    load_parent_weights(model, bundle)
    model = model.eval().to(device)
    tiles = load_reference_tiles(bundle)
    with torch.inference_mode():
        fp32 = model(torch.from_numpy(tiles).to(device)).float().cpu().numpy()
        fp16 = model.half()(torch.from_numpy(tiles).to(device).half()).float().cpu().numpy()
        model.float()
    cpu = OrtBackend(bundle.onnx_path, "cpu", 8).run(tiles)
    for label, reference, candidate in (("FP16 vs FP32 on the GPU (PyTorch)", fp32, fp16),
                                        ("FP32 on the GPU (PyTorch) vs ONNX on the CPU", cpu, fp32)):
        result = compare_logits(reference, candidate)
        verdict = "passes" if result.passed else "FAILS"
        print(f"{bundle.name}: {label} {verdict} the gate: {result.reason()}, "
              f"max |logit diff| {result.max_abs_logit_diff:.4f}")
    field = torch.randn(1, bundle.channels, 1024, 1024, device=device)
    for label, dtype in (("FP32", torch.float32), ("FP16", torch.float16)):
        net, x = model.to(dtype), field.to(dtype)
        with torch.inference_mode():
            for _ in range(3):
                net(x)
            synchronize(device)
            start = time.perf_counter()
            for _ in range(20):
                net(x)
            synchronize(device)
        print(f"{bundle.name}: one pass over a 1024 x 1024 field on the GPU, PyTorch {label}: "
              f"{(time.perf_counter() - start) / 20 * 1e3:.2f} ms")
    model.float()


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    ok = True
    cuda_ort = ort_has_cuda()
    if cuda_ort:
        preload_gpu_libraries("CUDAExecutionProvider")
    else:
        print("CUDA backend: skipped, this onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu not installed)")
    for name in bundled_model_names():
        bundle = load_bundle(name)
        if cuda_ort:
            backend = open_backend(bundle, "cuda", batch=8)
            try:
                print(f"{name}: CUDA backend {throughput(bundle, backend)}")
            finally:
                backend.close()
            print(f"{name}: FP16 vs FP32 on the GPU (ONNX Runtime) {fp16_agreement(bundle)}")
        torch_on_gpu(bundle)
    bundle = load_bundle(bundled_model_names()[0])
    tiles = load_reference_tiles(bundle)
    if cuda_ort:
        ok &= reloads(f"cuda ({bundle.name})", lambda: open_backend(bundle, "cuda", batch=8), tiles)
    with tempfile.TemporaryDirectory() as workdir:
        ok &= reloads(f"tensorrt, fake engine on real CUDA ({bundle.name})",
                      native_backend_opener(bundle, Path(workdir)), tiles)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
