"""Scoring a model bundle on full-size labelled micrographs (``phasewatch evaluate``).

Images go through the runtime's one per-file path (:func:`phasewatch.core.pipeline.process_file`:
decode, normalise once per image, the sliding window), so the scores are those of the
deployed model, tiling included. Metrics come from one confusion matrix summed over all images
(see ``seg_scores``): IoU, Dice, precision, recall (= class accuracy); the BF score is averaged per
class over the images where it is defined, then over classes. What QA signs is compared per image
by :mod:`phasewatch.export.agreement`: phase fractions, particle counts and mean ECD of the
prediction (the field record the daemon would write) against the label measured by the same code.

How labels are read, first match wins:

1. the label format and palette the caller gives (the command's ``--label-format`` / ``--palette``);
2. the training data info in the bundle's manifest (``label_format`` and ``palette`` in
   ``data``, else in ``training.data``), when the bundle was trained by ``phasewatch train``;
3. inferred per file by ``datasets.read_label``: ``.npy`` -> class-id array, single
   channel -> pixel value = class id, RGB(A) -> colour via the palette (needed then).

A palette is a JSON object mapping ``"R,G,B"`` to a class id, e.g. ``{"0,0,255": 1}``,
given inline or as a path to a ``.json`` file; colours not in it become class 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from phasewatch.atomic_files import OutputError
from phasewatch.bundle import Bundle, write_manifest
from phasewatch.core.outputs import write_png_atomic
from phasewatch.core.pipeline import Model, process_file
from phasewatch.core.records import FieldRecord
from phasewatch.errors import PhasewatchError, one_line
from phasewatch.export import datasets, seg_scores
from phasewatch.export.agreement import format_agreement, image_agreement, summarise
from phasewatch.export.datasets import read_label

LABEL_FORMATS = ("auto", "index", "palette", "npy")
Palette = dict[tuple[int, int, int], int]


class EvaluationError(PhasewatchError):
    """A palette, label or image that cannot be scored; the message is one line naming it."""


def parse_palette(text: str) -> Palette:
    """``{"R,G,B": id}`` from inline JSON or a JSON file."""
    source = Path(text)
    try:
        raw = json.loads(source.read_text() if source.suffix == ".json" and source.is_file() else text)
    except (OSError, json.JSONDecodeError) as exc:
        raise EvaluationError(f'palette {text!r}: expected JSON {{"R,G,B": class id}}: {one_line(exc)}') from exc
    if not isinstance(raw, dict):
        raise EvaluationError(f'palette {text!r}: expected a JSON object {{"R,G,B": class id}}')
    return datasets.parse_palette(raw)


def label_palette(bundle: Bundle, label_format: str | None = None, palette: str | None = None) -> Palette | None:
    """The palette for RGB labels: ``palette`` (JSON text or file), else the manifest's training
    data; None when labels are class ids (formats ``index`` and ``npy``)."""
    manifest = bundle.manifest
    data = manifest.get("data") or manifest.get("training", {}).get("data")
    data = data if isinstance(data, dict) else {}
    fmt = label_format or data.get("label_format") or "auto"
    if palette:
        parsed = parse_palette(palette)
    elif isinstance(data.get("palette"), dict):
        parsed = datasets.parse_palette(data["palette"])
    else:
        parsed = None
    if fmt == "palette" and parsed is None:
        raise EvaluationError(f"{bundle.path}: label format 'palette' needs a palette (none in the manifest)")
    return parsed if fmt in ("auto", "palette") else None


@dataclass
class Scores:
    """What scoring a set of pairs adds up to."""

    confusion: np.ndarray  # int64 K x K over every scored image
    bf_tolerance_px: float
    bf_per_image: list[np.ndarray] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)  # per-image records
    failures: int = 0


def _finite(value: float) -> float | None:
    """JSON has no NaN: an undefined score is null."""
    return None if math.isnan(value) else float(value)


def _named(names: list[str], values: np.ndarray) -> dict[str, float | None]:
    return {name: _finite(v) for name, v in zip(names, values, strict=True)}


def segment_pair(
    image_path: Path, label_path: Path, model: Model, palette: Palette | None, batch: int | None = None,
    pixel_size_um: float | None = None,
) -> tuple[np.ndarray, np.ndarray, FieldRecord]:
    """(truth, prediction, field record) of one labelled image, maps at the image's size;
    ``pixel_size_um`` applies where the file itself says nothing (as the daemon's config does)."""
    truth = read_label(label_path, palette)
    result = process_file(image_path, model, batch=batch, fallback_pixel_size_um=pixel_size_um)
    if len(result.fields) != 1:
        raise EvaluationError(f"{image_path}: {len(result.fields)} pages; a label fits one image per file")
    pred = result.fields[0].classes
    if truth.shape != pred.shape:
        raise EvaluationError(f"{label_path}: label {truth.shape} != image {pred.shape}")
    return truth, pred, result.fields[0].record


def score_pairs(
    pairs: list[tuple[Path, Path]],
    model: Model,
    palette: Palette | None = None,
    *,
    batch: int | None = None,
    ignore: int | None = None,
    bf_tolerance_px: float = seg_scores.DEFAULT_BF_TOLERANCE_PX,
    error_maps: Path | None = None,
    error_class: int | None = None,
    pixel_size_um: float | None = None,
    report_failure: Callable[[str], None] = lambda message: None,
) -> Scores:
    """Segment and score every (image, label) pair.

    A pair that cannot be scored is counted in ``failures`` and reported (one line naming
    the file), and the rest go on. ``error_maps``: a folder for ``STEM.errors.png``
    (one-vs-rest for ``error_class``, else all classes); failing to write one stops the run.
    """
    k = model.bundle.num_classes
    names = [c.name for c in model.bundle.classes]
    scores = Scores(np.zeros((k, k), np.int64), bf_tolerance_px)
    if error_maps is not None:
        try:
            error_maps.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{error_maps}: cannot create folder: {exc.strerror or exc}") from exc
    for image_path, label_path in tqdm(pairs, desc="evaluate", unit="image", disable=None):
        try:
            truth, pred, record = segment_pair(image_path, label_path, model, palette, batch, pixel_size_um)
            try:
                cm = seg_scores.confusion_matrix(truth, pred, k, ignore)
            except ValueError as exc:  # label ids outside the model's classes
                raise EvaluationError(f"{label_path}: {exc}") from exc
        except PhasewatchError as exc:
            message = str(exc)
            if str(label_path) not in message and str(image_path) not in message:
                message = f"{image_path}: {message}"
            report_failure(message)
            scores.failures += 1
            continue
        scores.confusion += cm
        scores.bf_per_image.append(seg_scores.boundary_f1(truth, pred, k, bf_tolerance_px, ignore))
        true_f, pred_f = seg_scores.class_fractions(cm)
        scores.images.append(
            {
                "image": image_path.name,
                "true_fractions": _named(names, true_f),
                "predicted_fractions": _named(names, pred_f),
                "pixel_accuracy": _finite(seg_scores.pixel_accuracy(cm)),
                "wrong": field_is_wrong(true_f, pred_f),
                "trust": record["trust"],
                # An ignored label pixel has no class to measure: such an image gets no agreement.
                "measurements": None if ignore is not None and bool(np.any(truth == ignore))
                else image_agreement(truth, record, model.bundle.classes),
            }
        )
        if error_maps is not None:
            picture = seg_scores.error_map(truth, pred, error_class, ignore)
            write_png_atomic(error_maps / f"{image_path.stem}.errors.png", picture)
    return scores


WRONG_RULE = ("a field is wrong when a class holding >= 5 % of the truth is off by more than "
              "max(5 points, 25 % of its true value)")


def field_is_wrong(true_fractions: np.ndarray, predicted_fractions: np.ndarray) -> bool:
    """The trust report's notion of a wrong field (WRONG_RULE): a number QA would reject."""
    relevant = true_fractions >= 0.05
    allowed = np.maximum(0.05, 0.25 * true_fractions)
    return bool(np.any(relevant & (np.abs(predicted_fractions - true_fractions) > allowed)))


def trust_report(images: list[dict[str, Any]]) -> dict[str, Any]:
    """How well the label-free trust record told wrong fields from right ones."""
    wrong = [i for i in images if i["wrong"]]
    right = [i for i in images if not i["wrong"]]
    return {
        "rule": WRONG_RULE,
        "fields": len(images),
        "wrong": len(wrong),
        "wrong_flagged": sum(not i["trust"]["ok"] for i in wrong),
        "right_flagged": sum(not i["trust"]["ok"] for i in right),
    }


def report(bundle: Bundle, backend_name: str, scores: Scores) -> dict[str, Any]:
    """The JSON report: summary scores, per class, row-normalised confusion, per image; NaN scores
    become null."""
    names = [c.name for c in bundle.classes]
    cm = scores.confusion
    iou = seg_scores.per_class_iou(cm)
    accuracy = seg_scores.per_class_accuracy(cm)
    dice, precision = seg_scores.per_class_dice(cm), seg_scores.per_class_precision(cm)
    true_f, pred_f = seg_scores.class_fractions(cm)
    bf_per_class, bf_mean = seg_scores.mean_bf_score(scores.bf_per_image, len(names))
    per_class = {
        name: {
            "iou": _finite(iou[i]),
            "dice": _finite(dice[i]),
            "precision": _finite(precision[i]),
            "recall": _finite(accuracy[i]),
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
        "mean_iou": _finite(seg_scores.mean_iou(cm)),
        "pixel_accuracy": _finite(seg_scores.pixel_accuracy(cm)),
        "mean_accuracy": _finite(seg_scores.mean_accuracy(cm)),
        "weighted_iou": _finite(seg_scores.weighted_iou(cm)),
        "bf_score": _finite(bf_mean),
        "bf_tolerance_px": scores.bf_tolerance_px,
        "per_class": per_class,
        "confusion": seg_scores.normalised_confusion(cm).tolist(),
        "trust": trust_report(scores.images),
        "measurement_agreement": summarise(
            [(i["image"], i["measurements"]) for i in scores.images if i["measurements"] is not None],
            bundle.classes),
        "images": scores.images,
    }


def _percent(value: float | None) -> str:
    return "     -" if value is None else f"{100 * value:6.2f}"


def format_report(result: dict[str, Any]) -> str:
    """Human-readable tables: per class, summary, row-normalised confusion (in %), measurement agreement."""
    names = list(result["per_class"])
    width = max(12, *(len(n) for n in names))
    lines = [
        f"model {result['model']}  backend {result['backend']}  images {len(result['images'])}",
        "",
        f"{'class':<{width}}  {'IoU %':>6}  {'Dice %':>6}  {'prec %':>6}  {'rec %':>6}  {'BF %':>6}  "
        f"{'true %':>6}  {'pred %':>6}",
    ]
    for name, row in result["per_class"].items():
        cells = [row["iou"], row["dice"], row["precision"], row["recall"], row["bf_score"]]
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
    if result["measurement_agreement"]["images"]:
        lines += ["", *format_agreement(result["measurement_agreement"])]
    trust = result["trust"]
    lines += ["", f"trust: {trust['wrong']} of {trust['fields']} fields wrong, {trust['wrong_flagged']} of them "
                  f"flagged; {trust['right_flagged']} right fields flagged ({trust['rule']})"]
    return "\n".join(lines)


def record_evaluation(bundle: Bundle, name: str, result: dict[str, Any]) -> None:
    """Keep the headline numbers with the model they describe (the ONNX files are untouched)."""
    summary = {key: result[key] for key in ("mean_iou", "pixel_accuracy", "mean_accuracy", "weighted_iou",
                                            "bf_score", "bf_tolerance_px")}
    for score in ("iou", "dice", "precision", "recall"):
        summary[f"per_class_{score}"] = {name_: c[score] for name_, c in result["per_class"].items()}
    summary["measurement_agreement"] = result["measurement_agreement"]
    summary |= {"images": len(result["images"]), "backend": result["backend"], "trust": result["trust"],
                "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    manifest = bundle.manifest
    manifest.setdefault("evaluations", {})[name] = summary
    try:
        write_manifest(bundle.path, manifest)
    except OSError as exc:
        raise EvaluationError(f"{bundle.path}: cannot record the evaluation: {exc.strerror or exc}") from exc
