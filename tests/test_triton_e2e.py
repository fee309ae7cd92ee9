"""End to end against a real Triton Inference Server (``triton_serving.py``) on real micrographs.

The server serves the entry ``phasewatch export-triton`` writes for the bundled ``uhcs-carbide``
model. ``segment --backend triton`` must give the CPU backend's class maps (>= 99.9 % of
pixels; the same ONNX in ONNX Runtime on both sides, only the transport differs), over gRPC and
HTTP. The real daemon, fed a burst of real micrographs, loses the server mid-burst: no file
fails, ``/healthz`` names the backend fault, and once the server is back every file is done
exactly once. Every wait polls up to a deadline; no test asserts a duration.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_daemon_e2e import ServeProcess, wait_for
from triton_serving import TritonServer, free_port, server_python, tritonserver_binary

from phasewatch.app.cli import main
from phasewatch.backends.base import BackendError
from phasewatch.backends.onnxruntime import OrtBackend
from phasewatch.bundle import load_bundle, resolve_bundle_path

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc,http] is not installed")
from phasewatch.backends.triton.client import TritonBackend, TritonOptions  # noqa: E402

pytestmark = pytest.mark.slow
MODEL = "uhcs-carbide"
# Bundled model -> the folder of its real test micrographs in the shared data.
SEGMENTED = {MODEL: "uhcs/validate/images", "superalloy": "superalloy/test/images"}
AGREEMENT = 0.999
# The daemon's backoff grows to a minute between tries while the server is away.
RESUME_DEADLINE_S = 300.0
HUNG_TIMEOUT_S = 3.0  # how long a request waits on a server that stopped answering


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    server_python()  # skips first where there is no server environment
    work = tmp_path_factory.mktemp("triton")
    for model in SEGMENTED:
        assert main(["export-triton", model, str(work / "repo")]) == 0
    triton = TritonServer(work / "repo", work).start()
    yield triton
    triton.kill()


def segment(images: list[Path], model: str, out: Path, *backend: str) -> None:
    assert main(["segment", *map(str, images), "--model", model, "--out", str(out), *backend]) == 0


def class_map(out: Path, image: Path) -> np.ndarray:
    return cv2.imread(str(out / f"{image.stem}.classes.png"), cv2.IMREAD_UNCHANGED)


@pytest.mark.parametrize("shared_memory", [False, True], ids=["socket", "shared-memory"])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("model", list(SEGMENTED))
def test_real_micrographs_through_triton_get_the_cpu_backends_class_maps(
        server: TritonServer, shared_data: Path, tmp_path: Path, model: str, protocol: str,
        shared_memory: bool) -> None:
    images = sorted((shared_data / SEGMENTED[model]).glob("*.tif"))
    assert len(images) == 4
    segment(images, model, tmp_path / "cpu", "--backend", "cpu")
    segment(images, model, tmp_path / "triton", "--backend", "triton", "--triton-protocol", protocol,
            "--triton-url", server.remote(protocol).url, *["--triton-shared-memory"] * shared_memory)
    for image in images:
        cpu, triton = class_map(tmp_path / "cpu", image), class_map(tmp_path / "triton", image)
        assert cpu.shape == triton.shape == cv2.imread(str(image), cv2.IMREAD_UNCHANGED).shape[:2]
        same = int(np.sum(cpu == triton))
        transport = f"{protocol}{' shared memory' * shared_memory}"
        print(f"{model} {transport} {image.name}: {same} of {cpu.size} pixels as on the CPU backend")
        assert same >= AGREEMENT * cpu.size, image.name
        record = json.loads((tmp_path / "triton" / f"{image.stem}.json").read_text())
        assert record["backend"] == "triton"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_server_that_stops_answering_is_a_timeout_and_is_used_again_once_it_answers(
        server: TritonServer, protocol: str) -> None:
    bundle = load_bundle(MODEL)
    backend = TritonBackend(bundle, 8, dataclasses.replace(server.remote(protocol), timeout_s=HUNG_TIMEOUT_S))
    tiles = np.random.default_rng(0).random((2, 1, 256, 256), dtype=np.float32)
    expected = OrtBackend(bundle.onnx_path, "cpu").run(tiles)
    try:
        server.freeze(True)
        with pytest.raises(BackendError) as err:
            backend.run(tiles)
        print(f"{protocol} while the server is stopped: {err.value}")
        assert str(err.value).startswith(f"triton {protocol}://{server.remote(protocol).url} model '{MODEL}': ")
        server.freeze(False)
        assert np.array_equal(backend.run(tiles), expected)
    finally:
        server.freeze(False)
        backend.close()


def model_states(port: int) -> list[dict] | None:
    """The repository index of the server on ``port`` once its model has left 'loading', else None."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        index = client.get_model_repository_index()
    except Exception:  # not listening yet
        return None
    finally:
        client.close()
    return index if index and all(m.get("state") in ("READY", "UNAVAILABLE") for m in index) else None


