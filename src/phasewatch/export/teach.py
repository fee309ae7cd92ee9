"""Teaching the appliance a material: fine-tune a base bundle on the fields people labelled,
gate the candidate, and keep it as a versioned bundle in the data folder.

One code path for ``phasewatch teach`` and the HTTP API (whose job runner starts that command
in a low-priority process of its own, ``service/teach_jobs.py``):

1. **Plan** (:func:`plan`). The material's labelled fields (the newest labels of each, from the
   store) are split: about one in five is held out for the gate, whole specimens at a time
   when the fields come from several, else every fifth field; the rest train. Fewer than 3
   labelled fields make a weak gate, and the job says so; a single one leaves nothing to
   hold out, so its model cannot pass the gate (it is still made, to be looked at).
2. **Train**. The existing training loop (``train.train``) starts from the base bundle
   (``finetune``: its weights, the head replaced when the material has other classes), with
   the base's architecture, tile and normalisation, on random augmented crops of the
   training fields; unlabelled pixels (255) leave the loss. It runs for the time budget, the
   learning rate annealed by the clock: on the CPU, CPU time per training CPU
   (:func:`training_clock`), so that a job niced behind a busy daemon trains as much, later.
   The checkpoint is chosen on the training fields, never on the held-out ones, so the gate's
   scores are not picked for.
3. **Export** (``onnx_export.export_bundle``: its ONNX and FP16 parity checks refuse a bad
   export) and **trust calibration** (``trust_calibration``, label-free) on the labelled
   fields, plus, where the material is the base's, the base's own training images (when
   they are on this machine), and, for a new material, the fields of the labelled fields'
   specimens that the old model flagged (:func:`flagged_companions`). A few labelled fields
   cover too little of a material's look for the novelty limits (3 labelled tomography
   slices: 9 of 10 validation slices trusted in the modal case), while the fields the lab
   has taken of it, flagged as outside the old model's experience, are that look; whether
   the model is right on them is the gate's question, not the calibration's. Trust needs
   three fields at least: with fewer the model is left uncalibrated, flags every field,
   and the gate fails saying why.
4. **Gate** (:func:`gate`): the candidate, through the runtime's per-file path, on the
   held-out fields: mIoU, per-class IoU, per-class area-fraction error (over labelled pixels)
   and the fields it trusts; the base on the same fields when the class sets match; and,
   when they match, candidate and base on the base's reference set (its validation images)
   so that forgetting shows. It passes when the candidate beats the base on the held-out
   fields (same classes) or reaches the material's target mIoU (new classes), loses at most
   1 point of mIoU on the reference set, and is trust-calibrated.
5. **Version**: the bundle becomes ``DATA/models/NAME@N`` (N one more than the newest; a bundled
   model of that name counts as 1), its manifest holding the material, parent, labelled fields,
   budget, gate numbers and the ONNX sha256. Every run is in the audit record, passed or not.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from phasewatch.bundle import Bundle, BundleError, bundled_model_names, load_bundle, sha256_file, write_manifest
from phasewatch.core.pipeline import Model, open_model, process_file
from phasewatch.core.trust_calibration import CalibrationError, calibrate_bundle
from phasewatch.errors import PhasewatchError, one_line
from phasewatch.export import seg_scores
from phasewatch.export.datasets import Sample, find_pairs, read_label, sample_of
from phasewatch.export.evaluate import label_palette
from phasewatch.store import UNLABELLED, Store, StoreError, flagged

HOLD_OUT_EVERY = 5  # about one labelled field in five is held out for the gate
WEAK_GATE_BELOW = 3
MIN_CALIBRATION_FIELDS = 3  # trust.calibrate's minimum
MAX_COMPANIONS = 100  # unlabelled fields of the material a trust calibration takes at most
MAX_FORGETTING_POINTS = 1.0
STEPS_PER_EPOCH = 25  # how often the chosen checkpoint is reconsidered
SELECTION_FIELDS = 2  # training fields the checkpoint is chosen on (never held-out ones)
# Progress: share of the job each stage ends at (training is timed by its budget).
PROGRESS = {"plan": 0.02, "train": 0.80, "export": 0.88, "calibrate": 0.92, "gate": 1.0}

Progress = Callable[[str, float, str], None]  # (stage, 0..1, one line)


class TeachError(PhasewatchError):
    """A teach job that cannot run or finish; the message is one line naming why."""


@dataclass(frozen=True)
class TeachRequest:
    data_dir: Path
    material: str
    base: str
    who: str
    budget_min: float
    fields: list[int] | None = None  # None: every field labelled with the material
    name: str | None = None  # the model's name before '@N'; default the material's
    threads: int = 1
    device: str = "auto"
    seed: int = 0


@dataclass
class Plan:
    material: dict[str, Any]
    base: Bundle
    train: list[dict[str, Any]]
    held_out: list[dict[str, Any]]
    name: str
    warnings: list[str] = field(default_factory=list)

    @property
    def same_classes(self) -> bool:
        """Whether the material's classes are the base's (then the base can be scored beside it)."""
        return [c["name"] for c in self.material["classes"]] == [c.name for c in self.base.classes]


def models_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "models"


# -- plan -----------------------------------------------------------------------------------


def hold_out(fields: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held out): about one field in :data:`HOLD_OUT_EVERY` held out, by specimen when the
    fields come from several (a field's neighbours from its own specimen resemble it far more
    than the next specimen's will), else every fifth field; none from a single field."""
    if len(fields) < 2:
        return list(fields), []
    wanted = max(1, round(len(fields) / HOLD_OUT_EVERY))
    specimens: dict[Any, list[dict[str, Any]]] = {}
    for f in fields:
        specimens.setdefault(f["specimen_id"], []).append(f)
    if len(specimens) > 1:
        held: list[dict[str, Any]] = []
        # the last specimens (newest), whole, until about a fifth is held out; never all of them
        for group in reversed(list(specimens.values())[1:]):
            if len(held) >= wanted:
                break
            held += group
        held_ids = {f["file_id"] for f in held}
        return [f for f in fields if f["file_id"] not in held_ids], held
    step = len(fields) / wanted
    picks = {min(len(fields) - 1, int(step * (i + 1)) - 1) for i in range(wanted)}
    return [f for i, f in enumerate(fields) if i not in picks], [f for i, f in enumerate(fields) if i in picks]


