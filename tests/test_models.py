"""The model zoo: shapes, ONNX round trips, encoder strides, and the measured halo."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from torch import nn  # noqa: E402

from phasewatch.export.models import (  # noqa: E402
    MODEL_NAMES,
    build_encoder,
    build_model,
    fixed_avg_pool,
    replace_classifier,
)
from phasewatch.export.onnx_export import convert_fp16, export_onnx, onnx_logits  # noqa: E402
from phasewatch.export.receptive_field import gradient_map, mass_radius, measure_halo  # noqa: E402

TILE = 64
# (name, kwargs, input channels the network sees); small variants keep the export fast.
FAST = [
    ("unet", {"width": 4, "depth": 3}, 1),
    ("unet25d", {"slices": 3, "width": 4, "depth": 2}, 3),
    ("deeplabv3plus", {"encoder": "mobilenetv2", "decoder_channels": 16}, 1),
    ("deeplabv3plus", {"encoder": "resnet18", "decoder_channels": 16}, 3),
    ("deeplabv3", {"backbone": "resnet18", "head_channels": 16}, 1),
    ("fcn", {"backbone": "resnet18", "head_channels": 16}, 1),
    ("pspnet", {"backbone": "resnet18", "tile": TILE}, 1),
]
HEAVY = [
    ("deeplabv3plus", {"encoder": "resnet50", "decoder_channels": 16}, 1),
    ("deeplabv3", {"backbone": "resnet50", "head_channels": 16}, 1),
    ("pspnet", {"backbone": "resnet50", "tile": TILE}, 1),
]


def _model(name: str, kwargs: dict, seen_channels: int, classes: int = 3) -> nn.Module:
    per_slice = seen_channels // kwargs.get("slices", 1)
    return build_model(name, per_slice, classes, **kwargs).eval()


def test_every_name_is_covered():
    assert {name for name, _, _ in FAST} == set(MODEL_NAMES)


@pytest.mark.parametrize(("name", "kwargs", "channels"), FAST + HEAVY, ids=lambda v: str(v))
def test_forward_gives_logits_per_pixel(name, kwargs, channels):
    model = _model(name, kwargs, channels, classes=5)
    with torch.no_grad():
        out = model(torch.randn(2, channels, TILE, TILE))
    assert out.shape == (2, 5, TILE, TILE)
    assert torch.isfinite(out).all()


def _round_trip(tmp_path, name, kwargs, channels):
    torch.manual_seed(0)
    model = _model(name, kwargs, channels)
    path = tmp_path / "m.onnx"
    export_onnx(model, channels, TILE, path)
    x = np.random.default_rng(1).standard_normal((3, channels, TILE, TILE)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = onnx_logits(path, x)  # one tile per run: batch 1 though exported at batch 1..N
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (batched,) = session.run(["logits"], {"input": x})  # the batch axis is dynamic
    np.testing.assert_allclose(batched, expected, atol=1e-4, rtol=1e-4)
    shape = session.get_inputs()[0].shape
    assert shape[1:] == [channels, TILE, TILE] and isinstance(shape[0], str)
    return path, x


# deeplabv3plus-resnet18 adds nothing the other exports do not cover but time: slow.
EXPORTED = [
    pytest.param(*case, marks=pytest.mark.slow) if case[1].get("encoder") == "resnet18" else case for case in FAST
]


@pytest.mark.parametrize(("name", "kwargs", "channels"), EXPORTED, ids=lambda v: str(v))
def test_onnx_export_matches_pytorch(tmp_path, name, kwargs, channels):
    path, x = _round_trip(tmp_path, name, kwargs, channels)
    # The FP16 copy keeps float32 I/O, also where the graph ends in a Resize.
    fp16 = tmp_path / "m.fp16.onnx"
    convert_fp16(path, fp16)
    out = onnx_logits(fp16, x[:1])
    assert out.dtype == np.float32 and out.shape == (1, 3, TILE, TILE)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kwargs", "channels"), HEAVY, ids=lambda v: str(v))
def test_onnx_export_matches_pytorch_resnet50(tmp_path, name, kwargs, channels):
    _round_trip(tmp_path, name, kwargs, channels)


@pytest.mark.parametrize(("encoder", "low_channels"), [("mobilenetv2", 24), ("resnet18", 64), ("resnet50", 256)])
def test_encoders_have_stride_4_skip_and_output_stride_16(encoder, low_channels):
    enc = build_encoder(encoder, 1, 16).eval()
    with torch.no_grad():
        low, high = enc(torch.zeros(1, 1, 128, 128))
    assert low.shape[1:] == (low_channels, 32, 32)
    assert high.shape[1:] == (enc.high_channels, 8, 8)


def test_resnet_output_stride_8_keeps_more_resolution():
    enc = build_encoder("resnet18", 1, 8).eval()
    with torch.no_grad():
        _, high = enc(torch.zeros(1, 1, 128, 128))
    assert high.shape[-2:] == (16, 16)


def test_fixed_pool_equals_adaptive_pool_when_bins_divide():
    x = torch.randn(1, 2, 12, 12)
    for bins in (1, 2, 3, 6):
        expected = nn.AdaptiveAvgPool2d(bins)(x)
        torch.testing.assert_close(fixed_avg_pool(12, bins)(x), expected)


def test_fixed_pool_gives_the_bin_count_when_bins_do_not_divide():
    assert fixed_avg_pool(8, 3)(torch.zeros(1, 1, 8, 8)).shape[-2:] == (3, 3)
    assert fixed_avg_pool(8, 6)(torch.zeros(1, 1, 8, 8)).shape[-2:] == (6, 6)


def test_pspnet_refuses_a_tile_it_was_not_built_for():
    model = build_model("pspnet", 1, 2, tile=64).eval()
    with pytest.raises(ValueError, match="64x64"), torch.no_grad():
        model(torch.zeros(1, 1, 128, 128))


def test_unet25d_sees_slices_times_channels():
    model = build_model("unet25d", 1, 2, slices=5, width=4, depth=2)
    assert model.down[0][0][0].in_channels == 5
    with pytest.raises(ValueError, match="odd"):
        build_model("unet25d", 1, 2, slices=2)


def test_bad_names_and_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown architecture 'segnet'"):
        build_model("segnet", 1, 2)
    with pytest.raises(ValueError, match="bad model arguments"):
        build_model("unet", 1, 2, colour="red")


def test_replace_classifier_changes_only_the_class_count():
    model = build_model("unet", 1, 3, width=4, depth=2).eval()
    replace_classifier(model, 7)
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 16, 16)).shape == (1, 7, 16, 16)


# --------------------------------------------------------------------------- halo


def _constant_conv_stack(layers: int) -> nn.Module:
    convs = [nn.Conv2d(1, 1, 3, padding=1, bias=False) for _ in range(layers)]
    for conv in convs:
        nn.init.constant_(conv.weight, 1.0)
    return nn.Sequential(*convs)


def test_gradient_support_is_the_number_of_layers():
    grad = gradient_map(_constant_conv_stack(3), 1, 32)
    assert grad[16 - 3 : 16 + 4, 16 - 3 : 16 + 4].sum() == pytest.approx(grad.sum())
    assert grad[16, 16 - 3] > 0 and grad[16, 16 - 4] == 0
    assert mass_radius(grad, 1.0) == 3


@pytest.mark.parametrize(("threshold", "radius"), [(0.45, 1), (0.5, 2), (0.85, 2), (0.86, 3)])
def test_mass_radius_matches_hand_computed_masses(threshold, radius):
    # Three 3x3 all-ones convs: the 1-D impulse response is (1, 3, 6, 7, 6, 3, 1) / 27, so
    # the square of radius r holds (7/27)^2, (19/27)^2 = 0.4952, (25/27)^2 = 0.8573, 1.
    grad = gradient_map(_constant_conv_stack(3), 1, 32)
    assert mass_radius(grad, threshold) == radius


def test_measure_halo_rounds_up_to_8_and_caps_at_half_the_tile():
    assert measure_halo(_constant_conv_stack(3), 1, 32, threshold=1.0) == 8
    assert measure_halo(_constant_conv_stack(10), 1, 64, threshold=1.0) == 16
    assert measure_halo(_constant_conv_stack(10), 1, 16, threshold=1.0) == 7


def test_measure_halo_restores_training_mode():
    model = build_model("unet", 1, 2, width=4, depth=2).train()
    halo = measure_halo(model, 1, 32)
    assert model.training
    assert 0 < halo <= 15
