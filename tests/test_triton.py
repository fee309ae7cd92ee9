"""The ``triton`` backend's pieces that need no server: the repository entry ``export-triton``
writes (parsed with Triton's own ``ModelConfig`` protobuf), the checks of a served model's
config, the configuration keys, and what a client says when nothing listens at the address.
The real server is in ``test_triton_e2e.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from onnx_graphs import make_bundle
from test_runtime_without_torch import BLOCK
from triton_serving import free_port

from phasewatch.app.cli import main
from phasewatch.backends.base import BackendError
from phasewatch.backends.registry import BACKENDS, choose_backend
from phasewatch.backends.triton.repository import (
    ENGINE_KEY,
    MAX_SIDE_KEY,
    MODEL_KEY,
    ONNX_KEY,
    TritonExportError,
    engine_network,
)
from phasewatch.bundle import load_bundle, sha256_file
from phasewatch.service.config import ConfigError, load_config

tritonclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from phasewatch.backends.triton.client import TritonOptions, check_identity, check_tensors  # noqa: E402


def read_entry(entry: Path):
    """The entry's config.pbtxt parsed as Triton's own ModelConfig message (what the server reads)."""
    return text_format.Parse((entry / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def served_config(bundle, **changes):
    """A model config as the server reports it (JSON form), for ``bundle`` unless changed."""
    config = {
        "max_batch_size": 8,
        "input": [{"name": "input", "dims": [str(bundle.input_channels), "-1", "-1"]}],
        "output": [{"name": "logits", "dims": [str(bundle.num_classes), "-1", "-1"]}],
        "parameters": {MODEL_KEY: {"string_value": bundle.name}, ONNX_KEY: {"string_value": bundle.onnx_sha256}},
    }
    return {**config, **changes}


def test_export_triton_writes_an_onnx_runtime_entry_with_the_bundles_identity(tmp_path, capsys):
    bundle = load_bundle("uhcs-carbide")
    assert main(["export-triton", "uhcs-carbide", str(tmp_path / "repo")]) == 0
    entry = tmp_path / "repo" / "uhcs-carbide"
    assert str(entry) in capsys.readouterr().out
    config = read_entry(entry)
    assert (config.name, config.platform, config.max_batch_size) == ("uhcs-carbide", "onnxruntime_onnx", 8)
    assert [(t.name, list(t.dims)) for t in config.input] == [("input", [1, -1, -1])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("logits", [4, -1, -1])]
    assert config.HasField("dynamic_batching")
    assert {k: v.string_value for k, v in config.parameters.items()} == {
        MODEL_KEY: "uhcs-carbide", ONNX_KEY: bundle.onnx_sha256,
        "phasewatch_exported_at": bundle.manifest["exported_at"]}
    assert sha256_file(entry / "1" / "model.onnx") == bundle.onnx_sha256
    assert json.loads((entry / "1" / "manifest.json").read_text()) == bundle.manifest


def test_export_triton_needs_no_torch(tmp_path):
    script = BLOCK + ("from phasewatch.app.cli import main\n"
                      f"sys.exit(main(['export-triton', 'superalloy', r'{tmp_path}']))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "superalloy" / "1" / "model.onnx").is_file()


def test_a_fixed_tile_bundle_gets_fixed_dims_and_the_name_version_and_batch_asked_for(tmp_path):
    bundle = load_bundle(make_bundle(tmp_path / "tiny", in_channels=3, num_classes=5, tile=64))
    assert main(["export-triton", str(bundle.path), str(tmp_path / "repo"), "--name", "lab-model",
                 "--version", "7", "--max-batch", "16"]) == 0
    config = read_entry(tmp_path / "repo" / "lab-model")
    assert (config.name, config.max_batch_size) == ("lab-model", 16)
    assert list(config.input[0].dims) == [3, 64, 64] and list(config.output[0].dims) == [5, 64, 64]
    assert (tmp_path / "repo" / "lab-model" / "7" / "model.onnx").is_file()
    assert config.parameters[MODEL_KEY].string_value == "tiny"


def gated_engine(bundle_dir: Path, gate: dict | None = None) -> Path:
    """An engine file and the sidecar build-engine writes beside it (the bytes are not a real
    engine: only the export's bookkeeping is under test here, and no server loads it)."""
    (bundle_dir / "model.fp16.onnx").write_bytes((bundle_dir / "model.onnx").read_bytes())
    engine = bundle_dir / "engines" / "gpu.sm89.trt10.abc.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"engine bytes")
    sidecar = {"engine_sha256": sha256_file(engine), "onnx_sha256": sha256_file(bundle_dir / "model.fp16.onnx"),
               "gpu": "NVIDIA L4", "tensorrt": "10.3.0", "batch": {"min": 1, "opt": 4, "max": 4},
               "side": {"min": 64, "opt": 64, "max": 64}, "gate": {"64": {"passed": True}} if gate is None else gate}
    (engine.parent / (engine.name + ".json")).write_text(json.dumps(sidecar))
    return engine


def test_a_gated_engine_becomes_a_tensorrt_plan_naming_its_gpu_and_tensorrt(tmp_path):
    bundle_dir = make_bundle(tmp_path / "tiny")
    engine = gated_engine(bundle_dir)
    assert main(["export-triton", str(bundle_dir), str(tmp_path / "repo"), "--platform", "tensorrt"]) == 0
    entry = tmp_path / "repo" / "tiny"
    config = read_entry(entry)
    assert (config.platform, config.max_batch_size) == ("tensorrt_plan", 4)
    assert list(config.input[0].dims) == [1, 64, 64]
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    assert parameters[ENGINE_KEY] == sha256_file(engine)
    assert (parameters["phasewatch_gpu"], parameters["phasewatch_tensorrt"]) == ("NVIDIA L4", "10.3.0")
    assert (entry / "1" / "model.plan").read_bytes() == b"engine bytes"


def test_an_engine_with_a_spatial_profile_says_its_largest_side(tmp_path):
    bundle_dir = make_bundle(tmp_path / "tiny")
    engine = gated_engine(bundle_dir)
    sidecar_file = engine.parent / (engine.name + ".json")
    sidecar = json.loads(sidecar_file.read_text())
    sidecar_file.write_text(json.dumps({**sidecar, "side": {"min": 16, "opt": 512, "max": 1024}}))
    assert main(["export-triton", str(bundle_dir), str(tmp_path / "repo"), "--platform", "tensorrt"]) == 0
    config = read_entry(tmp_path / "repo" / "tiny")
    assert list(config.input[0].dims) == [1, -1, -1]
    assert config.parameters[MAX_SIDE_KEY].string_value == "1024"


def test_an_engine_without_gate_results_or_with_other_bytes_is_refused(tmp_path):
    bundle_dir = make_bundle(tmp_path / "tiny")
    engine = gated_engine(bundle_dir, gate={})
    with pytest.raises(TritonExportError, match="no sidecar with gate results"):
        engine_network(load_bundle(bundle_dir), engine)
    sidecar = json.loads((engine.parent / (engine.name + ".json")).read_text())
    (engine.parent / (engine.name + ".json")).write_text(json.dumps({**sidecar, "gate": {"64": {}}}))
    engine.write_bytes(b"another engine")
    with pytest.raises(TritonExportError, match="not the file its sidecar's engine_sha256 names"):
        engine_network(load_bundle(bundle_dir), engine)


def test_export_triton_reports_a_bundle_without_engines_in_one_line(tmp_path, capsys):
    bundle_dir = make_bundle(tmp_path / "tiny")
    assert main(["export-triton", str(bundle_dir), str(tmp_path / "repo"), "--platform", "tensorrt"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "no engine in" in error and "build-engine" in error


def test_export_triton_finds_the_engine_build_engine_kept_in_the_data_folder(tmp_path):
    bundle_dir = make_bundle(tmp_path / "tiny")
    engine = gated_engine(bundle_dir)
    kept = tmp_path / "data" / "engines" / "tiny"
    kept.mkdir(parents=True)
    for path in (engine, engine.parent / (engine.name + ".json")):
        path.replace(kept / path.name)  # where build-engine --data DATA writes them now
    assert main(["export-triton", str(bundle_dir), str(tmp_path / "repo"), "--platform", "tensorrt",
                 "--data", str(tmp_path / "data")]) == 0
    assert (tmp_path / "repo" / "tiny" / "1" / "model.plan").read_bytes() == b"engine bytes"


def test_export_triton_writes_instance_group_and_preferred_batch_sizes(tmp_path, capsys):
    bundle_dir = make_bundle(tmp_path / "tiny")
    assert main(["export-triton", str(bundle_dir), str(tmp_path / "repo"), "--max-batch", "8"]) == 0
    config = read_entry(tmp_path / "repo" / "tiny")
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_AUTO)]
    assert list(config.dynamic_batching.preferred_batch_size) == [8]
    assert main(["export-triton", str(bundle_dir), str(tmp_path / "repo"), "--max-batch", "8", "--instances", "2",
                 "--instance-kind", "gpu", "--preferred-batch", "8", "4"]) == 0
    config = read_entry(tmp_path / "repo" / "tiny")
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_GPU)]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    capsys.readouterr()
    assert main(["export-triton", str(bundle_dir), str(tmp_path / "repo"), "--preferred-batch", "16"]) == 2
    assert "--preferred-batch 16: must be within 1..8" in capsys.readouterr().err


