"""`phasewatch build-engine` against the fake TensorRT 10 / cuda-python in tests/fakes (no GPU here).

The fake engine runs the bundle's FP16 ONNX with onnxruntime, so the gate numbers are real
FP16-vs-FP32 numbers; what is fake is everything TensorRT- and CUDA-specific.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import onnx
import pytest
from onnx_graphs import make_bundle

from phasewatch.app.cli import main
from phasewatch.backends import engines as engines_module
from phasewatch.backends.engines import engine_folder
from phasewatch.bundle import Bundle, load_bundle, sha256_file, write_manifest
from phasewatch.export.build_engine import EngineBuildError, build_engine
from phasewatch.export.engine_gate import GateError, compare_logits

FAKES = Path(__file__).resolve().parent / "fakes"
FAKE_MODULES = ("tensorrt", "cuda", "cuda.bindings", "cuda.bindings.runtime")
TILE = 64
NOTHING_LIVE = {"device_bytes": 0, "device": 0, "host": 0, "streams": 0}


# bench/gpu_check.sh sets this on a GPU machine: the real cuda-python, the fake TensorRT engine
# on ONNX Runtime's CUDA provider; tests that turn the fake GPU's knobs are skipped there.
REAL_CUDA = os.environ.get("PHASEWATCH_REAL_CUDA") == "1"
fake_cuda_only = pytest.mark.skipif(REAL_CUDA, reason="turns the fake CUDA's knobs")


@pytest.fixture
def fake_gpu(monkeypatch):
    """Fresh fake tensorrt + cuda.bindings.runtime importable for one test, gone afterwards."""
    modules = FAKE_MODULES[:1] if REAL_CUDA else FAKE_MODULES
    if REAL_CUDA:
        import cuda.bindings.runtime  # noqa: F401 - the real one, imported before the fakes' folder
    monkeypatch.syspath_prepend(str(FAKES))
    for name in modules:
        sys.modules.pop(name, None)
    import tensorrt
    from cuda.bindings import runtime

    yield SimpleNamespace(trt=tensorrt, cuda=runtime)
    for name in modules:
        sys.modules.pop(name, None)


def smooth_tiles(count: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Micrograph-like tiles: blurred noise, so that regions are wider than a pixel."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, (count * channels, TILE, TILE)).astype(np.float32)
    blurred = np.stack([cv2.GaussianBlur(t, (0, 0), 2) * 4 for t in noise])
    return blurred.reshape(count, channels, TILE, TILE).astype(np.float32)


@pytest.fixture
def engines_root(tmp_path, monkeypatch) -> Path:
    """The data folder's engines for this test: the default (/var/lib/phasewatch/engines) moved here."""
    root = tmp_path / "data" / "engines"
    monkeypatch.setattr(engines_module, "DEFAULT_ENGINES", root)
    return root


@pytest.fixture
def fp16_bundle(tmp_path, engines_root) -> Bundle:
    pytest.importorskip("onnxconverter_common", reason="the export stage's FP16 converter")
    from phasewatch.export.onnx_export import convert_fp16

    path = make_bundle(tmp_path / "bundle", in_channels=1, num_classes=3, tile=TILE)
    convert_fp16(path / "model.onnx", path / "model.fp16.onnx")
    np.save(path / "reference_tiles.npy", smooth_tiles(4))
    return load_bundle(path)


@pytest.fixture
def spatial_bundle(fp16_bundle) -> Bundle:
    """The same bundle declared as exported with dynamic height and width (multiples of 8)."""
    manifest = dict(fp16_bundle.manifest)
    manifest["input"] = {**manifest["input"], "spatial_multiple": 8}
    write_manifest(fp16_bundle.path, manifest)
    return load_bundle(fp16_bundle.path)


def engines_dir_files(bundle: Bundle) -> list[str]:
    """What is in the bundle's engines folder under the data folder's engines."""
    folder = engine_folder(engines_module.DEFAULT_ENGINES, bundle)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_compare_logits_hand_computed():
    reference = np.zeros((1, 2, 2, 5), np.float32)
    reference[0, 1, 1, :] = 1  # row 0 class 0, row 1 class 1: fractions 0.5 / 0.5
    same = compare_logits(reference, reference.copy())
    assert (same.argmax_agreement, same.max_fraction_diff_pp, same.passed) == (1.0, 0.0, True)

    candidate = reference.copy()
    candidate[0, 1, 0, 0] = 1  # one of 10 pixels 0 -> 1: fractions 0.4 / 0.6
    drift = compare_logits(reference, candidate)
    assert drift.argmax_agreement == pytest.approx(0.9)
    assert drift.fraction_diff_pp == pytest.approx((10.0, 10.0))
    assert drift.pixels == 10 and drift.tiles == 1 and not drift.passed


