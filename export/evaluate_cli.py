"""``phasewatch evaluate``: score a model bundle on full-size labelled micrographs.

Images go through the same path as in service (decode, normalise once per image, the
sliding-window engine), so the scores are those of the deployed model, tiling included.
Metrics come from one confusion matrix summed over all images (see ``metrics``); the
BF score is averaged per class over the images where it is defined, then over classes.

How labels are read, first match wins:

1. ``--label-format`` / ``--palette`` on the command line;
2. the training data info in the bundle's manifest (``label_format`` and ``palette`` in
   ``data``, else in ``training.data``), when the bundle was trained by ``phasewatch train``;
3. inferred per file by ``datasets.read_label``: ``.npy`` -> class-id array, single
   channel -> pixel value = class id, RGB(A) -> colour via the palette (needed then).

A palette is a JSON object mapping ``"R,G,B"`` to a class id, e.g. ``{"0,0,255": 1}``,
given inline or as a path to a ``.json`` file; colours not in it become class 0.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from phasewatch.export import datasets, metrics
from phasewatch.export.datasets import find_pairs, read_label
from phasewatch.runtime.backends import Backend, BackendError, open_backend
from phasewatch.runtime.bundle import Bundle, BundleError, load_bundle, write_manifest
from phasewatch.runtime.imageio import ImageReadError, read_fields
from phasewatch.runtime.outputs import OutputError, write_png_atomic
from phasewatch.runtime.pipeline import segment_array

LABEL_FORMATS = ("auto", "index", "palette", "npy")
Palette = dict[tuple[int, int, int], int]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="bundle folder or bundled model name")
    parser.add_argument("--images", required=True, type=Path, help="folder of micrographs")
    parser.add_argument("--labels", required=True, type=Path, help="folder of labels (same stems)")
    parser.add_argument("--palette", help='JSON {"R,G,B": class id} inline or a .json file')
    parser.add_argument("--label-format", choices=LABEL_FORMATS, help="default: from the manifest")
    parser.add_argument("--backend", default="auto", help="auto|cpu|cuda|tensorrt-ep|tensorrt")
    parser.add_argument("--batch", type=int, default=8, help="tiles per inference batch")
    parser.add_argument("--ignore", type=int, help="label value left out of every metric")
    parser.add_argument(
        "--bf-tolerance",
        type=float,
        default=metrics.DEFAULT_BF_TOLERANCE_PX,
        help="boundary F1 distance tolerance in pixels (default %(default)s)",
    )
    parser.add_argument("--error-maps", type=Path, help="write STEM.errors.png here")
    parser.add_argument(
        "--error-class", type=int, help="error maps one-vs-rest for this class id (default: all)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--record", metavar="NAME",
                        help="also store the summary in the bundle's manifest under evaluations.NAME")


def parse_palette(text: str) -> Palette:
    """``{"R,G,B": id}`` from inline JSON or a JSON file; ValueError names what is wrong."""
    source = Path(text)
    raw_text = source.read_text() if source.suffix == ".json" and source.is_file() else text
    try:
        return datasets.parse_palette(json.loads(raw_text))
    except (json.JSONDecodeError, AttributeError, ValueError) as exc:
        raise ValueError(f'palette {text!r}: expected {{"R,G,B": class id}}: {exc}') from exc


def label_palette(args: argparse.Namespace, bundle: Bundle) -> Palette | None:
    """The palette for RGB labels, from the command line, else the manifest's training data;
    None when labels are class ids (formats ``index`` and ``npy``)."""
    manifest = bundle.manifest
    data = manifest.get("data") or manifest.get("training", {}).get("data")
    data = data if isinstance(data, dict) else {}
    fmt = args.label_format or data.get("label_format") or "auto"
    if args.palette:
        palette = parse_palette(args.palette)
    elif isinstance(data.get("palette"), dict):
        palette = datasets.parse_palette(data["palette"])
    else:
        palette = None
    if fmt == "palette" and palette is None:
        raise ValueError("label format 'palette' needs --palette (none in the manifest either)")
    return palette if fmt in ("auto", "palette") else None


def _read_image(path: Path) -> np.ndarray:
    fields = read_fields(path)
    if len(fields) != 1:
        raise ImageReadError(path, f"{len(fields)} pages; a label fits one image per file")
    return fields[0].image


def _finite(value: float) -> float | None:
    """JSON has no NaN: an undefined score is null."""
    return None if math.isnan(value) else float(value)


def _named(names: list[str], values: np.ndarray) -> dict[str, float | None]:
    return {name: _finite(v) for name, v in zip(names, values, strict=True)}


def _score_pairs(
    pairs: list[tuple[Path, Path]],
    bundle: Bundle,
    backend: Backend,
    args: argparse.Namespace,
    palette: Palette | None,
) -> tuple[np.ndarray, list[np.ndarray], list[dict[str, Any]], int]:
    """Segment every pair; (confusion, BF per image, per-image records, failures)."""
    k = bundle.num_classes
    names = [c.name for c in bundle.classes]
    total = np.zeros((k, k), np.int64)
    bf_per_image: list[np.ndarray] = []
    records: list[dict[str, Any]] = []
    failures = 0
    for image_path, label_path in tqdm(pairs, desc="evaluate", unit="image", disable=None):
        try:
            image = _read_image(image_path)
            truth = read_label(label_path, palette)
            if truth.shape != image.shape[:2]:
                raise ValueError(f"{label_path}: label {truth.shape} != image {image.shape[:2]}")
            pred = segment_array(image, bundle, backend, batch=args.batch)
            cm = metrics.confusion_matrix(truth, pred, k, args.ignore)
        except (ImageReadError, OSError, ValueError) as exc:
            message = str(exc)
            if str(label_path) not in message and str(image_path) not in message:
                message = f"{label_path}: {message}"
            print(message, file=sys.stderr)
            failures += 1
            continue
        total += cm
        bf_per_image.append(metrics.boundary_f1(truth, pred, k, args.bf_tolerance, args.ignore))
        true_f, pred_f = metrics.class_fractions(cm)
        records.append(
            {
                "image": image_path.name,
                "true_fractions": _named(names, true_f),
                "predicted_fractions": _named(names, pred_f),
                "pixel_accuracy": _finite(metrics.pixel_accuracy(cm)),
            }
        )
        if args.error_maps:
            picture = metrics.error_map(truth, pred, args.error_class, args.ignore)
            write_png_atomic(args.error_maps / f"{image_path.stem}.errors.png", picture)
    return total, bf_per_image, records, failures


def report(
    bundle: Bundle,
    backend_name: str,
    cm: np.ndarray,
    bf_per_image: list[np.ndarray],
    records: list[dict[str, Any]],
    tolerance_px: float,
) -> dict[str, Any]:
    """The JSON report (keys documented in the command's help); NaN scores become null."""
    names = [c.name for c in bundle.classes]
    iou = metrics.per_class_iou(cm)
    accuracy = metrics.per_class_accuracy(cm)
    true_f, pred_f = metrics.class_fractions(cm)
    bf_per_class, bf_mean = metrics.mean_bf_score(bf_per_image, len(names))
    per_class = {
        name: {
            "iou": _finite(iou[i]),
            "accuracy": _finite(accuracy[i]),
            "bf_score": _finite(bf_per_class[i]),
            "true_fraction": float(true_f[i]),
            "predicted_fraction": float(pred_f[i]),
        }
        for i, name in enumerate(names)
    }
    return {
        "model": bundle.name,
        "backend": backend_name,
        "mean_iou": _finite(metrics.mean_iou(cm)),
        "pixel_accuracy": _finite(metrics.pixel_accuracy(cm)),
        "mean_accuracy": _finite(metrics.mean_accuracy(cm)),
        "weighted_iou": _finite(metrics.weighted_iou(cm)),
        "bf_score": _finite(bf_mean),
        "bf_tolerance_px": tolerance_px,
        "per_class": per_class,
        "confusion": metrics.normalised_confusion(cm).tolist(),
        "images": records,
    }


def _percent(value: float | None) -> str:
    return "     -" if value is None else f"{100 * value:6.2f}"


def format_report(result: dict[str, Any]) -> str:
    """Human-readable tables: per class, summary, row-normalised confusion (in %)."""
    names = list(result["per_class"])
    width = max(12, *(len(n) for n in names))
    lines = [
        f"model {result['model']}  backend {result['backend']}  images {len(result['images'])}",
        "",
        f"{'class':<{width}}  {'IoU %':>6}  {'acc %':>6}  {'BF %':>6}  {'true %':>6}  {'pred %':>6}",
    ]
    for name, row in result["per_class"].items():
        cells = [row["iou"], row["accuracy"], row["bf_score"]]
        cells += [row["true_fraction"], row["predicted_fraction"]]
        lines.append(f"{name:<{width}}  " + "  ".join(_percent(v) for v in cells))
    summary = [
        ("mean IoU", result["mean_iou"]),
        ("pixel accuracy", result["pixel_accuracy"]),
        ("mean class accuracy", result["mean_accuracy"]),
        ("frequency-weighted IoU", result["weighted_iou"]),
        (f"BF score ({result['bf_tolerance_px']:g} px)", result["bf_score"]),
    ]
    lines += ["", *(f"{label:<24}{_percent(value)} %" for label, value in summary)]
    lines += [
        "",
        "confusion, % of each true class (rows = truth, columns = prediction):",
        f"{'':<{width}}  " + "  ".join(f"{n[:6]:>6}" for n in names),
    ]
    for name, row in zip(names, result["confusion"], strict=True):
        lines.append(f"{name:<{width}}  " + "  ".join(_percent(v) for v in row))
    return "\n".join(lines)


def record_evaluation(bundle: Bundle, name: str, result: dict[str, Any]) -> None:
    """Keep the headline numbers with the model they describe (the ONNX files are untouched)."""
    summary = {key: result[key] for key in ("mean_iou", "pixel_accuracy", "mean_accuracy", "weighted_iou",
                                            "bf_score", "bf_tolerance_px")}
    summary["per_class_iou"] = {name_: c["iou"] for name_, c in result["per_class"].items()}
    summary |= {"images": len(result["images"]), "backend": result["backend"],
                "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    manifest = bundle.manifest
    manifest.setdefault("evaluations", {})[name] = summary
    write_manifest(bundle.path, manifest)


def run(args: argparse.Namespace) -> int:
    try:
        bundle = load_bundle(args.model)
        palette = label_palette(args, bundle)
        pairs = find_pairs(args.images, args.labels)
        if args.error_maps:
            args.error_maps.mkdir(parents=True, exist_ok=True)
        backend = open_backend(bundle, args.backend, args.batch)
    except (BundleError, BackendError, ValueError, OSError) as exc:
        print(f"phasewatch evaluate: {exc}", file=sys.stderr)
        return 1
    try:
        cm, bf_per_image, records, failures = _score_pairs(pairs, bundle, backend, args, palette)
    except OutputError as exc:
        print(f"phasewatch evaluate: {exc}", file=sys.stderr)
        return 1
    finally:
        backend.close()
    result = report(bundle, backend.name, cm, bf_per_image, records, args.bf_tolerance)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    if args.record and records and not failures:
        record_evaluation(bundle, args.record, result)
    if failures:
        print(f"phasewatch evaluate: {failures} of {len(pairs)} pairs failed", file=sys.stderr)
    return 1 if failures or not records else 0
