"""Model bundles: a folder with ``model.onnx`` and ``manifest.json``.

The manifest is the single source of truth the runtime trusts about a model: its
classes, what input it expects, how to normalise, how to tile. ``export`` writes it,
everything in ``runtime`` reads it through :func:`load_bundle`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phasewatch.errors import PhasewatchError

MANIFEST_FORMAT = 1
ROLES = ("phase", "background", "excluded")
INT8_FILE = "model.int8.onnx"
SIXTEEN_BIT_RULES = ("full_range", "percentile")
NORMALISATION_RULES = ("per-image-percentile", "bit-depth")
BUNDLED_MODELS_DIR = Path(__file__).resolve().parent / "models"


class BundleError(PhasewatchError):
    """A model bundle that cannot be used; the message is one line naming the bundle."""


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    colour: tuple[int, int, int]  # RGB
    role: str  # one of ROLES


@dataclass(frozen=True)
class Normalisation:
    """How raw pixels become model input, applied once per image (never per tile).

    Pixels are first mapped to [0, 1] by ``rule``:

    ``per-image-percentile``  every image, whatever its bit depth or colour, is stretched
                              from its own ``percentiles`` (low, high) to 0..1 and clipped:
                              8-bit, 16-bit (x257), 12-bit in 16 bits (x16) and any
                              brightness/contrast setting of one field give one input;
    ``bit-depth``             (bundles made before the rule was recorded) 8-bit by /255;
                              16-bit by ``sixteen_bit``: ``full_range`` divides by 65535,
                              ``percentile`` stretches as above.

    Then ``(x - mean) / std`` per channel.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    sixteen_bit: str = "percentile"
    percentiles: tuple[float, float] = (0.5, 99.5)
    rule: str = "bit-depth"


@dataclass(frozen=True)
class Bundle:
    path: Path
    name: str
    architecture: str
    classes: tuple[ClassInfo, ...]
    channels: int  # per slice: 1 = grayscale input, 3 = RGB input
    normalisation: Normalisation
    tile: int
    halo: int
    scale: float  # resize factor applied to the image before inference
    pixel_size_um: float | None  # pixel size the model was trained at, if known
    onnx_sha256: str
    manifest: dict[str, Any] = field(repr=False)
    # > 0: model.onnx takes any height and width that are multiples of this (its total
    # stride), so the engine can plan tiles per field; 0: only tile x tile.
    spatial_multiple: int = 0
    # 2.5D: the model sees this many neighbouring slices (odd; the centre one is predicted),
    # each normalised on its own and stacked as channels; 1 (manifests without it) = 2D.
    slices: int = 1

    @property
    def input_channels(self) -> int:
        """Channels of the network's input tensor: ``channels`` per slice times ``slices``."""
        return self.channels * self.slices

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"

    @property
    def onnx_fp16_path(self) -> Path:
        return self.path / "model.fp16.onnx"

    @property
    def int8_path(self) -> Path | None:
        """The INT8 model ``phasewatch quantise`` kept (it passed the gate), if any."""
        block = self.manifest.get("int8")
        return self.path / str(block["file"]) if isinstance(block, dict) and "file" in block else None

    @property
    def head_path(self) -> Path | None:
        """``model.head.onnx``, the model with its post-processing in the graph
        (``export/head.py``), where the manifest names one."""
        block = self.manifest.get("head")
        return self.path / str(block["file"]) if isinstance(block, dict) and "file" in block else None

    @property
    def engines_dir(self) -> Path:
        return self.path / "engines"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def palette(self) -> list[tuple[int, int, int]]:
        """RGB colour per class id."""
        by_id = {c.id: c.colour for c in self.classes}
        return [by_id[i] for i in range(self.num_classes)]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def bundled_model_names() -> list[str]:
    if not BUNDLED_MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_MODELS_DIR.iterdir() if (p / "manifest.json").is_file())


def taught_model_names(models_dir: Path | None) -> list[str]:
    """The models taught on this appliance: bundles ``NAME@N`` in the data folder's ``models``."""
    if models_dir is None or not models_dir.is_dir():
        return []
    return sorted(p.name for p in models_dir.iterdir() if "@" in p.name and (p / "manifest.json").is_file())


def resolve_bundle_path(model: str | Path, models_dir: Path | None = None) -> Path:
    """A bundle is named by a path to its folder, by the name of a model taught here (a folder
    of ``models_dir``, the data folder's ``models``) or by the name of a bundled model."""
    path = Path(model)
    if (path / "manifest.json").is_file():
        return path
    if path.name == str(model) and models_dir is not None and (models_dir / path.name / "manifest.json").is_file():
        return models_dir / path.name
    bundled = BUNDLED_MODELS_DIR / str(model)
    if path.name == str(model) and (bundled / "manifest.json").is_file():
        return bundled
    known = ", ".join(bundled_model_names()) or "none installed"
    taught = f"; taught here: {', '.join(taught_model_names(models_dir)) or 'none'}" if models_dir is not None else ""
    raise BundleError(
        f"{model}: not a model bundle (no manifest.json there) and not a bundled model "
        f"(bundled: {known}{taught})"
    )


def _require(manifest: dict[str, Any], key: str, where: Path) -> Any:
    if key not in manifest:
        raise BundleError(f"{where}: manifest.json lacks the key '{key}'")
    return manifest[key]


