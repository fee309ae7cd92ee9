"""The ``triton`` backend: tile batches go to an NVIDIA Triton Inference Server (``tritonclient``).

Only the network runs on the server; tiling, stitching, measurement, statistics and the page stay
on the appliance, so a result is the same whichever backend ran it. Opening checks the server, the
model and the model's identity: the entry ``phasewatch export-triton`` wrote carries the bundle's
name and ONNX sha256 in its config's ``parameters`` (``triton_repository.identity``), and a
served model that lacks them or names another ONNX is refused, since Triton serves whatever file
is in its repository and the appliance measures with its own bundle's classes and normalisation.

Every failure of a request (the server gone, a timeout, a model unloaded) is a one-line
:class:`BackendError`: ``segment`` reports it, and the daemon keeps the files queued, shows the
fault on ``/healthz`` and retries (``stages.TransientFault``). The gRPC channel and the HTTP
client both reconnect by themselves, so a server that comes back is used again without a restart.

Its settings are the ``[model.triton]`` table (:class:`TritonOptions`). With ``shared_memory``
(a server on the same host) tiles and logits go through system
shared memory (``triton_shm.py``) instead of the socket; one request at a time uses the regions.

Each thread gets its own client: the HTTP client runs on gevent, whose sockets belong to the
thread that made them ("Cannot switch to a different thread" from another), and the daemon opens
the model on one thread and runs it on its inference thread.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from phasewatch.backends.base import Backend, BackendError, Table, options_from_table
from phasewatch.backends.triton.repository import MAX_SIDE_KEY, MODEL_KEY, ONNX_KEY
from phasewatch.backends.triton.shm import Region
from phasewatch.bundle import Bundle
from phasewatch.errors import one_line

DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
PROTOCOLS = tuple(DEFAULT_PORTS)


@dataclass(frozen=True)
class TritonOptions:
    """The ``[model.triton]`` table: where the backend finds its server and model."""

    url: str = ""  # host:port; empty: this host on the protocol's default port
    model: str = ""  # the server's model name; empty: the bundle's name
    protocol: str = "grpc"  # grpc or http
    timeout_s: float = 60.0  # one request, connection included
    shared_memory: bool = False  # tiles and logits through system shared memory (server on this host)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise BackendError(f"[model.triton] protocol: must be one of {', '.join(PROTOCOLS)}, "
                               f"got {self.protocol!r}")
        if not self.timeout_s > 0:
            raise BackendError(f"[model.triton] timeout_s: must be > 0, got {self.timeout_s}")

    @classmethod
    def from_table(cls, table: Table) -> TritonOptions:
        return options_from_table(cls, "triton", table)


def server_url(options: TritonOptions) -> str:
    """``options.url``, or this host on the protocol's default port."""
    return options.url or f"localhost:{DEFAULT_PORTS[options.protocol]}"


def open_triton(bundle: Bundle, batch: int, threads: int | None, options: TritonOptions) -> Backend:
    # threads is not used: the server runs the network.
    return TritonBackend(bundle, batch, options)


def client_errors() -> tuple[type[BaseException], ...]:
    """What a tritonclient call raises when the server fails it or cannot be reached: the
    server's own errors, and the socket errors the HTTP client lets through."""
    from tritonclient.utils import InferenceServerException
    from tritonclient.utils.shared_memory import SharedMemoryException

    return InferenceServerException, SharedMemoryException, OSError


def parameter(config: dict[str, Any], key: str) -> str:
    """A string parameter of a model config as either protocol returns it ('' if absent)."""
    value = config.get("parameters", {}).get(key, {})
    return str(value.get("string_value", "")) if isinstance(value, dict) else ""


def check_identity(config: dict[str, Any], bundle: Bundle, where: str) -> None:
    """Refuse a served model that is not the bundle's network (module doc)."""
    served = parameter(config, ONNX_KEY)
    if not served:
        raise BackendError(f"{where}: the model config has no '{ONNX_KEY}' parameter, so it cannot be checked "
                           f"against {bundle.name} (write the entry with: phasewatch export-triton)")
    if served != bundle.onnx_sha256 or parameter(config, MODEL_KEY) != bundle.name:
        raise BackendError(f"{where}: serves {parameter(config, MODEL_KEY) or '?'} with ONNX {served[:12]}, "
                           f"not bundle {bundle.name} with ONNX {bundle.onnx_sha256[:12]}")


class Tensors(NamedTuple):
    """The served model's input and output names, and whether it takes any height and width."""

    input: str
    output: str
    any_size: bool