def test_a_tensorrt_plan_runs_on_the_gpu_by_default(tmp_path):
    bundle_dir = make_bundle(tmp_path / "tiny")
    gated_engine(bundle_dir)
    assert main(["export-triton", str(bundle_dir), str(tmp_path / "repo"), "--platform", "tensorrt"]) == 0
    config = read_entry(tmp_path / "repo" / "tiny")
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_GPU)]
    assert list(config.dynamic_batching.preferred_batch_size) == [4]


def test_a_served_model_must_carry_the_bundles_onnx_hash_and_name():
    bundle = load_bundle("uhcs-carbide")
    check_identity(served_config(bundle), bundle, "here")
    with pytest.raises(BackendError, match="no 'phasewatch_onnx_sha256' parameter.*export-triton"):
        check_identity(served_config(bundle, parameters={}), bundle, "here")
    other = {MODEL_KEY: {"string_value": bundle.name}, ONNX_KEY: {"string_value": "f" * 64}}
    with pytest.raises(BackendError, match=f"serves uhcs-carbide with ONNX ffffffffffff, not bundle uhcs-carbide "
                                           f"with ONNX {bundle.onnx_sha256[:12]}"):
        check_identity(served_config(bundle, parameters=other), bundle, "here")


def test_served_tensors_are_checked_against_the_bundle():
    bundle = load_bundle("uhcs-carbide")
    assert check_tensors(served_config(bundle), bundle, "here") == ("input", "logits", True)
    fixed = served_config(bundle, input=[{"name": "x", "dims": [1, 256, 256]}])
    assert check_tensors(fixed, bundle, "here") == ("x", "logits", False)
    with pytest.raises(BackendError, match="has 1 input\\(s\\) and 2 output\\(s\\)"):
        check_tensors(served_config(bundle, output=[{"name": "a", "dims": [4]}, {"name": "b", "dims": [4]}]),
                      bundle, "here")
    with pytest.raises(BackendError, match="do not fit 1 channel"):
        check_tensors(served_config(bundle, input=[{"name": "input", "dims": [3, -1, -1]}]), bundle, "here")
    with pytest.raises(BackendError, match="max_batch_size is 0"):
        check_tensors(served_config(bundle, max_batch_size=0), bundle, "here")
    with pytest.raises(BackendError, match="takes 128 x 128 tiles"):
        check_tensors(served_config(bundle, input=[{"name": "input", "dims": [1, 128, 128]}]), bundle, "here")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_no_server_at_the_address_is_a_one_line_backend_error(protocol):
    bundle = load_bundle("uhcs-carbide")
    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(BackendError) as err:
        choose_backend(bundle, "triton", 8, settings={"triton": {"url": url, "protocol": protocol, "timeout_s": 5.0}})
    message = str(err.value)
    assert message.startswith(f"triton {protocol}://{url} model 'uhcs-carbide': ") and "\n" not in message


