"""Issue 22's end-to-end check on real data, through the running service and its HTTP API.

The daemon runs the bundled superalloy model; X-ray tomography slices of an Al-Si alloy
(all 30 of ``tomography/train``) are copied into its watch folder and come out flagged
(another material). Labels for three of them are PUT through the API as a new two-class material,
taken from their label files as if painted; ``POST /api/teach`` fine-tunes the bundled
superalloy model on them (``phasewatch teach`` in a niced process of its own) with a CPU
budget of :data:`BUDGET_MIN` minutes; the gate must pass; the model is activated; the ten
``tomography/validate`` slices copied in afterwards must be measured by it with mIoU >= 0.85
against their labels, and trusted. Skips, saying why, without the shared data or torch.

``PHASEWATCH_TEACH_SWEEP=1`` also runs the same with 1 and 6 labelled slices (the issue's
closing-note numbers; minutes each): with one there is nothing to hold out, so the gate fails
as it must and its model is scored on the validation slices directly instead.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import time
from contextlib import closing
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from phasewatch.app.wiring import start_service, stop_service
from phasewatch.service.config import load_config

pytestmark = pytest.mark.slow

BUDGET_MIN = 2.0  # CPU minutes per training CPU (export/teach.py, training_clock)
SWEEP = pytest.mark.skipif(not os.environ.get("PHASEWATCH_TEACH_SWEEP"), reason="PHASEWATCH_TEACH_SWEEP not set")
# Which of the thirty slices are labelled: spread over them, as an operator would pick.
CASES = [pytest.param((0, 10, 20), id="3-labelled"), pytest.param((0,), id="1-labelled", marks=SWEEP),
         pytest.param((0, 5, 10, 15, 20, 25), id="6-labelled", marks=SWEEP)]
MATERIAL = "al-si tomography"
CLASSES = [{"name": "matrix", "colour": "#6e6e6e", "role": "phase"},
           {"name": "second phase", "colour": "#ff7800", "role": "phase"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_done(url: str, names: set[str], timeout: float = 300) -> dict[str, dict]:
    """The fields of ``names`` once every one has ended (done or failed), by file name."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        images = requests.get(f"{url}/api/images", params={"limit": 200}, timeout=10).json()
        found = {Path(i["path"]).name: i for i in images if Path(i["path"]).name in names}
        if len(found) == len(names) and all(i["state"] in ("done", "failed") for i in found.values()):
            return found
        time.sleep(0.5)
    raise AssertionError(f"not all of {sorted(names)} were measured within {timeout} s")


def copy_in(sources: list[Path], watch: Path) -> set[str]:
    for source in sources:
        shutil.copy(source, watch / f".{source.name}.part")
        (watch / f".{source.name}.part").rename(watch / source.name)  # appears whole
    return {s.name for s in sources}


def label_png(path: Path) -> str:
    labels = np.load(path).astype(np.uint8)
    return base64.b64encode(cv2.imencode(".png", labels)[1].tobytes()).decode()


def miou(confusion: np.ndarray) -> tuple[float, np.ndarray]:
    iou = np.diag(confusion) / (confusion.sum(0) + confusion.sum(1) - np.diag(confusion))
    return float(iou.mean()), iou


