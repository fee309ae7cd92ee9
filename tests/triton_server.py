"""A real Triton Inference Server serving a ``phasewatch export-triton`` repository on the CPU.

Run with the Python of a virtual environment that has ``nvidia-pytriton`` and ``onnxruntime``
(``tests/triton_env.py`` says which); phasewatch itself is not imported, so this runs
where its NumPy 2 cannot (PyTriton needs NumPy < 2). PyTriton's ``tritonserver`` is NVIDIA's
server (the same HTTP/gRPC endpoints, model configs and dynamic batcher), but built with the
Python backend only; so each entry's ``model.onnx`` runs in ONNX Runtime inside a bound Python
callable, under the name, batch size, tensor names, dims and ``parameters`` of the entry's
``config.pbtxt`` (parsed with Triton's own ``ModelConfig`` protobuf), which is what a client sees.

usage: python triton_server.py REPO WORKSPACE HTTP_PORT GRPC_PORT METRICS_PORT
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from google.protobuf import text_format
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.models.model import Model
from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig, TritonSecurityConfig
from tritonclient.grpc import model_config_pb2


def read_entry(entry: Path) -> tuple[Any, Path]:
    """An entry's config (Triton's ``ModelConfig`` message) and its newest version's model.onnx."""
    config = text_format.Parse((entry / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    version = max(int(p.name) for p in entry.iterdir() if p.name.isdigit())
    return config, entry / str(version) / "model.onnx"


def onnx_callable(config: Any, onnx_path: Path) -> Callable[..., dict[str, np.ndarray]]:
    """The batched callable PyTriton binds: the entry's ONNX in ONNX Runtime."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name, output_name = config.input[0].name, config.output[0].name

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return {output_name: session.run(None, {input_name: inputs[input_name]})[0]}

    return infer


def add_parameters(parameters: dict[str, dict[str, str]]) -> None:
    """PyTriton writes each model's config.pbtxt itself and has no argument for ``parameters``:
    add each entry's to the ones it sets (its workspace path), so that the served config carries
    the identity the client checks."""
    generate = Model._get_triton_model_config

    def with_parameters(self: Model) -> object:
        generated = generate(self)
        generated.backend_parameters.update(parameters.get(self.model_name, {}))
        return generated

    Model._get_triton_model_config = with_parameters


def main(repo: Path, workspace: Path, http_port: int, grpc_port: int, metrics_port: int) -> None:
    entries = [read_entry(entry) for entry in sorted(repo.iterdir()) if (entry / "config.pbtxt").is_file()]
    add_parameters({c.name: {k: v.string_value for k, v in c.parameters.items()} for c, _ in entries})
    server = TritonConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, exit_on_error=True)
    # PyTriton puts the shared-memory protocol behind an access token by default; a lab server
    # that lets appliances on its host use shared memory leaves it open, as this one does.
    open_endpoints = [e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "shared-memory"]
    security = TritonSecurityConfig(restricted_endpoints=open_endpoints)
    with Triton(config=server, workspace=workspace, security_config=security) as triton:
        for config, onnx_path in entries:
            input_spec, output_spec = config.input[0], config.output[0]
            triton.bind(
                model_name=config.name,
                infer_func=onnx_callable(config, onnx_path),
                inputs=[Tensor(name=input_spec.name, dtype=np.float32, shape=tuple(input_spec.dims))],
                outputs=[Tensor(name=output_spec.name, dtype=np.float32, shape=tuple(output_spec.dims))],
                config=ModelConfig(max_batch_size=config.max_batch_size, batcher=DynamicBatcher(
                    max_queue_delay_microseconds=config.dynamic_batching.max_queue_delay_microseconds)),
                strict=True,
            )
        triton.serve()


if __name__ == "__main__":
    # The Python backend's stub is linked against libpython3.X by soname and would otherwise load
    # the system's, which may be another patch release than this interpreter's standard library
    # (Debian's 3.11.2 beside pyenv's 3.11.7 fails in multiprocessing); the server it starts
    # inherits this environment.
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
        filter(None, [sysconfig.get_config_var("LIBDIR"), os.environ.get("LD_LIBRARY_PATH")]))
    main(Path(sys.argv[1]), Path(sys.argv[2]), *map(int, sys.argv[3:6]))
