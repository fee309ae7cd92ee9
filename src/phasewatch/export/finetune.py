"""Where training starts: random weights, ImageNet weights (``[model] pretrained``), or a bundle
(``[model] init_from``, with ``[model] freeze``) of a training config.

The operator's remedy for a flagged specimen: start from a bundled model (or any bundle
folder) instead of random weights, optionally with its encoder frozen, and train on a few
labelled fields of the new material.

A bundle ships ONNX, not a checkpoint. The exporter names each initializer after the
PyTorch tensor it came from (``down.0.0.0.weight``), but folds every BatchNorm into the
bias-free conv before it: ``W * gamma / std`` under the conv's name and a new bias
``<conv>.weight_bias``; the BatchNorm itself is gone. That is exact for inference but not
for training, where BatchNorm normalises with batch statistics, so the convs are unfolded
with the parameters and statistics the bundle keeps in ``batchnorm.npy``
(:func:`phasewatch.export.onnx_export.save_batchnorm`), checked against the folded bias.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from phasewatch.bundle import Bundle, load_bundle, sha256_file
from phasewatch.errors import PhasewatchError
from phasewatch.export.encoders import LITE0, EfficientNetLite0Encoder, PretrainedError, load_imagenet
from phasewatch.export.models import build_model, replace_classifier
from phasewatch.export.onnx_export import BATCHNORM_ROWS

FREEZE_CHOICES = ("none", "encoder")
FOLDED_BIAS = "{}.weight_bias"  # the exporter's name for a bias-free conv's folded BatchNorm bias
ENCODER_ATTRIBUTES = ("encoder", "down")  # the zoo's downsampling path: ``encoder``, or a U-Net's ``down``


class FinetuneError(PhasewatchError, ValueError):
    """A parent bundle that cannot initialise the configured model; the message is one line."""


def initial_model(config: dict[str, Any], ckpt_config: dict[str, Any]) -> tuple[nn.Module, dict[str, Any] | None]:
    """The model training starts from, and the record of its parent bundle (``None``: random weights).

    ``config`` is the training config (``[model] init_from``, ``freeze``), ``ckpt_config`` its
    :func:`phasewatch.export.train.checkpoint_config`.
    """
    where, model_cfg = config["config_file"], config["model"]
    freeze = str(model_cfg.get("freeze", "none"))
    if freeze not in FREEZE_CHOICES:
        raise FinetuneError(f"{where}: [model] freeze '{freeze}' is not one of {', '.join(FREEZE_CHOICES)}")
    num_classes = len(ckpt_config["classes"])
    pretrained = model_cfg.get("pretrained", False)
    if not isinstance(pretrained, bool):
        raise FinetuneError(f"{where}: [model] pretrained must be true or false, got {pretrained!r}")
    if pretrained and "init_from" in model_cfg:
        raise FinetuneError(f"{where}: [model] pretrained and init_from both say where the weights come from; "
                            "give one")
    if "init_from" not in model_cfg:
        if freeze != "none":
            raise FinetuneError(f"{where}: [model] freeze = '{freeze}' needs init_from (a random encoder is "
                                "not worth freezing)")
        model = build_model(ckpt_config["architecture"], ckpt_config["in_channels"], num_classes,
                            **ckpt_config["model_kwargs"])
        return model, imagenet_encoder(model, where) if pretrained else None
    try:
        bundle = load_bundle(str(model_cfg["init_from"]))
    except PhasewatchError as exc:
        raise FinetuneError(f"{where}: [model] init_from: {exc}") from exc
    check_compatible(bundle, ckpt_config, where)
    model = build_model(ckpt_config["architecture"], ckpt_config["in_channels"], bundle.num_classes,
                        **ckpt_config["model_kwargs"])
    load_parent_weights(model, bundle)
    head = "kept"
    if bundle.num_classes != num_classes:
        replace_classifier(model, num_classes)
        head = "replaced"
    if freeze == "encoder":
        freeze_encoder(model)
    parent = {"name": bundle.name, "onnx_sha256": sha256_file(bundle.onnx_path), "path": str(bundle.path),
              "freeze": freeze, "head": head}
    return model, parent


def imagenet_encoder(model: nn.Module, where: str) -> dict[str, Any]:
    """Load the ImageNet weights into the model's encoder; the parent record for the checkpoint."""
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, EfficientNetLite0Encoder):
        raise FinetuneError(f"{where}: [model] pretrained = true needs encoder = \"{LITE0}\" (the only encoder "
                            "with ImageNet weights here)")
    try:
        return load_imagenet(encoder)
    except PretrainedError as exc:
        raise FinetuneError(f"{where}: [model] pretrained: {exc}") from exc


