"""Specimen-held-out model selection and leave-specimens-out cross-validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from phasewatch.app.cli import main
from phasewatch.export.crossval import cross_validate, deal_folds, report_table
from phasewatch.export.datasets import Sample
from phasewatch.export.train import TrainError, load_config, load_splits, specimen_of, specimen_splits

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "phasewatch" / "export" / "configs"


def sample(name: str) -> Sample:
    return Sample(name, np.zeros((1, 4, 4), np.float32), np.zeros((4, 4), np.uint8), Path(f"{name}.tif"))


def test_specimen_is_the_pattern_match_in_the_stem():
    assert specimen_of("040617#3_S0400015", "^[^_]+") == "040617#3"
    assert specimen_of("S879_062216#1", "^[^_]+") == "S879"
    assert specimen_of("_odd", "^[^_]+") == "_odd"  # no match: the whole stem is its own specimen


def test_specimen_splits_keep_each_specimen_on_one_side():
    pool = [sample(n) for n in ("a_1", "a_2", "b_1", "c_1", "c_2", "d_1")]
    data = {"specimen": "^[^_]+", "val_specimens": ["c"], "leave_out_specimens": ["d"]}
    train, val, groups = specimen_splits(pool, data, "cfg.toml")
    assert [s.name for s in train] == ["a_1", "a_2", "b_1"]
    assert [s.name for s in val] == ["c_1", "c_2"]
    assert groups == {"pattern": "^[^_]+", "train": ["a", "b"], "val": ["c"], "left_out": ["d"]}


@pytest.mark.parametrize(("data", "message"), [
    ({"specimen": "^[^_]+", "val_specimens": ["x"]}, "val_specimens names ['x'], not among the specimens"),
    ({"specimen": "^[^_]+"}, "val_specimens must name the validation specimens"),
    ({"specimen": "([", "val_specimens": ["a"]}, "is not a regular expression"),
    ({"specimen": "^[^_]+", "val_specimens": ["a"], "leave_out_specimens": ["b"]}, "no training images left"),
])
def test_specimen_splits_refuse_what_cannot_be_held_out(data, message):
    with pytest.raises(TrainError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        specimen_splits([sample("a_1"), sample("b_1")], data, "cfg.toml")


def test_deal_folds_balances_image_counts_and_holds_each_specimen_out_once():
    counts = {"a": 3, "b": 2, "c": 2, "d": 1, "e": 1, "f": 1}
    folds = deal_folds(counts, 3)
    assert sorted(s for fold in folds for s in fold) == sorted(counts)
    assert sorted(sum(counts[s] for s in fold) for fold in folds) == [3, 3, 4]
    assert deal_folds(counts, 6) == [["a"], ["b"], ["c"], ["d"], ["e"], ["f"]]  # leave-one-specimen-out
    with pytest.raises(TrainError, match="needs 2 to 6"):
        deal_folds(counts, 7)


def test_bundled_ebc_recipe_validates_on_a_specimen_it_never_trains_on(shared_data):
    splits = load_splits(load_config(CONFIGS / "ebc.toml"), shared_data)
    train_specimens = {specimen_of(s.name, "^[^_]+") for s in splits.train}
    val_specimens = {specimen_of(s.name, "^[^_]+") for s in splits.val}
    assert val_specimens == {"070516#3"} and not train_specimens & val_specimens
    assert splits.description["specimens"]["val"] == ["070516#3"]
    test_stems = {p.stem for p in (shared_data / "ebc/test/images").iterdir()}
    assert not {s.name for s in splits.train + splits.val} & test_stems


def test_cross_validation_scores_every_specimen_on_a_model_that_never_saw_it(shared_data, tmp_path):
    config = load_config(CONFIGS / "ebc.toml")
    config["model"].update(kwargs={"width": 4, "depth": 2}, tile=64, export_tile=64)
    del config["model"]["init_from"]  # the bundled parent is a full-size U-Net
    config["train"].update(batch=2, epochs=1, steps_per_epoch=2, warmup_steps=1, time_limit_min=0)
    report = cross_validate(config, tmp_path / "cv", 3, shared_data, "cpu")
    specimens = [e["specimen"] for e in report["specimens"]]
    all_specimens = {specimen_of(p.stem, "^[^_]+") for split in ("train", "val", "test")
                     for p in (shared_data / "ebc" / split / "images").iterdir()}
    assert sorted(specimens) == sorted(all_specimens)  # each held out exactly once
    for fold_index, fold in enumerate(report["folds"], start=1):
        checkpoint_data = json.loads((tmp_path / "cv" / f"fold-{fold_index}" / "log.jsonl").read_text()
                                     .splitlines()[0])
        assert checkpoint_data["step"] == 2
        entries = [e for e in report["specimens"] if e["fold"] == fold_index]
        assert {e["specimen"] for e in entries} == set(fold)
        assert all(e["validation_specimen"] not in fold for e in entries)
    assert all(0.0 <= e["pixel_accuracy"] <= 1.0 and set(e["iou"]) == {"background", "oxide", "crack"}
               for e in report["specimens"])
    assert json.loads((tmp_path / "cv" / "report.json").read_text())["specimens"] == report["specimens"]
    assert report_table(report).count("\n") == len(specimens) + 1


def test_cross_validate_refuses_a_config_without_specimens(tmp_path, capsys):
    code = main(["cross-validate", "--config", str(CONFIGS / "superalloy.toml"), "--folds", "2",
                 "--out", str(tmp_path / "cv")])
    assert code == 1
    assert "cross-validation needs [data] specimen" in capsys.readouterr().err