def test_auto_never_picks_the_shared_server_even_when_it_is_all_there_is(monkeypatch):
    for kind, entry in list(BACKENDS.items()):
        if kind != "triton":
            monkeypatch.setitem(BACKENDS, kind, entry._replace(unavailable=lambda bundle: "switched off"))
    with pytest.raises(BackendError, match="no backend could be opened") as err:
        choose_backend(load_bundle("uhcs-carbide"), "auto")
    assert "triton" not in str(err.value)


def triton_options(config) -> TritonOptions:
    return TritonOptions.from_table(config.model.settings["triton"])


def test_triton_settings_come_from_the_model_triton_table_and_the_serve_flag(tmp_path):
    path = tmp_path / "phasewatch.toml"
    path.write_text('[model]\nbackend = "triton"\n\n[model.triton]\nurl = "gpu-server:8001"\nmodel = "carbide"\n'
                    'protocol = "http"\ntimeout_s = 5\nshared_memory = true\n')
    assert triton_options(load_config(path)) == TritonOptions("gpu-server:8001", "carbide", "http", 5.0, True)
    assert triton_options(load_config(path, {"triton_url": "other:9001"})) == TritonOptions(
        "other:9001", "carbide", "http", 5.0, True)
    path.write_text('[model.triton]\nprotocol = "udp"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: [model.triton] protocol: must be one of grpc, http, got 'udp'"


def test_the_deprecated_model_triton_keys_still_work_and_say_so(tmp_path, caplog):
    path = tmp_path / "phasewatch.toml"
    path.write_text('[model]\nbackend = "triton"\ntriton_url = "gpu-server:8001"\ntriton_model = "carbide"\n'
                    'triton_protocol = "http"\ntriton_timeout_s = 5\ntriton_shared_memory = true\n')
    with caplog.at_level("WARNING", logger="phasewatch.service.config"):
        config = load_config(path)
    assert triton_options(config) == TritonOptions("gpu-server:8001", "carbide", "http", 5.0, True)
    assert f"{path}: 'model.triton_url' is deprecated, read as [model.triton] url" in caplog.messages
    assert len(caplog.messages) == 5
    path.write_text('[model]\ntriton_timeout_s = 0\n')
    with pytest.raises(ConfigError, match=r"\[model.triton\] timeout_s: must be > 0, got 0.0"):
        load_config(path)


def test_a_protocol_outside_the_list_is_refused_by_name():
    with pytest.raises(BackendError, match=r"\[model.triton\] protocol: must be one of grpc, http, got 'udp'"):
        TritonOptions(protocol="udp")