def check_compatible(bundle: Bundle, ckpt_config: dict[str, Any], where: str) -> None:
    """Refuse a parent whose architecture, model kwargs or input channels differ from the config's."""
    pairs = {
        "architecture": (bundle.architecture, ckpt_config["architecture"]),
        "kwargs": (bundle.manifest.get("model_kwargs", {}), ckpt_config["model_kwargs"]),
        "in_channels": (bundle.channels, ckpt_config["in_channels"]),
    }
    differ = [f"{key} {mine!r} (parent {theirs!r})" for key, (theirs, mine) in pairs.items() if theirs != mine]
    if differ:
        raise FinetuneError(f"{where}: [model] does not match init_from bundle {bundle.path}: {'; '.join(differ)}")


# --------------------------------------------------------------------------- weights


def onnx_initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def conv_batchnorm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, BatchNorm) module names where a BatchNorm directly follows a bias-free conv in a
    Sequential: every such pair in the zoo, and the pattern the exporter folds."""
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        prefix = f"{name}." if name else ""
        children = list(module.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
            if isinstance(conv, nn.Conv2d) and conv.bias is None and isinstance(bn, nn.BatchNorm2d):
                pairs.append((prefix + conv_name, prefix + bn_name))
    return pairs


def batchnorm_stats(bundle: Bundle) -> dict[str, dict[str, np.ndarray]]:
    """The bundle's BatchNorm layers: name -> {weight, bias, running_mean, running_var}."""
    entry = bundle.manifest.get("batchnorm")
    if not entry:
        raise FinetuneError(f"{bundle.path}: its ONNX has BatchNorm folded into the convs and the bundle has no "
                            "batchnorm.npy to unfold them (exported before fine-tuning existed); re-export it "
                            "from its checkpoint")
    path = bundle.path / entry["file"]
    if not path.is_file() or sha256_file(path) != entry["sha256"]:
        raise FinetuneError(f"{path}: missing, or its sha256 differs from the manifest")
    array, start = np.load(path), 0
    layers: dict[str, dict[str, np.ndarray]] = {}
    for name, channels in entry["layers"].items():
        layers[name] = dict(zip(BATCHNORM_ROWS, array[:, start:start + channels], strict=True))
        start += channels
    return layers


def unfold(weight: np.ndarray, folded_bias: np.ndarray, bn: dict[str, np.ndarray], eps: float,
           where: str) -> np.ndarray:
    """The conv weight before the exporter scaled it by gamma / std; checks the BatchNorm
    record is the one that was folded, by recomputing the folded bias."""
    scale = bn["weight"] / np.sqrt(bn["running_var"] + eps)
    expected_bias = bn["bias"] - bn["running_mean"] * scale
    tolerance = 1e-4 * max(1.0, float(np.abs(folded_bias).max()))
    if folded_bias.shape != expected_bias.shape or np.abs(folded_bias - expected_bias).max() > tolerance:
        raise FinetuneError(f"{where}: batchnorm.npy does not belong to this model.onnx")
    with np.errstate(divide="ignore", invalid="ignore"):
        original = weight / scale[:, None, None, None]
    if not np.isfinite(original).all():
        raise FinetuneError(f"{where}: a BatchNorm scale of 0 leaves its conv's weights unrecoverable")
    return original


def parent_state(
    model: nn.Module, weights: dict[str, np.ndarray], bundle: Bundle
) -> tuple[dict[str, np.ndarray], set[str]]:
    """The model's tensors found in the ONNX initializers (folded pairs unfolded), and the
    initializers left unused."""
    state: dict[str, np.ndarray] = {}
    used: set[str] = set()
    eps = {name: module.eps for name, module in model.named_modules() if isinstance(module, nn.BatchNorm2d)}
    folded = [(conv, bn) for conv, bn in conv_batchnorm_pairs(model) if f"{bn}.running_mean" not in weights]
    stats = batchnorm_stats(bundle) if folded else {}
    for conv, bn in folded:
        if bn not in stats or {f"{conv}.weight", FOLDED_BIAS.format(conv)} - weights.keys():
            continue  # reported as missing below
        weight, bias = weights[f"{conv}.weight"], weights[FOLDED_BIAS.format(conv)]
        state[f"{conv}.weight"] = unfold(weight, bias, stats[bn], eps[bn], f"{bundle.path} ({conv})")
        state.update({f"{bn}.{row}": stats[bn][row] for row in BATCHNORM_ROWS})
        used |= {f"{conv}.weight", FOLDED_BIAS.format(conv)}
    for name in model.state_dict():
        if name not in state and name in weights:
            state[name] = weights[name]
            used.add(name)
    return state, set(weights) - used


