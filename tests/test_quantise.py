"""INT8 for the CPU: kept only when it agrees with FP32, and run only when asked for by name."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from phasewatch.app.cli import main
from phasewatch.backends.registry import choose_backend
from phasewatch.bundle import bundled_model_names, load_bundle, resolve_bundle_path
from phasewatch.core.pipeline import open_model, segment_images
from phasewatch.export import engine_gate
from phasewatch.imageio.formats import images_in, read_pages


@pytest.fixture
def superalloy_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "superalloy"
    shutil.copytree(resolve_bundle_path("superalloy"), copy, ignore=shutil.ignore_patterns("model.int8.onnx"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.pop("int8", None)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_an_int8_model_that_agrees_is_kept_and_runs_only_by_name(superalloy_copy, shared_data, capsys):
    check = images_in(shared_data / "superalloy/test/images")[0]
    code = main(["quantise", str(superalloy_copy), "--samples", str(shared_data / "superalloy/val/images"),
                 "--check", str(check)])
    assert code == 0, capsys.readouterr().err
    bundle = load_bundle(superalloy_copy)
    block = bundle.manifest["int8"]
    assert bundle.int8_path is not None and bundle.int8_path.is_file()
    assert set(block["parity"]) == {"reference tiles", check.name}
    assert all(r["passed"] and r["argmax_agreement"] >= 0.999 for r in block["parity"].values())
    assert block["samples"]["fields"] == [p.name for p in images_in(shared_data / "superalloy/val/images")]

    assert choose_backend(bundle, "auto").backend.name == "cpu"  # auto never changes the numbers
    fp32, int8 = open_model(superalloy_copy, "cpu"), open_model(superalloy_copy, "cpu-int8")
    image = read_pages(check)[0].image
    (a,), (b,) = (list(segment_images([image], m.bundle, m.backend, plan=m.plan)) for m in (fp32, int8))
    assert int8.backend.name == "cpu-int8" and np.mean(a.classes == b.classes) >= 0.999


def test_an_int8_model_that_drifts_is_refused_and_not_written(superalloy_copy, monkeypatch, capsys):
    monkeypatch.setattr(engine_gate, "MIN_ARGMAX_AGREEMENT", 1.0)  # INT8 cannot agree on every pixel
    assert main(["quantise", str(superalloy_copy)]) == 1
    assert "INT8 refused on reference tiles: argmax agreement" in capsys.readouterr().err
    assert not (superalloy_copy / "model.int8.onnx").exists() and "int8" not in load_bundle(superalloy_copy).manifest


def test_cpu_int8_without_an_int8_model_says_how_to_make_one(superalloy_copy, shared_data, tmp_path, capsys):
    image = images_in(shared_data / "superalloy/test/images")[0]
    assert main(["segment", "--model", str(superalloy_copy), "--backend", "cpu-int8", "--out", str(tmp_path / "out"),
                 str(image)]) != 0
    assert "has no INT8 model (run phasewatch quantise)" in capsys.readouterr().err


def test_bundled_int8_models_are_the_files_their_manifests_name():
    for name in bundled_model_names():
        bundle = load_bundle(name)
        if bundle.int8_path is not None:
            assert choose_backend(bundle, "cpu-int8").backend.name == "cpu-int8"


def test_the_quantisation_samples_keep_their_old_flag_hidden_with_a_warning(capsys):
    from phasewatch.app.commands import quantise as command

    parser = argparse.ArgumentParser(prog="phasewatch quantise")
    command.add_arguments(parser)
    assert parser.parse_args(["b", "--samples", "x", "y"]).samples == [Path("x"), Path("y")]
    assert "deprecated" not in capsys.readouterr().err
    assert parser.parse_args(["b", "--calibrate", "x"]).samples == [Path("x")]
    assert "--calibrate is deprecated; use --samples" in capsys.readouterr().err
    assert parser.parse_args(["b"]).samples == []
    assert "--calibrate" not in parser.format_help() and "quantisation samples" in parser.format_help()
