"""``phasewatch train``'s recipe overrides: one run's changes to a config, and its clock."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import pytest

from phasewatch.app.commands import train as train_command
from phasewatch.app.common import add_recipe_overrides, apply_recipe_overrides


def _config() -> dict[str, Any]:
    return {"train": {"lr": 3e-3, "time_limit_min": 30}, "model": {"architecture": "unet"}}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_recipe_overrides(parser)
    return parser.parse_args(argv)


def test_overrides_replace_only_what_they_name() -> None:
    config = apply_recipe_overrides(_config(), _parse(["--lr", "1e-3", "--init-from", "superalloy",
                                                       "--time-limit-min", "15"]))
    assert config == {"train": {"lr": 1e-3, "time_limit_min": 15.0},
                      "model": {"architecture": "unet", "init_from": "superalloy"}}
    assert apply_recipe_overrides(_config(), _parse([])) == _config()


@pytest.mark.parametrize(("flag", "clock"), [([], time.time), (["--cpu-clock"], time.process_time)])
def test_cpu_clock_trains_by_the_process_cpu_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  flag: list[str], clock: Any) -> None:
    import phasewatch.export.train as train_module

    config_file = tmp_path / "recipe.toml"
    config_file.write_text('name = "x"\n[train]\nlr = 0.003\n[model]\narchitecture = "unet"\n')
    seen: dict[str, Any] = {}

    def fake_train(config: dict[str, Any], out: Path, *args: Any, clock: Any) -> Path:
        seen.update(config=config, clock=clock)
        return out / "checkpoint.pt"

    monkeypatch.setattr(train_module, "load_config", lambda path: _config())
    monkeypatch.setattr(train_module, "train", fake_train)
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    args = parser.parse_args(["--config", str(config_file), "--out", str(tmp_path / "run"), "--lr", "2e-3", *flag])
    assert train_command.run(args) == 0
    assert seen["clock"] is clock
    assert seen["config"]["train"]["lr"] == 2e-3
