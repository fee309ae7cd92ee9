"""The TOML configuration: defaults, validation messages, command-line overrides."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from phasewatch.backends.triton.client import TritonOptions
from phasewatch.service import config as cfg
from phasewatch.service.config import Config, ConfigError, load_config
from phasewatch.service.logs import LEVELS

EXAMPLE = Path(__file__).resolve().parents[1] / "systemd" / "phasewatch.toml.example"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "phasewatch.toml"
    path.write_text(text)
    return path


def errors_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value.errors


def test_empty_file_gives_the_documented_defaults(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config.watch.settle_s == 1.0
    assert config.watch.include == ("*.tif", "*.tiff", "*.png", "*.jpg", "*.jpeg", "*.bmp")
    assert config.watch.observer == "auto"
    assert config.specimen.target_relative_accuracy == 10.0
    assert config.specimen.target_ra == pytest.approx(0.10)
    assert config.specimen.count_flagged is False  # flagged fields wait for an operator
    assert config.queue.max_attempts == 3
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8650)
    assert config.source == tmp_path / "phasewatch.toml"


def test_example_file_documents_every_key_with_its_default():
    config = load_config(EXAMPLE)
    # [model.triton] is written out with its defaults; every other section is the default itself
    settings = config.model.backend_settings
    assert set(settings) == {"triton"}
    assert TritonOptions.from_table(settings["triton"]) == TritonOptions()
    default = dataclasses.replace(config, source=None, model=dataclasses.replace(config.model, backend_settings={}))
    assert default == Config()
    text = EXAMPLE.read_text()
    for section, cls in cfg.SECTIONS.items():
        assert f"[{section}]" in text
        for f in dataclasses.fields(cls):
            if f.name != "backend_settings":  # the [model.<kind>] tables, not a key
                assert re.search(rf"^{f.name} = ", text, re.M), f"{section}.{f.name} not in the example"
    triton = text[text.index("[model.triton]"):]
    for f in dataclasses.fields(TritonOptions):
        assert re.search(rf"^{f.name} = ", triton, re.M), f"model.triton.{f.name} not in the example"


def test_values_are_read_and_relative_paths_follow_the_file(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
[watch]
dir = "incoming"
recursive = true
exclude = ["*_overview.tif"]
observer = "polling"
settle_s = 0.5
[data]
dir = "/var/tmp/pw"
[model]
path = "bundles/steel"
batch = 4
[specimen]
count_flagged = true
[logging]
level = "debug"
""",
        )
    )
    assert config.watch.dir == tmp_path / "incoming"
    assert config.watch.recursive is True
    assert config.watch.exclude == ("*_overview.tif",)
    assert config.watch.observer == "polling"
    assert config.watch.settle_s == 0.5
    assert config.data.database == Path("/var/tmp/pw/phasewatch.sqlite3")
    assert config.model.ref == "bundles/steel"
    assert config.model.batch == 4
    assert config.specimen.count_flagged is True
    assert config.logging.level == "DEBUG"


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    errors = errors_of(tmp_path, "[watch]\nsetle_s = 2\n")
    assert errors == [
        f"{tmp_path / 'phasewatch.toml'}: unknown key 'watch.setle_s' (did you mean 'settle_s'?)"
    ]


def test_unknown_section_is_named_with_a_suggestion(tmp_path):
    (error,) = errors_of(tmp_path, "[wach]\ndir = '/x'\n")
    assert error.endswith("phasewatch.toml: unknown section '[wach]' (did you mean '[watch]'?)")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[watch]\nrecursive = 'yes'", "'watch.recursive' must be true or false, got a string"),
        ("[server]\nport = 70000", "'server.port' must be <= 65535, got 70000"),
        ("[server]\nport = 80.5", "'server.port' must be an integer, got a number 80.5"),
        ("[queue]\nmax_attempts = 0", "'queue.max_attempts' must be >= 1, got 0"),
        ("[watch]\npoll_interval_s = 0", "'watch.poll_interval_s' must be > 0.0, got 0.0"),
        ("[watch]\nobserver = 'inotify'", "'watch.observer' must be one of auto, native, polling"),
        ("[watch]\ninclude = '*.tif'", "'watch.include' must be a list of non-empty strings"),
        ("[model]\nbatch = true", "'model.batch' must be an integer, got a boolean True"),
        ("[logging]\nlevel = 'loud'", "'logging.level' must be one of DEBUG, INFO"),
        ("watch = 3", "'watch' must be a table ([watch]), got 3"),
    ],
)
def test_wrong_values_get_one_clear_line(tmp_path, text, expected):
    (error,) = errors_of(tmp_path, text)
    assert error.startswith(f"{tmp_path / 'phasewatch.toml'}: ")
    assert expected in error
    assert "\n" not in error


def test_every_wrong_key_is_reported_at_once(tmp_path):
    errors = errors_of(tmp_path, "[watch]\nsetle_s = 2\n[server]\nport = -1\n")
    assert len(errors) == 2
    assert "watch.setle_s" in errors[0] and "server.port" in errors[1]


def test_integer_is_accepted_where_a_number_is_expected(tmp_path):
    assert load_config(write(tmp_path, "[watch]\nsettle_s = 2\n")).watch.settle_s == 2.0