def test_gate_bars_on_many_pixels():
    reference = np.zeros((1, 2, 40, 50), np.float32)  # 2000 pixels, all class 0
    one_flip = reference.copy()
    one_flip[0, 1, 0, 0] = 1  # 1 / 2000: 99.95 % agree, 0.05 pp
    assert compare_logits(reference, one_flip).passed
    four_flips = reference.copy()
    four_flips[0, 1, 0, :4] = 1  # 4 / 2000: 99.8 % agree, 0.2 pp
    result = compare_logits(reference, four_flips)
    assert result.argmax_agreement == pytest.approx(0.998)
    assert result.max_fraction_diff_pp == pytest.approx(0.2)
    assert not result.passed


@fake_cuda_only
def test_build_stamps_name_and_sidecar_and_passes_gate(fake_gpu, fp16_bundle, monkeypatch):
    monkeypatch.setattr(fake_gpu.cuda, "FAKE_DEVICE_NAME", "NVIDIA GeForce RTX 3090 Ti/PCIe")
    monkeypatch.setattr(fake_gpu.cuda, "FAKE_COMPUTE_CAPABILITY", (8, 6))
    network_flags = []
    create_network = fake_gpu.trt.Builder.create_network
    monkeypatch.setattr(fake_gpu.trt.Builder, "create_network",
                        lambda self, flags=0: network_flags.append(flags) or create_network(self, flags))

    path = build_engine(fp16_bundle, max_batch=4, opt_batch=2)

    onnx_sha = sha256_file(fp16_bundle.onnx_fp16_path)
    assert path.name == f"nvidia-geforce-rtx-3090-ti-pcie.sm86.26sm.1gib.trt10.3.0.{onnx_sha[:12]}.engine"
    assert network_flags == [1 << 1]  # STRONGLY_TYPED is bit 1 in TensorRT 10
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["gpu"] == "NVIDIA GeForce RTX 3090 Ti/PCIe"
    assert sidecar["compute_capability"] == "sm86"
    assert (sidecar["multiprocessors"], sidecar["memory_gib"]) == (26, 1)
    assert sidecar["precision"] == "fp16 from the ONNX, strongly typed network"
    assert sidecar["tensorrt"] == "10.3.0"
    assert sidecar["onnx_sha256"] == onnx_sha
    assert sidecar["engine_sha256"] == sha256_file(path)
    assert sidecar["batch"] == {"min": 1, "opt": 2, "max": 4}
    assert sidecar["side"] == {"min": TILE, "opt": TILE, "max": TILE}  # a bundle of one tile size
    gate = sidecar["gate"][str(TILE)]
    assert gate["passed"] and gate["argmax_agreement"] >= 0.999 and gate["tiles"] == 4
    assert gate["pixels"] == 4 * TILE * TILE
    assert engines_dir_files(fp16_bundle) == sorted([path.name, path.name + ".json"])
    cache_path = engines_module.DEFAULT_ENGINES / "nvidia-geforce-rtx-3090-ti-pcie.sm86.trt10.3.0.timing.cache"
    assert not fp16_bundle.engines_dir.exists()  # nothing is written into the bundle
    config = fake_gpu.trt.Builder(fake_gpu.trt.Logger()).create_builder_config()
    cache = config.create_timing_cache(cache_path.read_bytes())
    assert len(cache.entries) == 7  # one per node: 2 casts, 3 convs, 2 relus
    assert fake_gpu.cuda.live() == NOTHING_LIVE  # the gate's backend freed what it took


def test_existing_engine_is_kept_unless_forced(fake_gpu, fp16_bundle, monkeypatch):
    first = build_engine(fp16_bundle, max_batch=2)
    builds = []
    build = fake_gpu.trt.Builder.build_serialized_network
    monkeypatch.setattr(fake_gpu.trt.Builder, "build_serialized_network",
                        lambda self, n, c: builds.append(1) or build(self, n, c))
    assert build_engine(fp16_bundle, max_batch=2) == first and builds == []
    assert build_engine(fp16_bundle, max_batch=2, force=True) == first and builds == [1]


