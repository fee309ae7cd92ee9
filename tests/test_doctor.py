"""``phasewatch doctor`` on a good setup and on setups the service cannot run with."""

from __future__ import annotations

import subprocess
from pathlib import Path

import onnxruntime as ort
import pytest
import test_build_engine as shared
from onnx_graphs import make_bundle

from phasewatch.app.cli import main
from phasewatch.app.commands import doctor as doctor_command
from phasewatch.backends.registry import BACKENDS
from phasewatch.export.build_engine import build_engine

# the fake GPU (TensorRT 10, cuda-python) and its bundle, shared with the build-engine tests
fake_gpu = shared.fake_gpu
engines_root = shared.engines_root


@pytest.fixture
def fp16_bundle(tmp_path, engines_root):
    """The build-engine tests' bundle, in a folder of its own beside ``setup``'s."""
    return shared.fp16_bundle.__wrapped__(tmp_path / "fp16", engines_root)


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    paths = {"watch": tmp_path / "watch", "data": tmp_path / "data", "config": tmp_path / "phasewatch.toml",
             "bundle": make_bundle(tmp_path / "bundle")}
    paths["watch"].mkdir()
    paths["config"].write_text("[watch]\nsettle_s = 0.5\n")
    return paths


def doctor(capsys: pytest.CaptureFixture, setup: dict[str, Path], **changes: Path | str) -> tuple[int, list[str]]:
    options = {"config": setup["config"], "watch": setup["watch"], "data": setup["data"],
               "model": setup["bundle"], **changes}
    argv = ["doctor"] + [part for key, value in options.items() for part in (f"--{key}", str(value))]
    code = main(argv)
    return code, capsys.readouterr().out.splitlines()


def details(lines: list[str], status: str, topic: str) -> list[str]:
    """The details of the lines with this status and topic, in order."""
    prefix = f"{status:<4}  {topic:<9} "
    return [text[len(prefix):] for text in lines if text.startswith(prefix)]


def line(lines: list[str], status: str, topic: str) -> str:
    """The detail of the first line with this status and topic (fails when there is none)."""
    found = details(lines, status, topic)
    assert found, f"no '{status} {topic}' line in:\n" + "\n".join(lines)
    return found[0]


def test_good_setup_exits_0_and_says_what_the_service_would_use(capsys, setup) -> None:
    code, lines = doctor(capsys, setup)
    assert code == 0
    assert line(lines, "ok", "config") == f"{setup['config']}: valid"
    model = line(lines, "ok", "model")
    assert model.startswith(f"tiny at {setup['bundle']}: 1-channel input, tile 64, halo 3")
    assert "ONNX sha256 ok" in model and "0 class0 (phase), 1 class1 (phase), 2 class2 (phase)" in model
    assert line(lines, "ok", "auto").startswith("picked ")
    assert "CPUExecutionProvider" in line(lines, "--", "backends")
    watch = line(lines, "ok", "watch")
    assert watch.startswith(f"{setup['watch']}: readable, 0 entries, ")
    assert "observer (setting 'auto'), settle 0.5 s" in watch
    data, parent = setup["data"], setup["data"].parent
    assert line(lines, "ok", "data") == f"{data}: missing, will be created (in writable {parent})"
    assert "GiB free at" in line(lines, "ok", "disk")
    for topic in ("gpu", "cpu", "python", "user"):
        assert line(lines, "--", topic)
    assert "numpy " in line(lines, "--", "packages")
    assert lines[-1] == "doctor: everything the service needs is in place"
    assert not setup["data"].exists()  # the doctor creates nothing


def test_missing_watch_folder_exits_1_naming_it(capsys, setup) -> None:
    missing = setup["watch"].parent / "not-there"
    code, lines = doctor(capsys, setup, watch=missing)
    assert code == 1
    assert line(lines, "FAIL", "watch") == f"{missing}: does not exist"
    assert lines[-1] == "doctor: the service cannot run like this; fix: watch"


def test_file_where_the_data_folder_should_be_exits_1(capsys, setup) -> None:
    setup["data"].write_text("not a folder")
    code, lines = doctor(capsys, setup)
    assert code == 1
    assert line(lines, "FAIL", "data") == f"{setup['data']}: not a folder"
    code, lines = doctor(capsys, setup, data=setup["data"] / "results")
    assert code == 1
    assert line(lines, "FAIL", "data") == (f"{setup['data'] / 'results'}: cannot be created: "
                                           f"{setup['data']} is not a folder")