def test_broken_toml_and_missing_file_name_the_file(tmp_path):
    (error,) = errors_of(tmp_path, "[watch\n")
    assert error.startswith(f"{tmp_path / 'phasewatch.toml'}: not valid TOML")
    with pytest.raises(ConfigError, match=r"nope\.toml: no such configuration file"):
        load_config(tmp_path / "nope.toml")


def test_command_line_overrides_win_over_the_file(tmp_path):
    path = write(tmp_path, "[server]\nport = 9000\nhost = '0.0.0.0'\n[model]\nbackend = 'cpu'\n")
    config = load_config(
        path,
        {"port": 9100, "host": None, "watch": "in", "data": tmp_path / "d", "model": "steel",
         "backend": "cuda", "watch.settle_s": 0.25},
    )
    assert config.server.port == 9100
    assert config.server.host == "0.0.0.0"  # flag not given: the file's value stays
    assert config.watch.dir == Path.cwd() / "in"
    assert config.data.dir == tmp_path / "d"
    assert config.model.ref == "steel"
    assert config.model.backend == "cuda"
    assert config.watch.settle_s == 0.25


def test_bad_override_is_reported_as_command_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, ""), {"port": 0, "bakend": "cpu"})
    assert info.value.errors == [
        "command line: unknown option 'bakend' (did you mean 'backend'?)",
        "command line: 'server.port' must be >= 1, got 0",
    ]


def test_no_path_and_no_default_file_gives_defaults(monkeypatch, tmp_path):
    monkeypatch.setattr(cfg, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    assert load_config(None) == Config()


def test_every_service_flag_sets_a_real_key(tmp_path):
    parser = argparse.ArgumentParser()
    cfg.add_service_arguments(parser)
    argv = ["--config", str(write(tmp_path, "")), "--watch", "in", "--data", "d", "--model", "steel",
            "--backend", "cpu", "--triton-url", "gpu-server:8001", "--host", "0.0.0.0", "--port", "9100",
            "--pixel-size", "0.25"]
    config = cfg.config_from_args(parser.parse_args(argv))
    values = {}
    for flag, key in cfg.FLAG_KEYS.items():
        section, name, *sub = key.split(".")
        section = {table: field for field, table in cfg.TABLE_NAMES.items()}.get(section, section)
        # model.triton.url: a key of a backend's own table, [model.triton]
        values[flag] = config.model.settings[name][sub[0]] if sub else getattr(getattr(config, section), name)
    assert values == {"watch": Path.cwd() / "in", "data": Path.cwd() / "d", "model": "steel",
                      "backend": "cpu", "triton_url": "gpu-server:8001", "host": "0.0.0.0", "port": 9100,
                      "pixel_size": 0.25}


@pytest.mark.parametrize("level", LEVELS)
def test_every_log_level_of_the_logs_module_is_accepted(tmp_path, level):
    assert load_config(write(tmp_path, f"[logging]\nlevel = '{level.lower()}'\n")).logging.level == level


def test_pixel_size_comes_from_the_deepest_configured_folder(tmp_path):
    path = tmp_path / "phasewatch.toml"
    path.write_text('[calibration]\npixel_size_um = 0.5\nfolders = { "sem" = 0.02, "sem/5kx/" = 0.01 }\n')
    pixel_size = cfg.load_config(path).pixel_size
    watch = Path("/watch")
    assert pixel_size.pixel_size_for(watch / "sem/5kx/a.tif", watch) == 0.01
    assert pixel_size.pixel_size_for(watch / "sem/b.tif", watch) == 0.02
    assert pixel_size.pixel_size_for(watch / "optical/c.tif", watch) == 0.5
    assert cfg.PixelSizeConfig().pixel_size_for(watch / "c.tif", watch) is None


def test_a_folder_pixel_size_must_be_positive(tmp_path):
    path = tmp_path / "phasewatch.toml"
    path.write_text('[calibration]\nfolders = { "sem" = -1 }\n')
    with pytest.raises(cfg.ConfigError) as error:
        cfg.load_config(path)
    assert "'calibration.folders' must be a table of folder names to positive numbers" in str(error.value)


def test_serve_pixel_size_is_the_calibration_key_and_checked_like_it(tmp_path):
    """Issue 24: ``serve --pixel-size UM`` equals ``[calibration] pixel_size_um`` (over the file's),
    folders keep theirs, and a negative size is refused with one line."""
    from phasewatch.app.commands import serve

    def serve_args(*argv: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        serve.add_arguments(parser)
        return parser.parse_args(argv)

    path = tmp_path / "phasewatch.toml"
    path.write_text('[calibration]\npixel_size_um = 0.5\nfolders = { "sem" = 0.02 }\n')
    pixel_size = cfg.config_from_args(serve_args("--config", str(path), "--pixel-size", "0.125")).pixel_size
    assert pixel_size == cfg.load_config(path, {"calibration.pixel_size_um": 0.125}).pixel_size
    watch = Path("/watch")
    assert pixel_size.pixel_size_for(watch / "a.tif", watch) == 0.125
    assert pixel_size.pixel_size_for(watch / "sem/b.tif", watch) == 0.02
    with pytest.raises(cfg.ConfigError) as error:
        cfg.config_from_args(serve_args("--config", str(path), "--pixel-size", "-1"))
    assert str(error.value) == "command line: 'calibration.pixel_size_um' must be >= 0.0, got -1.0"