def next_version(models: Path, name: str) -> str:
    """``NAME@N``: one more than the newest taught here; a bundled model ``NAME`` is version 1."""
    pattern = re.compile(rf"^{re.escape(name)}@(\d+)$")
    versions = [int(m.group(1)) for p in (models.iterdir() if models.is_dir() else []) if (m := pattern.match(p.name))]
    floor = 1 if name in bundled_model_names() else 0
    return f"{name}@{max([floor, *versions]) + 1}"


def plan(store: Store, request: TeachRequest) -> Plan:
    material = store.material(request.material)
    if material is None:
        raise TeachError(f"no material {request.material!r}: create it and label fields with it first")
    try:
        base = load_bundle(request.base, models_dir=models_dir(request.data_dir))
    except BundleError as exc:
        raise TeachError(f"base model: {exc}") from exc
    try:
        labelled = store.labelled_fields(request.material, request.fields)
    except StoreError as exc:
        raise TeachError(str(exc)) from exc
    if not labelled:
        raise TeachError(f"too few labels: no field is labelled with {request.material!r}")
    if base.slices > 1:
        raise TeachError(f"base {base.name}: a {base.slices}-slice (2.5D) model is taught from volumes, not fields")
    if not request.budget_min > 0:
        raise TeachError(f"budget must be a positive number of minutes, got {request.budget_min}")
    train, held = hold_out(labelled)
    warnings = []
    if not held:
        warnings.append("the gate cannot pass: with one labelled field there is none to hold out; label more")
    elif len(labelled) < WEAK_GATE_BELOW:
        warnings.append(f"the gate will be weak: only {len(labelled)} labelled fields, {len(held)} held out")
    name = request.name or request.material
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9 ._+-]{0,63}$", name):
        raise TeachError(f"model name {name!r}: use letters, digits, space, '.', '_', '+' or '-'")
    return Plan(material, base, train, held, next_version(models_dir(request.data_dir), name), warnings)