def load_parent_weights(model: nn.Module, bundle: Bundle) -> None:
    """Initialise ``model`` (built like the parent) from the bundle's ``model.onnx``, by name,
    every tensor accounted for and of the right shape."""
    state, unused = parent_state(model, onnx_initializers(bundle.onnx_path), bundle)
    own = model.state_dict()
    # num_batches_tracked only counts steps (BatchNorm uses it without a momentum, which the zoo sets).
    missing = [name for name in own if name not in state and not name.endswith("num_batches_tracked")]
    shapes = [f"{name} {tuple(array.shape)} vs {tuple(own[name].shape)}" for name, array in state.items()
              if tuple(array.shape) != tuple(own[name].shape)]
    if missing or shapes:
        raise FinetuneError(f"{bundle.onnx_path}: initializers do not match the {bundle.architecture} model: "
                            f"missing {_few(missing)}; wrong shapes {_few(shapes)}; unused {_few(sorted(unused))}")
    model.load_state_dict({**own, **{name: torch.from_numpy(np.array(a)) for name, a in state.items()}})


def _few(names: list[str], shown: int = 5) -> str:
    if not names:
        return "none"
    more = f" (+{len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


# --------------------------------------------------------------------------- freezing


def encoder_of(model: nn.Module) -> nn.Module:
    for attribute in ENCODER_ATTRIBUTES:
        part = getattr(model, attribute, None)
        if isinstance(part, nn.Module):
            return part
    raise FinetuneError(f"{type(model).__name__}: no encoder ({' or '.join(ENCODER_ATTRIBUTES)}) to freeze")


def freeze_encoder(model: nn.Module) -> None:
    """The encoder's parameters stop learning and its BatchNorms stay in eval mode.

    Frozen weights are not enough: a BatchNorm in train mode normalises with the statistics
    of the (small, single-material) fine-tuning batch and overwrites its running statistics,
    so the frozen encoder would compute something else than the parent's while its weights
    stay put. ``model.train()`` is called every epoch, hence the hook rather than one ``eval()``.
    """
    encoder = encoder_of(model)
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    for module in encoder.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
            module.register_forward_pre_hook(_stay_in_eval)


def _stay_in_eval(module: nn.Module, _inputs: Any) -> None:
    module.eval()


def checkpoint_from_bundle(bundle: Bundle, path: Path) -> Path:
    """A training checkpoint holding a bundle's model (rebuilt from its ``model.onnx`` and
    ``batchnorm.npy``), so that the export stage can export it again, e.g. under a newer
    exporter that gives the ONNX dynamic sizes; its training record says where it came from."""
    manifest = bundle.manifest
    model = build_model(bundle.architecture, bundle.channels, bundle.num_classes, **manifest["model_kwargs"])
    load_parent_weights(model, bundle)
    config = {
        "architecture": bundle.architecture,
        "model_kwargs": dict(manifest["model_kwargs"]),
        "in_channels": bundle.channels,
        "classes": [dict(c) for c in manifest["classes"]],
        "tile": int(manifest.get("training_tile", bundle.tile)),
        "export_tile": bundle.tile,
        "normalisation": dict(manifest.get("normalisation", {})),
        "scale": bundle.scale,
        "pixel_size_um": bundle.pixel_size_um,
    }
    training = {**manifest.get("training", {}),
                "reexported_from": {"name": bundle.name, "onnx_sha256": sha256_file(bundle.onnx_path)}}
    checkpoint = {"model": model.state_dict(), "config": config, "metrics": manifest.get("metrics", {}),
                  "training": training, **({"data": manifest["data"]} if "data" in manifest else {})}
    torch.save(checkpoint, path)
    return path