def _parse_classes(raw: Any, where: Path) -> tuple[ClassInfo, ...]:
    if not isinstance(raw, list) or not raw:
        raise BundleError(f"{where}: manifest 'classes' must be a non-empty list")
    classes = []
    for entry in raw:
        try:
            info = ClassInfo(
                id=int(entry["id"]),
                name=str(entry["name"]),
                colour=tuple(int(v) for v in entry["colour"]),  # type: ignore[arg-type]
                role=str(entry.get("role", "phase")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: bad class entry {entry!r}: {exc}") from exc
        if info.role not in ROLES:
            raise BundleError(f"{where}: class '{info.name}' has role '{info.role}', not one of {ROLES}")
        if len(info.colour) != 3 or not all(0 <= v <= 255 for v in info.colour):
            raise BundleError(f"{where}: class '{info.name}' colour must be three values 0..255")
        classes.append(info)
    ids = sorted(c.id for c in classes)
    if ids != list(range(len(classes))):
        raise BundleError(f"{where}: class ids must be 0..{len(classes) - 1}, got {ids}")
    return tuple(sorted(classes, key=lambda c: c.id))


def parse_manifest(manifest: dict[str, Any], path: Path) -> Bundle:
    """Validate a manifest dict; ``path`` is the bundle folder it belongs to."""
    where = path
    fmt = manifest.get("format", MANIFEST_FORMAT)
    if fmt != MANIFEST_FORMAT:
        raise BundleError(f"{where}: manifest format {fmt} is not supported (expected {MANIFEST_FORMAT})")
    classes = _parse_classes(_require(manifest, "classes", where), where)
    inp = _require(manifest, "input", where)
    channels = int(inp.get("channels", 1))
    if channels not in (1, 3):
        raise BundleError(f"{where}: input channels must be 1 or 3, got {channels}")
    slices = inp.get("slices", 1)
    if not isinstance(slices, int) or isinstance(slices, bool) or slices < 1 or slices % 2 == 0:
        raise BundleError(f"{where}: input slices must be an odd whole number >= 1, got {slices!r}")
    if slices > 1 and channels != 1:
        raise BundleError(f"{where}: a {slices}-slice (2.5D) input takes gray slices (channels 1), got {channels}")
    norm_raw = manifest.get("normalisation", {})
    mean = tuple(float(v) for v in norm_raw.get("mean", [0.5] * channels))
    std = tuple(float(v) for v in norm_raw.get("std", [0.25] * channels))
    if len(mean) != channels or len(std) != channels or not all(s > 0 for s in std):
        raise BundleError(f"{where}: normalisation mean/std must have {channels} values, std > 0")
    rule = str(norm_raw.get("sixteen_bit", "percentile"))
    if rule not in SIXTEEN_BIT_RULES:
        raise BundleError(f"{where}: normalisation sixteen_bit '{rule}' not one of {SIXTEEN_BIT_RULES}")
    low, high = (float(v) for v in norm_raw.get("percentiles", (0.5, 99.5)))
    # A manifest without a rule predates it: its model was trained under the bit-depth rule.
    intensity_rule = str(norm_raw.get("rule", "bit-depth"))
    if intensity_rule not in NORMALISATION_RULES:
        raise BundleError(f"{where}: normalisation rule '{intensity_rule}' not one of {NORMALISATION_RULES}")
    normalisation = Normalisation(mean=mean, std=std, sixteen_bit=rule, percentiles=(low, high),
                                  rule=intensity_rule)
    tile = int(_require(manifest, "tile", where))
    halo = int(manifest.get("halo", 0))
    if tile < 16 or halo < 0 or 2 * halo >= tile:
        raise BundleError(f"{where}: tile {tile} and halo {halo} are inconsistent (need 2*halo < tile)")
    scale = float(manifest.get("scale", 1.0))
    if not 0 < scale <= 8:
        raise BundleError(f"{where}: scale {scale} out of range (0, 8]")
    px = manifest.get("pixel_size_um")
    multiple = int(inp.get("spatial_multiple", 0))
    if multiple < 0 or (multiple and tile % multiple):
        raise BundleError(f"{where}: input spatial_multiple {multiple} must be >= 0 and divide the tile {tile}")
    return Bundle(
        path=path,
        name=str(manifest.get("name", path.name)),
        architecture=str(manifest.get("architecture", "unknown")),
        classes=classes,
        channels=channels,
        normalisation=normalisation,
        tile=tile,
        halo=halo,
        scale=scale,
        pixel_size_um=float(px) if px is not None else None,
        onnx_sha256=str(manifest.get("onnx_sha256", "")),
        manifest=manifest,
        spatial_multiple=multiple,
        slices=slices,
    )


def load_bundle(model: str | Path, verify_hash: bool = True, models_dir: Path | None = None) -> Bundle:
    """Read and validate a bundle named by path, taught-model name (in ``models_dir``) or
    bundled-model name."""
    path = resolve_bundle_path(model, models_dir)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path / 'manifest.json'}: cannot read manifest: {exc}") from exc
    bundle = parse_manifest(manifest, path)
    if not bundle.onnx_path.is_file():
        raise BundleError(f"{path}: model.onnx is missing")
    if verify_hash and bundle.onnx_sha256 and sha256_file(bundle.onnx_path) != bundle.onnx_sha256:
        raise BundleError(f"{bundle.onnx_path}: sha256 differs from the manifest (file changed?)")
    return bundle


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Validate then write ``manifest.json`` into bundle folder ``path``."""
    parse_manifest(manifest, path)
    tmp = path / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    tmp.replace(path / "manifest.json")
