"""``phasewatch doctor`` on a good setup and on setups the service cannot run with."""

from __future__ import annotations

from pathlib import Path

import pytest
from onnx_graphs import make_bundle

from phasewatch.runtime.commands.cli import main


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


def line(lines: list[str], status: str, topic: str) -> str:
    """The detail of the line with this status and topic (fails when there is none)."""
    prefix = f"{status:<4}  {topic:<9} "
    found = [text[len(prefix):] for text in lines if text.startswith(prefix)]
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