def test_gate_refuses_drifting_engine_and_leaves_no_engine(fake_gpu, fp16_bundle, monkeypatch,
                                                           capsys):
    def drift(logits: np.ndarray) -> np.ndarray:
        logits = logits.copy()
        logits[:, 0, :16, :16] += 100  # a 16x16 corner of every tile turns class 0
        return logits

    monkeypatch.setattr(fake_gpu.trt, "OUTPUT_PERTURBATION", drift)
    assert main(["build-engine", str(fp16_bundle.path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "model.fp16.onnx: engine refused at 64 x 64: argmax agreement" in err[-1]
    assert not any(name.endswith((".engine", ".json", ".tmp")) for name in engines_dir_files(fp16_bundle))


def test_parser_errors_are_reported_one_line_each(fake_gpu, fp16_bundle, capsys):
    model = onnx.load(str(fp16_bundle.onnx_fp16_path))
    for node in model.graph.node:
        if node.op_type == "Relu":
            node.domain = "com.example"
    onnx.save(model, str(fp16_bundle.onnx_fp16_path))

    assert main(["build-engine", str(fp16_bundle.path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    parser_lines = [line for line in err if "No importer registered for op: Relu" in line]
    assert len(parser_lines) == 2
    assert all(line.startswith(str(fp16_bundle.onnx_fp16_path)) for line in parser_lines)
    assert "model.fp16.onnx: TensorRT cannot parse the ONNX (2 error(s))" in err[-1]


def test_cli_builds_into_the_services_data_folder_and_prints_the_path(fake_gpu, fp16_bundle, capsys, tmp_path):
    config = tmp_path / "phasewatch.toml"
    config.write_text(f'[data]\ndir = "{tmp_path / "var"}"\n')
    args = ["build-engine", str(fp16_bundle.path), "--max-batch", "2", "--workspace-mb", "64", "--config", str(config)]
    assert main(args) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed.parent == tmp_path / "var" / "engines" / "tiny" and printed.is_file()
    assert main([*args, "--data", str(tmp_path / "other")]) == 0  # --data wins over the file's
    assert Path(capsys.readouterr().out.strip()).parent == tmp_path / "other" / "engines" / "tiny"
    config.write_text(f'[model.tensorrt]\nengines = "{tmp_path / "kept"}"\n')
    assert main(args) == 0  # a configured engines folder wins over the data folder
    assert Path(capsys.readouterr().out.strip()).parent == tmp_path / "kept" / "tiny"
    assert not fp16_bundle.engines_dir.exists()


def test_bad_requests_are_one_line_errors(fake_gpu, fp16_bundle):
    with pytest.raises(EngineBuildError, match="opt batch"):
        build_engine(fp16_bundle, max_batch=2, opt_batch=3)
    (fp16_bundle.path / "reference_tiles.npy").unlink()
    with pytest.raises(GateError, match="reference_tiles.npy: no reference tiles"):
        build_engine(fp16_bundle, max_batch=2)
    np.save(fp16_bundle.path / "reference_tiles.npy", smooth_tiles(2, channels=3))
    with pytest.raises(GateError, match="expected N x 1 x 64 x 64"):
        build_engine(fp16_bundle, max_batch=2)


# Defect 1: one timing cache for every GPU, set_timing_cache's False ignored, a None from
# get_timing_cache raising AttributeError after the build.

@fake_cuda_only
def test_each_gpu_keeps_its_own_timing_cache(fake_gpu, fp16_bundle, monkeypatch):
    build_engine(fp16_bundle, max_batch=2)
    monkeypatch.setattr(fake_gpu.cuda, "FAKE_DEVICE_NAME", "NVIDIA Jetson AGX Orin")
    build_engine(fp16_bundle, max_batch=2)  # the same bundle on a second machine (shared folder)
    caches = sorted(p.name for p in engines_module.DEFAULT_ENGINES.glob("*.timing.cache"))
    assert caches == ["nvidia-fake-rtx-a2000.sm86.trt10.3.0.timing.cache",
                      "nvidia-jetson-agx-orin.sm86.trt10.3.0.timing.cache"]


@fake_cuda_only
def test_another_gpus_timing_cache_is_replaced_not_ignored(fake_gpu, fp16_bundle, monkeypatch, tmp_path):
    shared_cache = tmp_path / "shared.timing.cache"
    build_engine(fp16_bundle, max_batch=2, timing_cache=shared_cache)
    monkeypatch.setattr(fake_gpu.cuda, "FAKE_DEVICE_NAME", "NVIDIA Jetson AGX Orin")
    messages: list[str] = []
    path = build_engine(fp16_bundle, max_batch=2, timing_cache=shared_cache, progress=messages.append)
    assert path.is_file()
    assert any("from another GPU, starting afresh" in m for m in messages)
    config = fake_gpu.trt.Builder(fake_gpu.trt.Logger()).create_builder_config()
    assert config.create_timing_cache(shared_cache.read_bytes()).device[0] == "NVIDIA Jetson AGX Orin"


def test_no_timing_cache_from_tensorrt_costs_the_cache_not_the_engine(fake_gpu, fp16_bundle, monkeypatch):
    monkeypatch.setattr(fake_gpu.trt.IBuilderConfig, "get_timing_cache", lambda self: None)
    messages: list[str] = []
    path = build_engine(fp16_bundle, max_batch=2, progress=messages.append)
    assert path.is_file() and any("no timing cache; not saved" in m for m in messages)


def test_an_unreadable_timing_cache_is_replaced(fake_gpu, fp16_bundle, tmp_path):
    cache = tmp_path / "garbage.cache"
    cache.write_bytes(b"not a cache")
    assert build_engine(fp16_bundle, max_batch=2, timing_cache=cache).is_file()
    assert cache.read_bytes().startswith(b"FAKETCACHE")


# Engines for bundles with dynamic height and width: a spatial profile, gated at several sizes.

def test_spatial_bundle_gets_a_spatial_profile_gated_at_each_end(fake_gpu, spatial_bundle):
    path = build_engine(spatial_bundle, max_batch=2, max_side=128, opt_side=TILE, opt_batch=2)
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["side"] == {"min": 8, "opt": TILE, "max": 128}
    assert sorted(sidecar["gate"], key=int) == ["8", str(TILE), "128"]
    assert all(gate["passed"] for gate in sidecar["gate"].values())
    assert sidecar["gate"]["128"]["pixels"] == 4 * 128 * 128


def test_spatial_profile_is_tuned_for_one_field_of_the_largest_side(fake_gpu, spatial_bundle):
    # Issue 26, defect 8: tuned for 8 tiles of 256 while the planner sends about one field of
    # 512-1024 at a time (tiles as large as max side allows, one call per field).
    path = build_engine(spatial_bundle, max_batch=4, max_side=128)
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["side"] == {"min": 8, "opt": 128, "max": 128}
    assert sidecar["batch"] == {"min": 1, "opt": 1, "max": 4}


def test_a_bundle_of_one_tile_size_is_still_tuned_for_full_batches(fake_gpu, fp16_bundle):
    path = build_engine(fp16_bundle, max_batch=4)
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["batch"] == {"min": 1, "opt": 4, "max": 4}


def test_gate_failing_at_one_size_refuses_the_engine(fake_gpu, spatial_bundle, monkeypatch):
    def drift_when_large(logits: np.ndarray) -> np.ndarray:
        if logits.shape[-1] < 128:
            return logits
        logits = logits.copy()
        logits[:, 0, :32, :32] += 100
        return logits

    monkeypatch.setattr(fake_gpu.trt, "OUTPUT_PERTURBATION", drift_when_large)
    with pytest.raises(EngineBuildError, match=r"refused at 128 x 128: argmax agreement"):
        build_engine(spatial_bundle, max_batch=2, max_side=128)
    assert not any(name.endswith((".engine", ".json")) for name in engines_dir_files(spatial_bundle))


@pytest.mark.parametrize("sides", [(100, None), (128, 256), (128, 4)])
def test_spatial_sides_must_be_multiples_in_order(fake_gpu, spatial_bundle, sides):
    max_side, opt_side = sides
    with pytest.raises(EngineBuildError, match="multiples of 8"):
        build_engine(spatial_bundle, max_batch=2, max_side=max_side, opt_side=opt_side)


@fake_cuda_only
def test_fake_set_shape_raises_like_pycore(fake_gpu):
    profile = fake_gpu.trt.Builder(fake_gpu.trt.Logger()).create_optimization_profile()
    with pytest.raises(ValueError):
        profile.set_shape("input", (2, 1, 8, 8), (1, 1, 8, 8), (4, 1, 8, 8))  # min > opt
    with pytest.raises(ValueError):
        profile.set_shape("input", (1, 1, 8), (1, 1, 8, 8), (4, 1, 8, 8))