def check_tensors(config: dict[str, Any], bundle: Bundle, where: str) -> Tensors:
    """Check the served model's one input and one output against the bundle."""
    inputs, outputs = config.get("input", []), config.get("output", [])
    if len(inputs) != 1 or len(outputs) != 1:
        raise BackendError(f"{where}: has {len(inputs)} input(s) and {len(outputs)} output(s), "
                           f"a segmentation network has one of each")
    dims_in, dims_out = ([int(d) for d in t.get("dims", [])] for t in (inputs[0], outputs[0]))
    if len(dims_in) != 3 or dims_in[0] != bundle.input_channels or dims_out[:1] != [bundle.num_classes]:
        raise BackendError(f"{where}: input dims {dims_in} and output dims {dims_out} do not fit "
                           f"{bundle.input_channels} channel(s) in and {bundle.num_classes} classes out")
    if int(config.get("max_batch_size", 0)) < 1:
        raise BackendError(f"{where}: max_batch_size is 0; the appliance sends batches (set it >= 1)")
    spatial = dims_in[1:]
    if spatial != [-1, -1] and spatial != [bundle.tile, bundle.tile]:
        raise BackendError(f"{where}: takes {spatial[0]} x {spatial[1]} tiles, the bundle's tile is {bundle.tile}")
    any_size = spatial == [-1, -1] and bool(bundle.spatial_multiple)
    return Tensors(str(inputs[0]["name"]), str(outputs[0]["name"]), any_size)


class TritonBackend:
    """One model on one Triton server through one client (gRPC or HTTP)."""

    name = "triton"

    def __init__(self, bundle: Bundle, batch: int, options: TritonOptions) -> None:
        self.protocol = options.protocol
        self.url = server_url(options)
        self.model = options.model or bundle.name
        self.timeout_s = options.timeout_s
        self.where = f"triton {self.protocol}://{self.url} model '{self.model}'"
        self.module = importlib.import_module(f"tritonclient.{self.protocol}")
        self._local = threading.local()
        self._clients: list[Any] = []
        self.regions = (Region("in"), Region("out")) if options.shared_memory else None
        self._regions_lock = threading.Lock()
        self.classes = bundle.num_classes
        try:
            config = self._config()
        except client_errors() as exc:
            raise BackendError(f"{self.where}: {one_line(exc)}") from exc
        check_identity(config, bundle, self.where)
        self.tensors = check_tensors(config, bundle, self.where)
        self.any_size = self.tensors.any_size
        self.max_side = int(parameter(config, MAX_SIDE_KEY) or 0)  # 0: no limit
        self.max_batch = max(1, min(int(batch), int(config["max_batch_size"])))

    def _client(self) -> Any:
        """This thread's client (module doc), made on first use."""
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "http":
                client = self.module.InferenceServerClient(
                    self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s)
            else:
                client = self.module.InferenceServerClient(self.url)
            self._local.client = client
            self._clients.append(client)
        return client

    def _timeout(self) -> dict[str, float]:
        # gRPC takes a deadline per call; the HTTP client's timeouts were set when it was made.
        return {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}

    def _config(self) -> dict[str, Any]:
        client = self._client()
        if not client.is_server_live(**self._timeout()):
            raise BackendError(f"{self.where}: the server is not live")
        if not client.is_model_ready(self.model, **self._timeout()):
            raise BackendError(f"{self.where}: the model is not loaded and ready on the server")
        if self.protocol == "grpc":
            return dict(client.get_model_config(self.model, as_json=True, **self._timeout())["config"])
        return dict(client.get_model_config(self.model))

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        try:
            chunks = [self._infer(batch[i : i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
        except client_errors() as exc:
            raise BackendError(f"{self.where}: {one_line(exc)}") from exc
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def _infer(self, chunk: np.ndarray) -> np.ndarray:
        tensor = self.module.InferInput(self.tensors.input, list(chunk.shape), "FP32")
        wanted = self.module.InferRequestedOutput(self.tensors.output)
        client = self._client()
        if self.regions is not None:
            with self._regions_lock:
                return self._infer_shared(client, tensor, wanted, chunk)
        tensor.set_data_from_numpy(chunk)
        result = client.infer(self.model, [tensor], outputs=[wanted], **self._timeout())
        logits = result.as_numpy(self.tensors.output)
        if logits is None or logits.shape[0] != len(chunk) or logits.shape[2:] != chunk.shape[2:]:
            shape = None if logits is None else list(logits.shape)
            raise BackendError(f"{self.where}: answered {shape} for a batch of {list(chunk.shape)}")
        return np.asarray(logits, dtype=np.float32)

    def _infer_shared(self, client: Any, tensor: Any, wanted: Any, chunk: np.ndarray) -> np.ndarray:
        assert self.regions is not None
        inputs, outputs = self.regions
        shape = (len(chunk), self.classes, *chunk.shape[2:])
        out_bytes = int(np.prod(shape)) * 4
        try:
            tensor.set_shared_memory(inputs.fit(client, chunk.nbytes), chunk.nbytes)
            inputs.write(chunk)
            wanted.set_shared_memory(outputs.fit(client, out_bytes), out_bytes)
            client.infer(self.model, [tensor], outputs=[wanted], **self._timeout())
            return outputs.read(shape)
        except client_errors():
            # The server may have restarted and forgotten the regions: register anew next time.
            for region in self.regions:
                region.drop(client)
            raise

    def close(self) -> None:
        if self.regions is not None:
            for region in self.regions:
                region.drop(self._client())
        for client in self._clients:
            client.close()
        self._clients.clear()

