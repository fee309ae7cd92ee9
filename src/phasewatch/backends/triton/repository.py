"""A Triton Inference Server model repository entry for a bundle (``phasewatch export-triton``).

``REPO/NAME/config.pbtxt`` (the platform, the bundle's input and output names, data types and
shapes, dynamic batching) and ``REPO/NAME/VERSION/`` holding the network (``model.onnx`` for
ONNX Runtime, or a gated FP16 TensorRT engine as ``model.plan``) with the bundle's
``manifest.json`` beside it. The config's ``parameters`` carry the bundle's identity (name,
ONNX sha256, export time), which is what the ``triton`` backend reads back from the server to
check that it talks to the model its own bundle describes: Triton serves whatever file lies in
the folder, and a model name alone does not say which training run it came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from phasewatch.atomic_files import write_bytes_atomic, write_json_atomic
from phasewatch.bundle import Bundle, sha256_file
from phasewatch.errors import PhasewatchError, one_line

PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
# Requests from several microscopes wait this long for each other to fill a batch: a
# tile batch takes tens of milliseconds on a GPU, so 2 ms costs little and merges clients.
DEFAULT_QUEUE_DELAY_US = 2000
# The identity parameters (keys in config.pbtxt's ``parameters``) the client checks.
MODEL_KEY = "phasewatch_model"
ONNX_KEY = "phasewatch_onnx_sha256"
EXPORTED_KEY = "phasewatch_exported_at"
ENGINE_KEY = "phasewatch_engine_sha256"
# An engine built with a spatial profile runs sides up to this; the client plans no larger tiles.
MAX_SIDE_KEY = "phasewatch_max_side"


class TritonExportError(PhasewatchError):
    """A repository entry that cannot be written; the message is one line."""


class Network(NamedTuple):
    """The file Triton runs and what the config says about it."""

    source: Path
    file_name: str  # Triton's default model file name for the platform
    platform: str  # a key of PLATFORMS
    max_batch: int
    side: int  # 0: any height and width; else the one tile side the network takes
    extra: dict[str, str]  # more identity parameters


def tensor_names(onnx_path: Path) -> tuple[str, str]:
    """The network's input and output tensor names, from the ONNX itself (older manifests do
    not record them; a TensorRT engine keeps the names of the ONNX it was built from)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own, mostly multi-line, exception types
        raise TritonExportError(f"{onnx_path}: cannot read the network's tensor names: {one_line(exc)}") from exc
    return session.get_inputs()[0].name, session.get_outputs()[0].name


def identity(bundle: Bundle) -> dict[str, str]:
    """The parameters naming the bundle a served model must come from."""
    return {MODEL_KEY: bundle.name, ONNX_KEY: bundle.onnx_sha256,
            EXPORTED_KEY: str(bundle.manifest.get("exported_at", ""))}


def onnx_network(bundle: Bundle, max_batch: int) -> Network:
    """The bundle's FP32 ONNX for Triton's ONNX Runtime backend."""
    side = 0 if bundle.spatial_multiple else bundle.tile
    return Network(bundle.onnx_path, "model.onnx", "onnxruntime", max_batch, side, {})


def engine_network(bundle: Bundle, engine: Path) -> Network:
    """A TensorRT engine that ``phasewatch build-engine`` built and gated for ``bundle``: its
    sidecar must hold the gate's numbers and name the bundle's FP16 ONNX and the engine's bytes.
    The server must run the GPU and TensorRT version the sidecar names (an engine runs nowhere
    else), so they go into the parameters too."""
    from phasewatch.backends.tensorrt import read_sidecar, sidecar_path

    sidecar = read_sidecar(sidecar_path(engine))
    if sidecar is None or not sidecar.get("gate"):
        raise TritonExportError(f"{engine}: no sidecar with gate results (build it with: "
                                f"phasewatch build-engine {bundle.path})")
    if not engine.is_file() or sha256_file(engine) != sidecar.get("engine_sha256"):
        raise TritonExportError(f"{engine}: missing or not the file its sidecar's engine_sha256 names")
    if not bundle.onnx_fp16_path.is_file() or sha256_file(bundle.onnx_fp16_path) != sidecar.get("onnx_sha256"):
        raise TritonExportError(f"{engine}: built from another FP16 ONNX than {bundle.onnx_fp16_path}")
    sides = sidecar.get("side", {})
    side = int(sides["min"]) if sides.get("min") == sides.get("max") else 0
    extra = {ENGINE_KEY: str(sidecar["engine_sha256"]), "phasewatch_gpu": str(sidecar.get("gpu", "")),
             "phasewatch_tensorrt": str(sidecar.get("tensorrt", ""))}
    if not side:
        extra[MAX_SIDE_KEY] = str(int(sides["max"]))
    return Network(engine, "model.plan", "tensorrt", int(sidecar.get("batch", {}).get("max", 1)), side, extra)


