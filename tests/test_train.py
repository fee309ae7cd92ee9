"""The whole offline path on real micrographs: train a tiny model, export it, evaluate it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phasewatch.app.cli import main
from phasewatch.bundle import load_bundle
from phasewatch.export.train import TrainError, learning_rate, load_config, load_splits, schedule_step, train

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "phasewatch" / "export" / "configs"


def tiny_config(tmp_path: Path, steps: int = 3) -> dict:
    """The bundled superalloy recipe, shrunk to seconds: a tiny U-Net, a few steps."""
    config = load_config(CONFIGS / "superalloy.toml")
    config["model"].update(kwargs={"width": 4, "depth": 2}, tile=64)
    config["train"].update(batch=4, epochs=1, steps_per_epoch=steps, warmup_steps=1, time_limit_min=0)
    return config


def test_train_export_evaluate_on_real_tiles(shared_data, tmp_path, capsys):
    config = tiny_config(tmp_path)
    checkpoint = train(config, tmp_path / "run", data_root=shared_data, device="cpu")
    assert checkpoint.is_file()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3]
    assert 0.0 <= log[0]["val_mean_iou"] <= 1.0
    # The logged loss is the epoch's mean per step: CE of 3 classes near log(3) plus half a Dice term, not a sum.
    assert 0.0 < log[0]["loss"] < 2.5

    bundle = load_bundle(tmp_path / "run" / "bundle")
    parity = bundle.manifest["parity"]
    assert parity["argmax_agreement"] >= 0.9999 and parity["max_abs_logit_diff"] <= parity["tolerance"]
    assert bundle.manifest["fp16"]["parity"]["argmax_agreement"] >= 0.999
    assert "validation images" in parity["tiles_source"]
    assert bundle.manifest["data"]["val_images"] == sorted(p.stem for p in (shared_data / "superalloy/val/images")
                                                           .iterdir())
    assert bundle.manifest["training"]["steps"] == 3 and bundle.manifest["training"]["seconds"] > 0
    trust = bundle.manifest["trust"]  # calibrated on the 10 training and 4 validation images
    assert trust["calibration"]["fields"] == 14 and set(trust["limits"]) == {"novelty", "unsure"}

    capsys.readouterr()
    code = main(["evaluate", "--model", str(bundle.path), "--images", str(shared_data / "superalloy/test/images"),
                 "--labels", str(shared_data / "superalloy/test/masks"), "--backend", "cpu", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["images"]) == 4
    assert set(report["per_class"]) == {c.name for c in bundle.classes}
    assert 0.0 <= report["pixel_accuracy"] <= 1.0
    assert all(isinstance(i["trust"]["ok"], bool) for i in report["images"])
    assert report["trust"]["fields"] == 4


def test_same_seed_same_training(shared_data, tmp_path):
    losses = []
    for run in ("a", "b"):
        train(tiny_config(tmp_path, steps=2), tmp_path / run, data_root=shared_data, device="cpu")
        losses.append(json.loads((tmp_path / run / "log.jsonl").read_text())["loss"])
    assert losses[0] == losses[1]


def test_holdout_validation_never_uses_the_test_split(shared_data):
    config = load_config(CONFIGS / "uhcs-microconstituent.toml")
    splits = load_splits(config, shared_data)
    val, train_names = {s.name for s in splits.val}, {s.name for s in splits.train}
    test_names = {p.stem for p in (shared_data / "uhcs/validate/images").iterdir()}
    assert len(val) == 3 and not val & train_names and not (val | train_names) & test_names


def test_a_time_limited_run_anneals_by_the_clock():
    assert schedule_step(10, 1000, elapsed=30.0, time_limit=60.0) == 500  # half the time: half the schedule
    assert schedule_step(900, 1000, elapsed=30.0, time_limit=60.0) == 900  # ahead of the clock: by steps
    assert schedule_step(10, 1000, elapsed=90.0, time_limit=60.0) == 1000
    assert schedule_step(10, 1000, elapsed=30.0, time_limit=float("inf")) == 10  # no limit: by steps only


def test_learning_rate_schedules_by_hand():
    assert learning_rate(0, 100, 1.0, "cosine", warmup=10) == pytest.approx(0.1)
    assert learning_rate(10, 110, 1.0, "cosine", warmup=10) == pytest.approx(1.0)
    assert learning_rate(60, 110, 1.0, "cosine", warmup=10) == pytest.approx(0.5)  # half way: (1 + cos(pi/2)) / 2
    assert learning_rate(60, 110, 1.0, "poly", warmup=10, power=1.0) == pytest.approx(0.5)
    with pytest.raises(TrainError, match="unknown schedule"):
        learning_rate(0, 10, 1.0, "step", warmup=0)


def test_config_errors_are_one_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\nmodle = {}\n')
    with pytest.raises(TrainError, match="unknown top-level key") as info:
        load_config(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    assert load_config(path)["model"]["architecture"]


def test_misspelt_keys_are_refused_one_line_each_with_a_suggestion(tmp_path):
    text = (CONFIGS / "superalloy.toml").read_text()
    path = tmp_path / "typos.toml"
    path.write_text(text.replace("epochs = 12", "epocs = 12").replace('name = "gamma matrix"', 'nmae = "gamma matrix"')
                    .replace('architecture = "unet"', 'architecture = "unet"\ninit_form = "superalloy"'))
    with pytest.raises(TrainError) as info:
        load_config(path)
    assert str(info.value).splitlines() == [
        f"{path}: unknown key 'classes[0].nmae' (did you mean 'name'?)",
        f"{path}: unknown key 'model.init_form' (did you mean 'init_from'?)",
        f"{path}: unknown key 'train.epocs' (did you mean 'epochs'?)",
    ]