def add(confusion: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> None:
    confusion += np.bincount(2 * truth.astype(np.int64).ravel() + predicted.ravel(), minlength=4).reshape(2, 2)


@pytest.mark.parametrize("chosen", CASES)
def test_teach_a_new_material_through_the_api(chosen: tuple[int, ...], shared_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="teaching needs torch (the export extra)")
    tomography = shared_data / "tomography"
    watch, data = tmp_path / "watch", tmp_path / "data"
    watch.mkdir()
    config = load_config(None, {"watch": str(watch), "data": str(data), "model": "superalloy", "port": free_port(),
                                "backend": "cpu"})
    service = start_service(config)
    url = service.url
    try:
        train = sorted((tomography / "train" / "images").glob("*.png"))
        before = wait_done(url, copy_in(train, watch))
        assert all(i["state"] == "done" and not i["trust"]["ok"] for i in before.values()), \
            "the superalloy model should flag tomography slices"

        answer = requests.post(f"{url}/api/materials", json={"name": MATERIAL, "classes": CLASSES, "who": "e2e"},
                               timeout=10)
        assert answer.status_code == 201, answer.text
        labelled = []
        for source in (train[i] for i in chosen):
            field = before[source.name]
            put = requests.put(f"{url}/api/images/{field['id']}/labels", timeout=30, json={
                "material": MATERIAL, "who": "e2e",
                "png": label_png(tomography / "train" / "labels" / f"{source.stem}.npy")})
            assert put.status_code == 201, put.text
            labelled.append(field["id"])

        started = time.time()
        answer = requests.post(f"{url}/api/teach", timeout=10, json={
            "material": MATERIAL, "base": "superalloy", "fields": labelled, "budget_min": BUDGET_MIN, "who": "e2e"})
        assert answer.status_code == 202, answer.text
        job = answer.json()["job"]
        progress = []
        while True:
            state = requests.get(f"{url}/api/teach/{job}", timeout=10).json()
            progress.append(state["progress"])
            if state["state"] in ("done", "failed", "cancelled"):
                break
            assert time.time() - started < 3600, f"teach job still {state['state']} after an hour"
            time.sleep(2)
        wall = time.time() - started
        assert state["state"] == "done", state["error"]
        assert progress == sorted(progress) and 0 < progress[len(progress) // 2] < 1
        gate, model = state["gate"], state["model"]
        print(f"\n{len(chosen)} labelled: teach job {wall:.0f} s wall for a {BUDGET_MIN} min CPU budget; "
              f"gate {'passed' if gate['passed'] else 'failed: ' + '; '.join(gate['reasons'])}; held-out mIoU "
              f"{gate['held_out']['candidate']['mean_iou']}")
        assert model == f"{MATERIAL}@1"
        listed = {m["name"]: m for m in requests.get(f"{url}/api/models", timeout=10).json()["models"]}
        assert listed[model]["parent"] == "superalloy" and listed[model]["source"] == "taught"
        validate = sorted((tomography / "validate" / "images").glob("*.png"))
        if len(chosen) == 1:  # nothing held out: the gate must fail, and the model may not measure
            assert not gate["passed"] and "no held-out field to score" in gate["reasons"]
            refused = requests.post(f"{url}/api/models/{model}/activate", json={"who": "e2e"}, timeout=30)
            assert refused.status_code == 409
            from phasewatch.core.pipeline import open_model, process_file

            confusion, trusted = np.zeros((2, 2), np.int64), 0
            with closing(open_model(data / "models" / model, "cpu", threads=1)) as taught:
                for source in validate:
                    field = process_file(source, taught).fields[0]
                    add(confusion, np.load(tomography / "validate" / "labels" / f"{source.stem}.npy"), field.classes)
                    trusted += field.record["trust"]["ok"]
            print(f"validate (scored directly): mIoU {miou(confusion)[0]:.4f}, {trusted} of {len(validate)} trusted")
            return
        assert gate["passed"], gate["reasons"]
        assert gate["held_out"]["images"] and set(gate["held_out"]["images"]) <= set(labelled)
        assert (data / "models" / model / "model.onnx").is_file()

        answer = requests.post(f"{url}/api/models/{model}/activate", json={"who": "e2e"}, timeout=30)
        assert answer.status_code == 200, answer.text

        after = wait_done(url, copy_in(validate, watch))
        confusion, flagged = np.zeros((2, 2), np.int64), []
        for source in validate:
            field = after[source.name]
            assert field["state"] == "done", field["error"]
            if not field["trust"]["ok"]:
                flagged.append(f"{source.name}: {field['trust']['reasons']}")
            detail = requests.get(f"{url}/api/images/{field['id']}", timeout=10).json()
            assert detail["provenance"]["model"] == model
            picture = requests.get(f"{url}/api/images/{field['id']}/classes.png", timeout=10)
            classes = cv2.imdecode(np.frombuffer(picture.content, np.uint8), cv2.IMREAD_UNCHANGED)
            add(confusion, np.load(tomography / "validate" / "labels" / f"{source.stem}.npy"), classes)
        mean, iou = miou(confusion)
        print(f"validate (through the daemon): mIoU {mean:.4f} (matrix {iou[0]:.4f}, second phase {iou[1]:.4f}) "
              f"over {len(validate)} slices, {len(validate) - len(flagged)} trusted")
        assert mean >= 0.85
        assert not flagged, flagged
        assert service.store.audit.verify().ok
        actions = [r["action"] for r in service.store.audit.rows()]
        assert {"material.create", "labels.save", "teach.start", "teach.done", "model.activate"} <= set(actions)
    finally:
        stop_service(service)