def quoted(text: str) -> str:
    """A protobuf text-format string literal: JSON's quoting is a subset of its C-style escapes,
    and UTF-8 stays as it is."""
    return json.dumps(text, ensure_ascii=False)


INSTANCE_KINDS = {"auto": "KIND_AUTO", "gpu": "KIND_GPU", "cpu": "KIND_CPU"}


class Serving(NamedTuple):
    """How Triton runs the model: ``instances`` copies of it (per GPU with ``gpu``; ``auto`` is
    each GPU where there is one, else the CPU), and the batch sizes dynamic batching waits to
    fill (empty: ``max_batch`` alone). Dynamic batching merges only requests of one shape: fields
    of one camera and size share one; the client does not pad other sizes (docs/SCALE_OUT.md)."""

    instances: int = 1
    kind: str = "auto"  # a key of INSTANCE_KINDS
    preferred_batch: tuple[int, ...] = ()
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US

    def check(self, max_batch: int) -> None:
        if self.instances < 1:
            raise TritonExportError(f"--instances {self.instances}: must be at least 1")
        if self.kind not in INSTANCE_KINDS:
            raise TritonExportError(f"--instance-kind {self.kind}: one of {', '.join(INSTANCE_KINDS)}")
        wrong = [b for b in self.preferred_batch if not 1 <= b <= max_batch]
        if wrong:
            raise TritonExportError(f"--preferred-batch {wrong[0]}: must be within 1..{max_batch} (the max batch)")


DEFAULT_SERVING = Serving()


def config_text(bundle: Bundle, network: Network, name: str, serving: Serving = DEFAULT_SERVING) -> str:
    """``config.pbtxt`` (protobuf text format of Triton's ``ModelConfig``) for ``network``."""
    serving.check(network.max_batch)
    input_name, output_name = tensor_names(bundle.onnx_path)
    spatial = [network.side, network.side] if network.side else [-1, -1]
    input_dims = ", ".join(map(str, [bundle.input_channels, *spatial]))
    output_dims = ", ".join(map(str, [bundle.num_classes, *spatial]))
    parameters = {**identity(bundle), **network.extra}
    preferred = ", ".join(map(str, sorted(set(serving.preferred_batch)) or [network.max_batch]))
    lines = [
        f"name: {quoted(name)}",
        f"platform: {quoted(PLATFORMS[network.platform])}",
        f"max_batch_size: {network.max_batch}",
        f"input [ {{ name: {quoted(input_name)} data_type: TYPE_FP32 dims: [ {input_dims} ] }} ]",
        f"output [ {{ name: {quoted(output_name)} data_type: TYPE_FP32 dims: [ {output_dims} ] }} ]",
        f"instance_group [ {{ count: {serving.instances} kind: {INSTANCE_KINDS[serving.kind]} }} ]",
        f"dynamic_batching {{ preferred_batch_size: [ {preferred} ] "
        f"max_queue_delay_microseconds: {serving.queue_delay_us} }}",
        *(f"parameters {{ key: {quoted(key)} value {{ string_value: {quoted(value)} }} }}"
          for key, value in parameters.items()),
    ]
    return "\n".join(lines) + "\n"


def write_entry(bundle: Bundle, network: Network, repo: Path, name: str = "", version: int = 1,
                serving: Serving = DEFAULT_SERVING) -> Path:
    """Write ``repo/NAME/config.pbtxt`` and ``repo/NAME/VERSION/`` (the network and the bundle's
    manifest); NAME defaults to the bundle's. Returns the entry's folder."""
    name = name or bundle.name
    entry = repo / name
    version_dir = entry / str(version)
    try:
        version_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(version_dir / network.file_name, network.source.read_bytes())
        write_json_atomic(version_dir / "manifest.json", bundle.manifest)
        write_bytes_atomic(entry / "config.pbtxt", config_text(bundle, network, name, serving).encode())
    except OSError as exc:
        raise TritonExportError(f"{entry}: cannot write the repository entry: {one_line(exc)}") from exc
    return entry