def test_the_real_server_reads_the_entry_itself(tmp_path: Path) -> None:
    """``tritonserver --model-repository`` on export-triton's output, no PyTriton in between: the
    server parses and completes config.pbtxt and loads the model, or, built without the ONNX
    Runtime backend (PyTriton's is), stops exactly there and nowhere earlier."""
    assert main(["export-triton", MODEL, str(tmp_path / "repo")]) == 0
    port = free_port()
    command = [str(tritonserver_binary()), f"--model-repository={tmp_path / 'repo'}", f"--http-port={port}",
               f"--grpc-port={free_port()}", f"--metrics-port={free_port()}", "--exit-on-error=false"]
    with open(tmp_path / "tritonserver.log", "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        index = wait_for(lambda: model_states(port), "the server to finish loading the repository", 120.0)
    finally:
        server.kill()
        server.wait(timeout=60)
    print(f"repository index: {index}")
    assert [(m["name"], m["version"]) for m in index] == [(MODEL, "1")]
    if index[0]["state"] != "READY":
        assert index[0]["reason"] == ("Invalid argument: unable to find backend library for backend 'onnxruntime', "
                                      "try specifying runtime on the model configuration.")


class TritonServe(ServeProcess):
    """``phasewatch serve`` with the bundled model on the Triton server ``remote``."""

    def __init__(self, root: Path, remote: TritonOptions, shared_memory: bool) -> None:
        super().__init__(root, resolve_bundle_path(MODEL))
        self.backend_args = ("--backend", "triton", "--triton-url", remote.url)
        with self.config.open("a") as config:
            config.write(f"\n[model.triton]\nshared_memory = {str(shared_memory).lower()}\n")


def health(serve: ServeProcess) -> tuple[int, dict]:
    status, body = serve.request("/healthz")
    return status, json.loads(body)


def backend_fault(serve: ServeProcess) -> str | None:
    status, body = health(serve)
    return body["problems"].get("backend") if status == 503 else None


@pytest.mark.parametrize("shared_memory", [False, True], ids=["socket", "shared-memory"])
def test_the_daemon_loses_nothing_when_the_server_dies_mid_burst_and_resumes_when_it_is_back(
        server: TritonServer, shared_data: Path, tmp_path: Path, shared_memory: bool) -> None:
    sources = sorted((shared_data / "uhcs" / "train" / "images").glob("*.tif"))
    assert len(sources) >= 12
    serve = TritonServe(tmp_path, server.remote("grpc"), shared_memory)
    try:
        serve.start()
        # The daemon segments every decoded file in one go, so a burst that all arrived before
        # the kill may be past inference already: half arrives before, half after.
        half = len(sources) // 2
        for source in sources[:half]:
            shutil.copyfile(source, serve.watch / source.name)
        wait_for(lambda: serve.get_json("/api/status")["done"] >= 2, "the first results")
        server.kill()
        done_at_kill = sum(r["state"] == "done" for r in serve.rows())
        for source in sources[half:]:
            shutil.copyfile(source, serve.watch / source.name)

        fault = wait_for(lambda: backend_fault(serve), "/healthz to name the backend fault")
        assert fault.startswith(f"triton: triton grpc://{server.remote('grpc').url} model '{MODEL}': "), fault
        assert not any(r["state"] == "failed" for r in serve.rows())
        print(f"done at the kill: {done_at_kill} of the first {half}; /healthz while down: {fault}")

        server.start()
        images = wait_for(lambda: serve.idle_with(len(sources)), "every file to be finished after the restart",
                          RESUME_DEADLINE_S)
        assert Counter(i["file"] for i in images) == Counter(s.name for s in sources)  # each exactly once
        assert all(i["state"] == "done" and i["error"] is None for i in images), images
        rows = serve.rows()
        assert len(rows) == len(sources) and all(r["state"] == "done" for r in rows)
        for row in rows:
            record = json.loads(Path(json.loads(row["outputs"])["json"]).read_text())
            assert record["backend"] == "triton"
        assert health(serve) == (200, {"ok": True, "reasons": [], "problems": {}})
        assert serve.terminate() == 0
    finally:
        serve.stop_if_running()