def test_changed_model_file_exits_1(capsys, setup) -> None:
    with open(setup["bundle"] / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    code, lines = doctor(capsys, setup)
    assert code == 1
    onnx = setup["bundle"] / "model.onnx"
    assert line(lines, "FAIL", "model") == f"{onnx}: sha256 differs from the manifest (file changed?)"


def test_wrong_config_key_exits_1_naming_file_and_key(capsys, setup) -> None:
    setup["config"].write_text("[watch]\nsetle_s = 0.5\n")
    code, lines = doctor(capsys, setup)
    assert code == 1
    assert line(lines, "FAIL", "config") == f"{setup['config']}: unknown key 'watch.setle_s' (did you mean 'settle_s'?)"
    assert lines[-1] == "doctor: the service cannot run like this; fix: config"


@pytest.mark.skipif(
    bool({"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers())),
    reason="this machine has a GPU provider",
)
def test_auto_line_says_why_faster_backends_were_passed_over(capsys, setup) -> None:
    code, lines = doctor(capsys, setup, backend="cpu")
    assert code == 0
    assert line(lines, "ok", "auto") == "picked cpu"
    passed_over = details(lines, "--", "auto")
    assert [text.split(":")[0] for text in passed_over] == [
        "passed over tensorrt", "passed over tensorrt-ep", "passed over cuda"]
    assert "passed over cuda: onnxruntime lacks CUDAExecutionProvider" in passed_over
    assert line(lines, "ok", "backend") == "cpu (configured) opens"


def test_failing_nvidia_smi_is_reported_as_text(monkeypatch) -> None:
    def fail(*args, **kwargs):
        return subprocess.CompletedProcess(args, 9, stdout="", stderr="NVIDIA-SMI has failed\nsecond line\n")

    monkeypatch.setattr(doctor_command.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(doctor_command.subprocess, "run", fail)
    assert doctor_command.gpu_summary() == "nvidia-smi failed (exit status 9): NVIDIA-SMI has failed"


# Issue 26, must show: doctor names the chosen backend, why faster kinds were passed over, where
# engines are kept, and whether an accuracy gate covers what was chosen.

@pytest.mark.skipif(
    bool({"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers())),
    reason="this machine has a GPU provider",
)
def test_on_this_cpu_machine_doctor_says_where_engines_go_and_that_fp32_needs_no_gate(capsys, setup) -> None:
    code, lines = doctor(capsys, setup)
    assert code == 0
    assert details(lines, "--", "engine")[0] == (
        f"engines are kept in {setup['data'] / 'engines' / 'tiny'} (build-engine writes there; "
        f"{setup['bundle'] / 'engines'} is read too)")
    assert line(lines, "ok", "auto") == "picked cpu"
    passed_over = details(lines, "--", "auto")
    assert "passed over tensorrt-ep: onnxruntime lacks TensorrtExecutionProvider" in passed_over
    assert line(lines, "--", "fp16 gate") == "cpu: not needed: FP32"
    code, lines = doctor(capsys, setup, backend="cpu-int8")
    assert line(lines, "--", "fp16 gate") == "cpu-int8: INT8, not FP16: the model passed quantise's gate"


@shared.fake_cuda_only
def test_under_the_fakes_doctor_picks_the_gated_engine_and_says_so(capsys, setup, fake_gpu, fp16_bundle) -> None:
    engine = build_engine(fp16_bundle, max_batch=2, engines=setup["data"] / "engines")
    code, lines = doctor(capsys, setup, model=fp16_bundle.path)
    assert code == 0, lines
    kept, found = details(lines, "--", "engine")
    assert kept.startswith(f"engines are kept in {setup['data'] / 'engines' / 'tiny'} ")
    assert found.startswith(f"matching TensorRT engine: {engine} (gate: 64 x 64: ")
    assert found.endswith(" % argmax agreement)")
    assert line(lines, "ok", "auto") == "picked tensorrt"
    assert line(lines, "--", "fp16 gate") == "tensorrt: covered: its engine passed build-engine's gate against the " \
                                             "FP32 ONNX"
    code, lines = doctor(capsys, setup, model=fp16_bundle.path, backend="tensorrt-ep")
    assert line(lines, "--", "fp16 gate") == ("tensorrt-ep: NOT covered: ONNX Runtime builds FP16 from the FP32 "
                                              "ONNX with no accuracy gate")


def test_every_backend_kind_has_its_gate_line() -> None:
    assert set(doctor_command.GATES) == set(BACKENDS)