# -- samples and config ---------------------------------------------------------------------


def label_array(store: Store, material: str, row: dict[str, Any]) -> np.ndarray:
    stored = store.labels(row["file_id"], material, row["version"])
    assert stored is not None  # labelled_fields listed it
    array = cv2.imdecode(np.frombuffer(stored["png"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert array is not None  # the store decoded it when it was saved
    return np.asarray(array, np.uint8)


def field_samples(store: Store, material: str, rows: list[dict[str, Any]], base: Bundle) -> list[Sample]:
    """Each field's image (from where the daemon read it) with its newest labels, normalised
    as the base's runtime normalises."""
    samples = []
    for row in rows:
        path = Path(row["path"])
        if not path.is_file():
            raise TeachError(f"{path}: image {row['file_id']} is no longer there to learn from")
        try:
            samples.append(sample_of(path, label_array(store, material, row), base.channels, base.normalisation,
                                     base.scale, None, f"labels of image {row['file_id']}"))
        except PhasewatchError as exc:
            raise TeachError(str(exc)) from exc
    return samples


def training_config(p: Plan, budget_min: float, seed: int) -> dict[str, Any]:
    """A training config (``train.load_config``'s shape) that fine-tunes the base on the material."""
    manifest = p.base.manifest
    classes = [{"id": i, "name": c["name"], "colour": _rgb(c["colour"]), "role": c["role"]}
               for i, c in enumerate(p.material["classes"])]
    return {
        "config_file": f"teach {p.name}",
        "name": p.name,
        "seed": seed,
        "data": {},
        "classes": classes,
        "model": {"architecture": p.base.architecture, "kwargs": dict(manifest.get("model_kwargs", {})),
                  "in_channels": p.base.channels, "tile": int(manifest.get("training_tile", p.base.tile)),
                  "export_tile": p.base.tile, "scale": p.base.scale, "pixel_size_um": p.base.pixel_size_um,
                  "init_from": str(p.base.path)},
        "normalisation": dict(manifest.get("normalisation", {})),
        # What every bundled recipe shares: orientation-free fields, detector gain, gamma and noise.
        "augment": {"flips": True, "rot90": True, "scale": [0.8, 1.25], "brightness": 0.2, "contrast": 0.2,
                    "noise": 0.05, "gamma": 0.3, "blur": 0.2, "single_class_cap": 0.3},
        "train": {"batch": 8, "epochs": 100_000, "steps_per_epoch": STEPS_PER_EPOCH, "optimizer": "adamw",
                  "lr": 2e-3, "weight_decay": 1e-4, "schedule": "cosine", "warmup_steps": 20,
                  "losses": [{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 0.5}],
                  "time_limit_min": budget_min},
        "export": {"enabled": False},
    }


def _rgb(colour: str) -> list[int]:
    return [int(colour[i:i + 2], 16) for i in (1, 3, 5)]


# -- gate -------------------------------------------------------------------------------------


def score_fields(model: Model, pairs: list[tuple[Path, np.ndarray]]) -> dict[str, Any]:
    """mIoU, per-class IoU and area-fraction error (points, over labelled pixels) and trusted
    fields of ``model`` on (image, class-id label) pairs, through the runtime's per-file path."""
    k = model.bundle.num_classes
    total = np.zeros((k, k), np.int64)
    fraction_errors, trusted = [], 0
    for path, truth in pairs:
        result = process_file(path, model)
        predicted = result.fields[0].classes
        if predicted.shape != truth.shape:
            raise TeachError(f"{path}: labels {truth.shape} do not fit the field {predicted.shape}")
        cm = seg_scores.confusion_matrix(truth, predicted, k, UNLABELLED)
        total += cm
        true_f, pred_f = seg_scores.class_fractions(cm)
        fraction_errors.append(100.0 * (pred_f - true_f))
        trusted += bool(result.fields[0].record["trust"]["ok"])
    names = [c.name for c in model.bundle.classes]
    per_class = seg_scores.per_class_iou(total)
    errors = np.mean(np.abs(np.array(fraction_errors)), axis=0) if fraction_errors else np.full(k, np.nan)
    return {"fields": len(pairs), "mean_iou": _finite(seg_scores.mean_iou(total)),
            "per_class_iou": {n: _finite(v) for n, v in zip(names, per_class, strict=True)},
            "fraction_error_points": {n: _finite(v) for n, v in zip(names, errors, strict=True)},
            "trusted": trusted}


def _finite(value: float) -> float | None:
    return None if math.isnan(float(value)) else round(float(value), 5)


def reference_pairs(base: Bundle) -> tuple[list[tuple[Path, np.ndarray]], str]:
    """The base's reference set (its validation images and labels, from its manifest's data)
    if this machine has it; else no pairs and why."""
    data = base.manifest.get("data") or {}
    val, root = data.get("val"), data.get("root")
    if not isinstance(val, dict) or not root:
        return [], f"{base.name}: its manifest names no validation images"
    images, labels = Path(root) / val["images"], Path(root) / val["labels"]
    env_root = os.environ.get("PHASEWATCH_DATA")
    if not images.is_dir() and env_root:
        images, labels = Path(env_root) / val["images"], Path(env_root) / val["labels"]
    if not images.is_dir():
        return [], f"{base.name}: its validation images ({images}) are not on this machine"
    palette = label_palette(base)
    default = int(data.get("default_class", 0))
    return [(image, read_label(label, palette, default)) for image, label in find_pairs(images, labels)], ""


def gate(candidate: Model, base: Model | None, p: Plan, held_out: list[tuple[Path, np.ndarray]],
         calibrated: bool) -> dict[str, Any]:
    """The gate's numbers and verdict (module doc, step 4)."""
    reasons: list[str] = [] if held_out else ["no held-out field to score"]
    scores = {"candidate": score_fields(candidate, held_out)}
    target = float(p.material.get("target_miou") or 0.8)
    mine = scores["candidate"]["mean_iou"]
    if base is not None and p.same_classes:
        scores["base"] = score_fields(base, held_out)
        theirs = scores["base"]["mean_iou"]
        rule = "beat the base on the held-out fields"
        if held_out and (mine is None or theirs is None or mine <= theirs):
            reasons.append(f"held-out mIoU {_pct(mine)} does not beat the base's {_pct(theirs)}")
    else:
        rule = f"reach the material's target mIoU {target:.2f} on the held-out fields"
        if held_out and (mine is None or mine < target):
            reasons.append(f"held-out mIoU {_pct(mine)} is below the target {100 * target:.1f} %")
    reference: dict[str, Any] = {"measured": False}
    if base is not None and p.same_classes:
        pairs, why = reference_pairs(p.base)
        if pairs:
            ref_candidate, ref_base = score_fields(candidate, pairs), score_fields(base, pairs)
            loss = 100 * ((ref_base["mean_iou"] or 0) - (ref_candidate["mean_iou"] or 0))
            reference = {"measured": True, "fields": len(pairs), "candidate": ref_candidate, "base": ref_base,
                         "forgetting_points": round(loss, 3), "allowed_points": MAX_FORGETTING_POINTS}
            if loss > MAX_FORGETTING_POINTS:
                reasons.append(f"forgets: {loss:.1f} points mIoU lost on the base's reference set "
                               f"(at most {MAX_FORGETTING_POINTS:.0f} allowed)")
        else:
            reference["reason"] = f"forgetting not measured: {why}"
    else:
        reference["reason"] = "not applicable: the material's classes are not the base's"
    if not calibrated:
        reasons.append(f"trust is not calibrated (it needs {MIN_CALIBRATION_FIELDS} fields of the material)")
    return {"passed": not reasons, "rule": rule, "target_miou": target, "reasons": reasons,
            "held_out": {**scores, "images": [r["file_id"] for r in p.held_out]}, "reference": reference}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


# -- the job ----------------------------------------------------------------------------------


def teach(request: TeachRequest, progress: Progress = lambda stage, fraction, message: None) -> dict[str, Any]:
    """Run a teach job (module doc); returns ``{"model", "gate", "warnings", "seconds"}``.
    Raises :class:`TeachError` (one line) when it cannot finish."""
    from phasewatch.export.onnx_export import ExportError, cut_reference_tiles, export_bundle
    from phasewatch.export.train import Splits, TrainError, checkpoint_config, train

    started = time.time()
    data_dir = Path(request.data_dir)
    store = Store(data_dir / "phasewatch.sqlite3")
    work = data_dir / "teach" / f"run-{os.getpid()}-{int(started)}"
    bundle_dir: Path | None = None
    try:
        p = plan(store, request)
        for warning in p.warnings:
            progress("plan", 0.0, warning)
        store.audit.record(request.who, "teach.start", f"model:{p.name}", None,
                           {"material": request.material, "base": p.base.name, "budget_min": request.budget_min,
                            "train": [r["file_id"] for r in p.train], "held_out": [r["file_id"] for r in p.held_out]})
        train_samples = field_samples(store, request.material, p.train, p.base)
        held_pairs = [(Path(r["path"]), label_array(store, request.material, r)) for r in p.held_out]
        progress("plan", PROGRESS["plan"], f"{len(p.train)} field(s) to learn from, {len(p.held_out)} held out")

        config = training_config(p, request.budget_min, request.seed)
        chosen_on = train_samples[:SELECTION_FIELDS]
        splits = Splits(train_samples, chosen_on, {"material": request.material, "train_images": [
            s.name for s in train_samples], "checkpoint_chosen_on": [s.name for s in chosen_on],
            "held_out_images": [r["file_id"] for r in p.held_out]})
        clock = training_clock(request.device)
        with _ticking(progress, "train", PROGRESS["plan"], PROGRESS["train"], request.budget_min * 60, clock):
            checkpoint = train(config, work, device=request.device, seed=request.seed, splits=splits, clock=clock)

        progress("export", PROGRESS["train"], "exporting and checking ONNX against PyTorch")
        bundle_dir = models_dir(data_dir) / f".{p.name}.partial"
        shutil.rmtree(bundle_dir, ignore_errors=True)
        tiles = cut_reference_tiles(sorted({s.path for s in train_samples}), checkpoint_config(config), 4)
        export_bundle(checkpoint, bundle_dir, tiles, name=p.name, tiles_source="labelled training fields")

        progress("calibrate", PROGRESS["export"], "calibrating trust on the labelled fields")
        threads = max(1, request.threads)
        calibration = [Path(r["path"]) for r in p.train + p.held_out]
        source = f"the {len(calibration)} labelled fields of {request.material}"
        if p.same_classes:
            extra = _base_training_images(p.base)
            source += f" and {len(extra)} training images of {p.base.name}" if extra else ""
        else:
            extra = [Path(f["path"]) for f in flagged_companions(store, p.train + p.held_out)]
            source += f" and {len(extra)} fields of their specimens the old model flagged" if extra else ""
        calibration += extra
        calibrated = len(calibration) >= MIN_CALIBRATION_FIELDS
        with closing(open_model(bundle_dir, "cpu", threads=threads)) as candidate:
            if calibrated:
                try:
                    calibrate_bundle(candidate, calibration, source)
                except CalibrationError as exc:
                    raise TeachError(str(exc)) from exc
        progress("gate", PROGRESS["calibrate"], "scoring the held-out fields")
        with closing(open_model(bundle_dir, "cpu", threads=threads)) as candidate, \
                closing(open_model(p.base.path, "cpu", threads=threads)) as base_model:
            verdict = gate(candidate, base_model, p, held_pairs, calibrated)
        final = _finish_bundle(bundle_dir, models_dir(data_dir) / p.name, p, request, verdict, time.time() - started)
        result = {"model": p.name, "path": str(final), "gate": verdict, "warnings": p.warnings,
                  "seconds": round(time.time() - started, 1)}
        store.audit.record(request.who, "teach.done", f"model:{p.name}", None,
                           {"gate_passed": verdict["passed"], "held_out_miou": verdict["held_out"]["candidate"]
                            ["mean_iou"], "onnx_sha256": sha256_file(final / "model.onnx")},
                           "; ".join(verdict["reasons"]))
        progress("gate", PROGRESS["gate"], "gate passed" if verdict["passed"] else "gate failed: "
                 + "; ".join(verdict["reasons"]))
        return result
    except (TrainError, ExportError, StoreError, BundleError) as exc:
        raise TeachError(one_line(exc)) from exc
    finally:  # also when cancelled (SIGTERM: the command exits through here)
        shutil.rmtree(work, ignore_errors=True)
        if bundle_dir is not None:
            shutil.rmtree(bundle_dir, ignore_errors=True)  # gone once renamed: nothing half made is kept
        store.close()


def training_clock(device: str) -> Callable[[], float]:
    """What the budget is counted in: on a GPU wall time; on the CPU the process's CPU time
    per CPU it trains on, so that a job niced behind a busy daemon gets the same training,
    only later (on an idle machine the two are the same)."""
    import torch

    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return time.time
    cpus = max(1, len(os.sched_getaffinity(0)))  # what train() sizes its thread pool by
    return lambda: time.process_time() / cpus


def flagged_companions(store: Store, labelled: list[dict[str, Any]]) -> list[Any]:
    """The measured fields of the labelled fields' specimens that the model which measured
    them flagged (the material's fields the lab has already taken, which is why it is being
    taught), not labelled themselves, not excluded, still on disk; at most
    :data:`MAX_COMPANIONS`, newest first. A field of another material in those specimens that
    the old model knew is not among them: it was trusted."""
    ids = {r["file_id"] for r in labelled}
    found: list[Any] = []  # the store's image rows
    for specimen in sorted({r["specimen_id"] for r in labelled}):
        found += [f for f in store.field_results(specimen, count_flagged=True)
                  if f["id"] not in ids and flagged(f) and Path(f["path"]).is_file()]
    return sorted(found, key=lambda f: f["id"], reverse=True)[:MAX_COMPANIONS]


def _base_training_images(base: Bundle) -> list[Path]:
    """The base's training images, where its manifest names them and this machine has them."""
    data = base.manifest.get("data") or {}
    entry, root = data.get("train"), data.get("root")
    if not isinstance(entry, dict) or not root or not (Path(root) / entry["images"]).is_dir():
        return []
    return [image for image, _ in find_pairs(Path(root) / entry["images"], Path(root) / entry["labels"])]


def _finish_bundle(partial: Path, final: Path, p: Plan, request: TeachRequest, verdict: dict[str, Any],
                   seconds: float) -> Path:
    """Record what the model was taught from and how it fared, then give it its name."""
    bundle = load_bundle(partial)
    manifest = {**bundle.manifest, "name": p.name, "material": request.material,
                "parent": {"name": p.base.name, "onnx_sha256": p.base.onnx_sha256},
                "taught": {"who": request.who, "budget_min": request.budget_min, "seconds": round(seconds, 1),
                           "fields": [{**{k: r[k] for k in ("file_id", "sha256", "path", "version", "who",
                                                             "labelled_px", "specimen")},
                                       "held_out": r in p.held_out} for r in p.train + p.held_out],
                           "warnings": p.warnings},
                "gate": verdict}
    write_manifest(partial, manifest)
    if final.exists():
        raise TeachError(f"{final}: exists already (another job took the name at the same time); teach again")
    partial.rename(final)
    return final


class _ticking:
    """Report a stage's progress by the clock while it runs (training is timed by its budget)."""

    def __init__(self, progress: Progress, stage: str, start: float, end: float, seconds: float,
                 clock: Callable[[], float]) -> None:
        self.progress, self.stage, self.start, self.end, self.seconds = progress, stage, start, end, seconds
        self.clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        began = self.clock()
        while not self._stop.wait(2.0):
            spent = self.clock() - began
            done = min(1.0, spent / self.seconds)
            self.progress(self.stage, self.start + (self.end - self.start) * done,
                          f"training: {spent:.0f} of {self.seconds:.0f} s of its budget")

    def __enter__(self) -> _ticking:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
