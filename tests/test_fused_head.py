"""The post-processing in the graph (issue 25, ``export/head.py``): each bundled model's
``model.head.onnx`` gives the class map and margin that stitching the plain model's logits
gives, on real held-out fields, and a field cut into tiles still matches the whole field."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
import pytest
from test_bundled_models_real import HELD_OUT

from phasewatch.backends.onnxruntime import OrtBackend
from phasewatch.bundle import sha256_file
from phasewatch.core.pipeline import Model, open_model, segment_images
from phasewatch.core.tiling import Plan
from phasewatch.export.head import fuse_head, head_parity
from phasewatch.imageio.formats import images_in, read_pages

# Where the plain path divides the window-weighted logits by the window again, float32 rounding
# moves a margin by one step of 255 on a few pixels (4 of 312,180 on uhcs0220, measured); the
# class map never differed. The bound: at most 1 step, on at most 1 pixel in 10,000.
MARGIN_STEP, MARGIN_SHARE = 1, 1e-4


@pytest.fixture(scope="module", params=list(HELD_OUT))
def models(request: pytest.FixtureRequest) -> Iterator[tuple[Model, OrtBackend]]:
    model = open_model(request.param, "cpu", threads=2)
    plain = OrtBackend(model.bundle.onnx_path, "cpu", threads=2)
    yield model, plain
    model.close()
    plain.close()


def field(shared_data, name: str) -> np.ndarray:
    return read_pages(images_in(shared_data / HELD_OUT[name])[0])[0].image


def assert_same_maps(got, want, share: float = MARGIN_SHARE) -> None:
    assert np.array_equal(got.classes, want.classes)
    step = np.abs(got.margin.astype(np.int16) - want.margin)
    assert step.max() <= MARGIN_STEP and (step > 0).mean() <= share, f"{(step > 0).sum()} margins differ"


def test_the_bundled_head_is_the_file_the_manifest_names(models):
    model, _ = models
    head = model.bundle.head_path
    assert head is not None and sha256_file(head) == model.bundle.manifest["head"]["sha256"]
    assert model.backend.has_head  # type: ignore[attr-defined]


def test_the_head_gives_todays_maps_on_a_real_field(models, shared_data):
    model, plain = models
    image = field(shared_data, model.bundle.name)
    assert model.plan is not None and model.plan.geometry(*image.shape[:2]).one_pass
    (fused,) = segment_images([image], model.bundle, model.backend, plan=model.plan)
    (stitched,) = segment_images([image], model.bundle, plain, plan=model.plan)
    assert fused.classes.shape == image.shape[:2]
    assert_same_maps(fused, stitched)


def test_tiles_are_stitched_as_before_and_agree_with_the_whole_field_through_the_head(models, shared_data):
    """Overlapping tiles never go through the head: they are stitched as before, bit for bit what
    the plain model gives, and agree with the whole field's head as tiles agreed with a whole pass
    before it (test_bundled_models_real: >= 0.999 of classes; the blend of overlapping logits is
    not one pass's arithmetic)."""
    model, plain = models
    bundle = model.bundle
    image = field(shared_data, bundle.name)
    tiled_plan = Plan(bundle.spatial_multiple, 256 * 256, bundle.halo)  # forces overlapping tiles
    height, width = (round(n * bundle.scale) for n in image.shape[:2])
    assert not tiled_plan.geometry(height, width).one_pass
    (whole,) = segment_images([image], bundle, model.backend, plan=model.plan)
    (tiled,) = segment_images([image], bundle, model.backend, plan=tiled_plan)
    (tiled_plain,) = segment_images([image], bundle, plain, plan=tiled_plan)
    assert np.array_equal(tiled.classes, tiled_plain.classes) and np.array_equal(tiled.margin, tiled_plain.margin)
    assert np.mean(tiled.classes == whole.classes) >= 0.999


def test_the_head_is_exact_on_logits_and_refuses_a_model_without_classes(models):
    model, _ = models
    tiles = np.load(model.bundle.path / model.bundle.manifest["reference_tiles"])[:2]
    parity = head_parity(model.bundle.onnx_path, model.bundle.head_path, tiles)
    assert parity["classes_differ"] == 0 and parity["margin_differ"] == 0
    one_class = onnx.load(str(model.bundle.onnx_path))
    one_class.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 1
    with pytest.raises(ValueError, match="K >= 2"):
        fuse_head(one_class)


def test_the_add_head_command_writes_the_head_and_names_it_in_the_manifest(tmp_path, capsys):
    import json
    import shutil

    from phasewatch.app.cli import main
    from phasewatch.bundle import BUNDLED_MODELS_DIR

    bundle = tmp_path / "ebc"
    shutil.copytree(BUNDLED_MODELS_DIR / "ebc", bundle)
    (bundle / "model.head.onnx").unlink()
    assert main(["add-head", str(bundle)]) == 0
    head = json.loads((bundle / "manifest.json").read_text())["head"]
    assert (bundle / head["file"]).is_file() and head["parity"]["classes_differ"] == 0
    assert main(["add-head", str(tmp_path / "missing")]) == 1
    assert "missing: not a model bundle" in capsys.readouterr().err


@pytest.mark.parametrize("classes", [2, 3, 4, 5])
def test_the_head_picks_as_numpy_does_where_logits_tie(classes):
    """The head's class-by-class picks (export/head.py) on logits with ties: the first maximum
    wins, as np.argmax, and a tie for the best is a margin of 0, as ``softmax_margin`` gives."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from phasewatch.core.tiling import argmax_classes, softmax_margin

    shape = ["batch", classes, "height", "width"]
    identity = helper.make_model(
        helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "identity",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)]),
        opset_imports=[helper.make_opsetid("", 18)])
    session = ort.InferenceSession(fuse_head(identity).SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(classes)
    logits = rng.normal(0, 3, (2, classes, 40, 50)).astype(np.float32)
    logits[0, :, :10] = np.round(logits[0, :, :10])  # whole numbers: many ties, for the best and the second
    logits[0, :, 10:20] = 1.5  # every class tied
    logits[1, classes - 1, :5] = logits[1, 0, :5]  # the first and last class tied
    classes_out, margin = session.run(None, {"input": logits})
    ones = np.ones(logits.shape[2:], np.float32)
    for n in range(len(logits)):
        np.testing.assert_array_equal(classes_out[n], argmax_classes(logits[n]))
        np.testing.assert_array_equal(margin[n], softmax_margin(logits[n], ones))
    assert (margin[0, 10:20] == 0).all() and (classes_out[0, 10:20] == 0).all()
