"""`phasewatch export`: checkpoint -> bundle, parity gates, refusals that leave nothing behind."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxconverter_common")

import onnxruntime as ort  # noqa: E402

from phasewatch.app.cli import main  # noqa: E402
from phasewatch.bundle import Normalisation, load_bundle, sha256_file  # noqa: E402
from phasewatch.core.normalise import prepare  # noqa: E402
from phasewatch.export import onnx_export  # noqa: E402
from phasewatch.export.models import build_model  # noqa: E402
from phasewatch.export.onnx_export import ExportError, export_bundle  # noqa: E402
from phasewatch.imageio.formats import read_pages  # noqa: E402

TILE = 64
CLASSES = [
    {"id": 0, "name": "matrix", "colour": [0, 0, 0], "role": "background"},
    {"id": 1, "name": "secondary", "colour": [0, 0, 255], "role": "phase"},
    {"id": 2, "name": "tertiary", "colour": [255, 0, 0], "role": "phase"},
]
NORMALISATION = {"mean": [0.5], "std": [0.25], "sixteen_bit": "percentile", "percentiles": [0.5, 99.5]}
MODEL_KWARGS = {"width": 4, "depth": 2}


@pytest.fixture()
def model():
    torch.manual_seed(3)
    return build_model("unet", 1, len(CLASSES), **MODEL_KWARGS).eval()


@pytest.fixture()
def checkpoint(tmp_path, model):
    path = tmp_path / "best.pt"
    config = {
        "architecture": "unet",
        "model_kwargs": MODEL_KWARGS,
        "in_channels": 1,
        "classes": CLASSES,
        "tile": TILE,
        "normalisation": NORMALISATION,
        "scale": 1.0,
        "pixel_size_um": 0.05,
    }
    training = {"data": "superalloy", "splits": {"train": "train", "val": "val"}, "epochs": 0, "seed": 3}
    torch.save(
        {"model": model.state_dict(), "config": config, "metrics": {"val_miou": 0.5}, "training": training}, path
    )
    return path


def _leftovers(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name != "best.pt")


def test_cli_exports_a_bundle_with_parity_on_real_tiles(shared_data, tmp_path, checkpoint, model):
    images = shared_data / "superalloy" / "val" / "images"
    out = tmp_path / "bundle"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--tiles", str(images)]) == 0

    bundle = load_bundle(out)  # validates the manifest and the ONNX sha256
    manifest = bundle.manifest
    assert (bundle.architecture, bundle.tile, bundle.channels, bundle.num_classes) == ("unet", TILE, 1, 3)
    assert bundle.halo % 8 == 0 and 0 <= bundle.halo < TILE // 2
    assert manifest["training"]["data"] == "superalloy" and manifest["metrics"] == {"val_miou": 0.5}
    assert {"torch", "onnx", "onnxruntime"} <= set(manifest["versions"])

    # The reference tiles are real micrograph crops normalised like the runtime does: tile 0
    # is the centre of the first image (sorted by name).
    tiles = np.load(out / manifest["reference_tiles"])
    assert tiles.dtype == np.float32 and tiles.shape == (4, 1, TILE, TILE)
    first = sorted(p for p in images.iterdir() if p.suffix.lower() in (".tif", ".tiff"))[0]
    inp = prepare(read_pages(first)[0].image, 1, Normalisation(mean=(0.5,), std=(0.25,)), 1.0)
    y0, x0 = round((inp.height - TILE) / 2), round((inp.width - TILE) / 2)
    np.testing.assert_array_equal(tiles[0], inp.region(y0, y0 + TILE, x0, x0 + TILE))

    # Parity numbers recomputed independently from the files in the bundle.
    session = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    # A U-Net of depth 2 takes any height and width that are multiples of 4, checked at other sizes.
    assert bundle.spatial_multiple == 4 and manifest["input"]["shape"] == ["batch", 1, "height", "width"]
    assert all(isinstance(dim, str) for dim in session.get_inputs()[0].shape[2:])
    assert [r["size"] for r in parity_sizes(manifest)] == [[TILE + 4, TILE - 4], [TILE, 2 * TILE - 4], [12, 20]]
    assert all(r["argmax_agreement"] >= 0.9999 and r["fp16_argmax_agreement"] >= 0.999 for r in parity_sizes(manifest))
    wide = np.pad(tiles[:1], ((0, 0), (0, 0), (0, 0), (0, TILE - 4)), mode="reflect")
    with torch.no_grad():
        np.testing.assert_allclose(session.run(["logits"], {"input": wide})[0], model(torch.from_numpy(wide)).numpy(),
                                   atol=1e-4)
    onnx_out = np.concatenate([session.run(["logits"], {"input": t[None]})[0] for t in tiles])
    with torch.no_grad():
        torch_out = model(torch.from_numpy(tiles)).numpy()
    parity = manifest["parity"]
    assert parity["tiles"] == 4
    assert parity["max_abs_logit_diff"] == pytest.approx(np.abs(onnx_out - torch_out).max(), abs=1e-5)
    assert parity["max_abs_logit_diff"] <= parity["tolerance"]
    assert parity["argmax_agreement"] == pytest.approx((onnx_out.argmax(1) == torch_out.argmax(1)).mean())
    assert parity["argmax_agreement"] >= 0.9999

    fp16 = manifest["fp16"]
    assert bundle.onnx_fp16_path.is_file() and fp16["file"] == bundle.onnx_fp16_path.name
    assert fp16["sha256"] == sha256_file(bundle.onnx_fp16_path)
    assert fp16["parity"]["argmax_agreement"] >= 0.999
    fp16_session = ort.InferenceSession(str(bundle.onnx_fp16_path), providers=["CPUExecutionProvider"])
    (fp16_out,) = fp16_session.run(["logits"], {"input": tiles[:1]})
    assert fp16_out.dtype == np.float32
    assert _leftovers(tmp_path) == ["bundle"]


def test_api_without_tiles_uses_synthetic_tiles_and_says_so(tmp_path, checkpoint):
    out = export_bundle(checkpoint, tmp_path / "b", None, name="tiny")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == "tiny"
    assert manifest["parity"]["tiles_source"].startswith("synthetic")
    assert (out / "reference_tiles.npy").stat().st_size < 1_500_000
    assert load_bundle(out).onnx_sha256 == sha256_file(out / "model.onnx")


def parity_sizes(manifest: dict) -> list[dict]:
    return manifest["parity"]["sizes"]


def test_onnx_that_differs_from_pytorch_is_refused_and_leaves_nothing(tmp_path, checkpoint, monkeypatch):
    real_export = onnx_export.export_onnx

    def export_a_different_model(model, in_channels, tile, path, multiple=0):
        broken = copy.deepcopy(model)
        with torch.no_grad():
            broken.classifier.bias[0] += 0.5
        real_export(broken, in_channels, tile, path, multiple)

    monkeypatch.setattr(onnx_export, "export_onnx", export_a_different_model)
    with pytest.raises(ExportError, match="ONNX differs from PyTorch"):
        export_bundle(checkpoint, tmp_path / "bundle", None)
    assert _leftovers(tmp_path) == []


def test_fp16_that_disagrees_with_fp32_is_refused(tmp_path, checkpoint, monkeypatch):
    def negate_the_classifier(src, dst):
        graph = onnx.load(str(src))
        last_conv = [node for node in graph.graph.node if node.op_type == "Conv"][-1]
        for init in graph.graph.initializer:
            if init.name in last_conv.input[1:]:
                init.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(init), init.name))
        onnx.save(graph, str(dst))

    monkeypatch.setattr(onnx_export, "convert_fp16", negate_the_classifier)
    with pytest.raises(ExportError, match="FP16 ONNX refused: argmax agreement"):
        export_bundle(checkpoint, tmp_path / "bundle", None)
    assert _leftovers(tmp_path) == []


def test_existing_output_folder_is_refused(tmp_path, checkpoint):
    (tmp_path / "bundle").mkdir()
    with pytest.raises(ExportError, match="already exists"):
        export_bundle(checkpoint, tmp_path / "bundle", None)


def test_tiles_of_the_wrong_shape_are_refused(tmp_path, checkpoint):
    with pytest.raises(ExportError, match=r"N x 1 x 64 x 64"):
        export_bundle(checkpoint, tmp_path / "bundle", np.zeros((2, 3, TILE, TILE), np.float32))
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not a checkpoint", "cannot read checkpoint"),
        ({"model": {}, "config": {"architecture": "unet"}}, "checkpoint config lacks model_kwargs"),
        (
            {
                "model": {},
                "config": {
                    "architecture": "unet",
                    "model_kwargs": {},
                    "in_channels": 1,
                    "classes": CLASSES,
                    "tile": TILE,
                    "normalisation": NORMALISATION,
                },
            },
            "cannot rebuild the model",
        ),
    ],
    ids=["garbage", "config", "weights"],
)
def test_bad_checkpoints_fail_with_one_line(tmp_path, capsys, content, reason):
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    assert main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"phasewatch export: {path}") and reason in err
    assert not (tmp_path / "b").exists()
