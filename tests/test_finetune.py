"""Fine-tuning from a bundle: the parent's ONNX weights, a frozen encoder, a new head, the parent on record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxconverter_common")

import onnxruntime as ort  # noqa: E402
from test_train import tiny_config  # noqa: E402
from torch import nn  # noqa: E402

from phasewatch.bundle import load_bundle, sha256_file  # noqa: E402
from phasewatch.export.finetune import (  # noqa: E402
    FOLDED_BIAS,
    FinetuneError,
    conv_batchnorm_pairs,
    initial_model,
    load_parent_weights,
    onnx_initializers,
)
from phasewatch.export.models import build_model  # noqa: E402
from phasewatch.export.onnx_export import export_bundle  # noqa: E402
from phasewatch.export.train import checkpoint_config, make_optimiser, train  # noqa: E402

DECODER = ("up.", "fuse.", "classifier.")


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> tuple[Path, dict]:
    """A bundle of tiny_config's U-Net, BatchNorm far from its defaults so that unfolding shows; and
    the state dict it was exported from."""
    config = tiny_config(Path())
    ckpt_config = checkpoint_config(config)
    torch.manual_seed(5)
    model = build_model("unet", 1, len(config["classes"]), **ckpt_config["model_kwargs"])
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
        # A confident head: a random net's near-ties would let the children's FP16 export gate fail by chance.
        model.classifier.bias.copy_(torch.tensor([4.0, 0.0, 0.0]))
    folder = tmp_path_factory.mktemp("parent")
    torch.save({"model": model.state_dict(), "config": ckpt_config, "training": {}}, folder / "parent.pt")
    return export_bundle(folder / "parent.pt", folder / "bundle", None, name="parent"), model.state_dict()


def finetune_config(bundle: Path, **model) -> dict:
    config = tiny_config(Path())
    config["model"].update({"init_from": str(bundle), **model})
    return config


def start(config: dict) -> tuple[nn.Module, dict | None]:
    return initial_model(config, checkpoint_config(config))


def test_weights_are_the_bundles(parent):
    bundle, original = parent
    model, record = start(finetune_config(bundle))
    state, weights = model.state_dict(), onnx_initializers(bundle / "model.onnx")
    # Initializers under a PyTorch name are that tensor; a folded conv is the conv times its BatchNorm.
    pairs = conv_batchnorm_pairs(model)
    assert pairs and all(f"{bn}.running_mean" not in weights for _, bn in pairs)
    for conv, bn in pairs:
        scale = state[f"{bn}.weight"] / torch.sqrt(state[f"{bn}.running_var"] + 1e-5)
        folded = state[f"{conv}.weight"] * scale[:, None, None, None]
        np.testing.assert_allclose(folded.numpy(), weights[f"{conv}.weight"], rtol=1e-5, atol=1e-6)
        bias = state[f"{bn}.bias"] - state[f"{bn}.running_mean"] * scale
        np.testing.assert_allclose(bias.numpy(), weights[FOLDED_BIAS.format(conv)], rtol=1e-5, atol=1e-6)
    for name in ("up.0.weight", "up.0.bias", "classifier.weight", "classifier.bias"):
        np.testing.assert_array_equal(state[name].numpy(), weights[name])
    # ... which is the state dict the bundle was exported from, BatchNorm statistics included.
    for name, tensor in original.items():
        if not name.endswith("num_batches_tracked"):
            torch.testing.assert_close(state[name], tensor, rtol=1e-5, atol=1e-6)
    size = load_bundle(bundle).tile
    tile = np.random.default_rng(0).standard_normal((1, 1, size, size)).astype(np.float32)
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ours = model.eval()(torch.from_numpy(tile)).numpy()
    np.testing.assert_allclose(ours, session.run(["logits"], {"input": tile})[0], atol=1e-4)
    assert record == {"name": "parent", "onnx_sha256": sha256_file(bundle / "model.onnx"), "path": str(bundle),
                      "freeze": "none", "head": "kept"}


def test_frozen_encoder_does_not_move_and_the_rest_learns(parent):
    config = finetune_config(parent[0], freeze="encoder")
    model, record = start(config)
    assert record is not None and record["freeze"] == "encoder"
    optimiser = make_optimiser(model, config["train"])
    given = {id(p) for group in optimiser.param_groups for p in group["params"]}
    assert given == {id(p) for p in model.parameters() if p.requires_grad}
    assert not {id(p) for p in model.down.parameters()} & given
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model.train()
    images, labels = torch.randn(4, 1, 64, 64), torch.randint(0, 3, (4, 64, 64))
    nn.functional.cross_entropy(model(images), labels).backward()
    optimiser.step()
    after = model.state_dict()
    for name in before:
        if name.startswith("down."):  # weights and BatchNorm statistics alike
            assert torch.equal(before[name], after[name]), name
    for name in ("fuse.0.0.0.weight", "fuse.0.0.1.weight", "up.0.weight", "classifier.weight",
                 "fuse.0.0.1.running_mean"):
        assert not torch.equal(before[name], after[name]), name
    assert all(not m.training for m in model.down.modules() if isinstance(m, nn.BatchNorm2d))


def test_head_is_replaced_when_the_class_count_differs(parent):
    bundle, original = parent
    config = finetune_config(bundle)
    config["classes"].append({"id": 3, "name": "carbide", "colour": [0, 200, 0], "role": "phase"})
    model, record = start(config)
    assert record is not None and record["head"] == "replaced"
    assert model.classifier.out_channels == 4
    torch.testing.assert_close(model.state_dict()["fuse.1.1.0.weight"], original["fuse.1.1.0.weight"])


def test_parent_is_recorded_in_the_new_bundle(shared_data, tmp_path, parent):
    bundle = parent[0]
    config = finetune_config(bundle, freeze="encoder")
    train(config, tmp_path / "run", data_root=shared_data, device="cpu", max_steps=1)
    child = load_bundle(tmp_path / "run" / "bundle")
    assert child.manifest["training"]["parent"] == {
        "name": "parent", "onnx_sha256": sha256_file(bundle / "model.onnx"), "path": str(bundle),
        "freeze": "encoder", "head": "kept"}
    # The child ships what it takes to be a parent in turn.
    _, record = start(finetune_config(child.path))
    assert record is not None and record["name"] == child.name


@pytest.mark.parametrize(("model", "reason"), [
    ({"kwargs": {"width": 8, "depth": 2}}, "does not match init_from bundle .*kwargs"),
    ({"in_channels": 3}, "does not match init_from bundle .*in_channels 3 \\(parent 1\\)"),
    ({"architecture": "deeplabv3plus", "kwargs": {}}, "architecture 'deeplabv3plus' \\(parent 'unet'\\)"),
    ({"init_from": "no-such-model"}, "init_from: no-such-model: not a model bundle"),
    ({"freeze": "decoder"}, "freeze 'decoder' is not one of none, encoder"),
])
def test_refusals_are_one_line(parent, model, reason):
    with pytest.raises(FinetuneError, match=reason) as info:
        start(finetune_config(parent[0], **model))
    assert "\n" not in str(info.value)


def test_freezing_needs_a_parent():
    config = tiny_config(Path())
    config["model"]["freeze"] = "encoder"
    with pytest.raises(FinetuneError, match="needs init_from"):
        start(config)


def test_names_that_do_not_match_are_listed_in_one_line(parent):
    deeper = build_model("unet", 1, 3, width=4, depth=3)
    with pytest.raises(FinetuneError, match="do not match the unet model: missing down.3.0.0.weight") as info:
        load_parent_weights(deeper, load_bundle(parent[0]))
    assert "wrong shapes fuse.0.0.0.weight" in str(info.value) and "\n" not in str(info.value)


def _tampered(bundle: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "tampered"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(copy, manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_bundle_without_batchnorm_statistics_is_refused(parent, tmp_path):
    copy = _tampered(parent[0], tmp_path, lambda folder, manifest: manifest.pop("batchnorm"))
    with pytest.raises(FinetuneError, match="no batchnorm.npy to unfold them .* re-export it"):
        start(finetune_config(copy))


def test_batchnorm_statistics_of_another_model_are_refused(parent, tmp_path):
    def scramble(folder: Path, manifest: dict) -> None:
        stats = np.load(folder / "batchnorm.npy")
        np.save(folder / "batchnorm.npy", stats[:, ::-1])
        manifest["batchnorm"]["sha256"] = sha256_file(folder / "batchnorm.npy")

    with pytest.raises(FinetuneError, match="batchnorm.npy does not belong to this model.onnx"):
        start(finetune_config(_tampered(parent[0], tmp_path, scramble)))
