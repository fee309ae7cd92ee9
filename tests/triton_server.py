"""A real Triton Inference Server serving one ``phasewatch export-triton`` entry on the CPU.

Run with the Python of a virtual environment that has ``nvidia-pytriton`` and ``onnxruntime``
(``tests/triton_env.py`` says which); phasewatch itself is not imported, so this runs
where its NumPy 2 cannot (PyTriton needs NumPy < 2). PyTriton's ``tritonserver`` is NVIDIA's
server (the same HTTP/gRPC endpoints, model configs and dynamic batcher), but built with the
Python backend only; so the entry's ``model.onnx`` runs in ONNX Runtime inside the bound Python
callable, under the name, batch size, tensor names, dims and ``parameters`` of the entry's
``config.pbtxt`` (parsed with Triton's own ``ModelConfig`` protobuf), which is what a client sees.

usage: python triton_server.py ENTRY_DIR WORKSPACE HTTP_PORT GRPC_PORT METRICS_PORT
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import numpy as np
import onnxruntime as ort
from google.protobuf import text_format
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.models.model import Model
from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig, TritonSecurityConfig
from tritonclient.grpc import model_config_pb2


def main(entry: Path, workspace: Path, http_port: int, grpc_port: int, metrics_port: int) -> None:
    config = text_format.Parse((entry / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    version = max(int(p.name) for p in entry.iterdir() if p.name.isdigit())
    session = ort.InferenceSession(str(entry / str(version) / "model.onnx"), providers=["CPUExecutionProvider"])
    input_spec, output_spec = config.input[0], config.output[0]

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return {output_spec.name: session.run(None, {input_spec.name: inputs[input_spec.name]})[0]}

    # PyTriton writes the model's config.pbtxt itself and has no argument for ``parameters``:
    # add the entry's to the ones it sets (its workspace path), so that the served config
    # carries the identity the client checks.
    generate = Model._get_triton_model_config

    def with_parameters(self: Model) -> object:
        generated = generate(self)
        generated.backend_parameters.update({k: v.string_value for k, v in config.parameters.items()})
        return generated

    Model._get_triton_model_config = with_parameters
    server = TritonConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, exit_on_error=True)
    # PyTriton puts the shared-memory protocol behind an access token by default; a lab server
    # that lets appliances on its host use shared memory leaves it open, as this one does.
    open_endpoints = [e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "shared-memory"]
    security = TritonSecurityConfig(restricted_endpoints=open_endpoints)
    with Triton(config=server, workspace=workspace, security_config=security) as triton:
        triton.bind(
            model_name=config.name,
            infer_func=infer,
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
