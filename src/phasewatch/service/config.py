"""The daemon's configuration: one TOML file, every key optional, checked at start.

A wrong key never surfaces later as a strange behaviour: :func:`load_config` checks
every section and key against the dataclasses below (type, range, choices) and
raises :class:`ConfigError` with one line per problem, each naming the file and
the key, e.g. ``phasewatch.toml: unknown key 'watch.setle_s' (did you mean
'settle_s'?)``. ``systemd/phasewatch.toml.example`` documents every key with its
default.

Relative paths in the file are taken relative to the file's folder (a service has
no meaningful working directory); relative paths from the command line relative to
the working directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phasewatch.backends.base import BackendError
from phasewatch.backends.registry import ENGINE_KINDS, KINDS, Settings, kind_options
from phasewatch.backends.tta import MODES as TTA_MODES
from phasewatch.errors import PhasewatchError
from phasewatch.imageio.formats import SUPPORTED_SUFFIXES
from phasewatch.service.logs import LEVELS
from phasewatch.tomlfile import tomllib

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = Path("/etc/phasewatch/phasewatch.toml")
DEFAULT_INCLUDE = tuple(f"*{suffix}" for suffix in SUPPORTED_SUFFIXES)
OBSERVERS = ("auto", "native", "polling")

# Command-line flags of `phasewatch serve` and `doctor` and the key each one sets.
FLAG_KEYS = {
    "watch": "watch.dir",
    "data": "data.dir",
    "model": "model.path",
    "backend": "model.backend",
    "triton_url": "model.triton.url",
    "host": "server.host",
    "port": "server.port",
    "pixel_size": "calibration.pixel_size_um",  # the file's table name (TABLE_NAMES)
}
# `serve --token` sets [web] token, else this variable does (a secret is better kept out
# of the process list and of a world-readable config file).
TOKEN_ENV = "PHASEWATCH_TOKEN"
MIN_TOKEN_LENGTH = 16


class ConfigError(PhasewatchError):
    """A configuration that cannot be used; one line per wrong key in the message."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _rule(default: Any, **rule: Any) -> Any:
    """A field with its default and its checks: ``min``, ``max`` (inclusive),
    ``above`` (exclusive lower bound), ``choices`` or ``min_length`` (of a string that is
    not empty)."""
    if isinstance(default, (tuple, dict)):
        return field(default_factory=lambda: default, metadata=rule)
    return field(default=default, metadata=rule)


@dataclass(frozen=True)
class WatchConfig:
    dir: Path = Path("/srv/phasewatch/incoming")
    recursive: bool = False
    include: tuple[str, ...] = _rule(DEFAULT_INCLUDE)
    exclude: tuple[str, ...] = _rule(())
    observer: str = _rule("auto", choices=OBSERVERS)
    poll_interval_s: float = _rule(2.0, above=0.0)
    settle_s: float = _rule(1.0, min=0.0)
    # A file closed after writing (inotify close-write) or renamed into the folder is complete:
    # reported at once, without the settle wait. false: every file waits settle_s (writers
    # that close and reopen a file while writing it). Polling observers always settle.
    close_write: bool = True
    # A TIFF whose metadata call it a Z stack (ImageJ slices > 1, OME SizeZ > 1) is one volume:
    # segmented slice by slice, measured in 3D, recorded as one result. false: its pages are
    # the pages of one field, as any other multi-page TIFF's are.
    volumes: bool = True


@dataclass(frozen=True)
class PixelSizeConfig:
    """Pixel sizes for files whose metadata carry none (a file's own pixel size wins); the
    ``[calibration]`` table (:data:`TABLE_NAMES`)."""

    pixel_size_um: float = _rule(0.0, min=0.0)  # every such file; 0 = unknown
    # sub-folder of the watch folder -> µm per pixel; the deepest folder holding the file wins
    folders: dict[str, float] = _rule({})

    def pixel_size_for(self, path: Path, watch_root: Path) -> float | None:
        """The configured pixel size of a file in the watch folder, or None."""
        try:
            parts = path.relative_to(watch_root).parent.parts
        except ValueError:
            parts = ()
        for depth in range(len(parts), 0, -1):
            size = self.folders.get("/".join(parts[:depth]))
            if size:
                return size
        return self.pixel_size_um or None


@dataclass(frozen=True)
class DataConfig:
    dir: Path = Path("/var/lib/phasewatch")

    @property
    def database(self) -> Path:
        return self.dir / "phasewatch.sqlite3"

    @property
    def results_dir(self) -> Path:
        return self.dir / "results"

    @property
    def engines_dir(self) -> Path:
        """TensorRT engines and caches, built on this machine (never in a bundle: read-only)."""
        return self.dir / "engines"

    def result_dir(self, file_id: int) -> Path:
        """Where the outputs of the file with queue id ``file_id`` go."""
        return self.results_dir / f"{file_id:06d}"


@dataclass(frozen=True)
class ModelConfig:
    name: str = ""  # a bundled model; empty: the service's default model
    path: str = ""  # a bundle folder; wins over name when set
    backend: str = _rule("auto", choices=KINDS)
    batch: int = _rule(8, min=1, max=1024)
    overlap: int = _rule(0, min=0)  # pixels; 0 = the model's halo, the smallest safe overlap
    tta: str = _rule("none", choices=TTA_MODES)  # test-time augmentation: none, flips (4 passes), d4 (8)
    # Model-input pixels one backend call may hold (the memory budget of inference): a field
    # that fits is run whole, a larger one in tiles as large as fit (bundles with dynamic sizes).
    tile_megapixels: float = _rule(2.0, above=0.0)  # about 1 GB on the CPU for the bundled models
    # The backends' own settings: the [model.<kind>] tables (e.g. [model.triton] url = ...),
    # each checked at load by its backend's module; not a key of [model] itself.
    backend_settings: dict[str, dict[str, Any]] = _rule({}, table_of_tables=True)

    @property
    def ref(self) -> str | None:
        """What to hand to ``load_bundle``: the folder, else the bundled name, else None."""
        return self.path or self.name or None

    @property
    def settings(self) -> Settings:
        """The kinds' tables, as ``pipeline.open_model`` and ``registry.choose_backend`` take them."""
        return self.backend_settings


@dataclass(frozen=True)
class SpecimenConfig:
    per_subfolder: bool = False
    target_relative_accuracy: float = _rule(10.0, above=0.0, max=100.0)  # percent
    # Fields the model flags as outside its experience count before an operator accepts
    # them; off by default, as their numbers may be wrong.
    count_flagged: bool = False

    @property
    def target_ra(self) -> float:
        """The target relative accuracy as a fraction, as ``stats`` takes it."""
        return self.target_relative_accuracy / 100.0


@dataclass(frozen=True)
class QueueConfig:
    max_attempts: int = _rule(3, min=1, max=100)


@dataclass(frozen=True)
class WorkersConfig:
    # A stage holding one item with no progress this long is stuck (a hung backend call, a
    # wedged decoder): /healthz fails and the watchdog pings stop, so systemd restarts us.
    # Inference beats once per batch, so this bounds one batch, not one huge image.
    stall_timeout_s: float = _rule(300.0, above=0.0)
    # Decoded pixels held between decoding and writing: bounds memory whatever the file
    # sizes, while keeping enough images ahead for full inference batches.
    in_flight_megapixels: float = _rule(256.0, above=0.0)


@dataclass(frozen=True)
class LimitsConfig:
    # A field larger than this is refused from its header, one line: on a CPU backend an
    # 8000 x 8000 (64 MP) field holds inference, and every file behind it, for minutes (the
    # bundled superalloy model: about 1.4 s per megapixel on one core). Raise it where the
    # backend is fast enough (a GPU).
    max_megapixels: float = _rule(50.0, above=0.0)
    # Files are decoded in a child process under these bounds; a file that needs more time
    # or memory fails with one line, and the next file gets a fresh decoder.
    decode_timeout_s: float = _rule(30.0, above=0.0)
    decode_memory_mb: int = _rule(2048, min=256)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = _rule(8650, min=1, max=65535)


@dataclass(frozen=True)
class WebConfig:
    """Who may use the page and API (``webui.security``, ``webui.server``)."""

    # Shared secret; empty = none, allowed only while the page listens on loopback.
    token: str = _rule("", min_length=MIN_TOKEN_LENGTH)
    # Host names (in the Host header) the page answers to besides localhost, 127.0.0.1,
    # ::1 and [server] host: the names and addresses people type to reach it.
    allowed_hosts: tuple[str, ...] = _rule(())
    # Each live stream holds a server thread; more are refused (503) and retried.
    max_streams: int = _rule(16, min=1, max=256)
    max_streams_per_client: int = _rule(4, min=1, max=256)
    # A socket with no traffic, or still sending its request, this long is closed.
    idle_timeout_s: int = _rule(30, min=1, max=3600)
    max_connections: int = _rule(1000, min=16, max=100000)
    # A browser's sign-in lasts this long; then the server refuses its cookie (sign in again).
    session_hours: float = _rule(12.0, above=0.0, max=24.0 * 366)


@dataclass(frozen=True)
class LoggingConfig:
    level: str = _rule("INFO", choices=LEVELS)


@dataclass(frozen=True)
class Config:
    watch: WatchConfig = field(default_factory=WatchConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    specimen: SpecimenConfig = field(default_factory=SpecimenConfig)
    pixel_size: PixelSizeConfig = field(default_factory=PixelSizeConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    web: WebConfig = field(default_factory=WebConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    source: Path | None = None  # the file read; None when every value is a default

    @property
    def backend_settings(self) -> Settings:
        """The [model.<kind>] tables as the service opens its backend with them: the engine
        kinds keep their engines in the data folder unless their table names another folder."""
        tables = {kind: dict(table) for kind, table in self.model.settings.items()}
        for kind in ENGINE_KINDS:
            tables.setdefault(kind, {}).setdefault("engines", str(self.data.engines_dir))
        return tables


# The file's name of a table whose field in Config is named otherwise: the pixel sizes keep their 0.1
# table, [calibration], so that every config file still loads, while "calibration" in the code means
# trust calibration only.
TABLE_NAMES = {"pixel_size": "calibration"}
_FIELDS = {table: name for name, table in TABLE_NAMES.items()}
# table name -> its dataclass
SECTIONS: dict[str, type] = {
    TABLE_NAMES.get(name, name): type_ for name, type_ in typing.get_type_hints(Config).items() if name != "source"
}


class _Invalid(ValueError):
    """A value that does not fit its key; the message is the reason."""


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _coerce(value: Any, type_: Any, rule: Mapping[str, Any], base: Path) -> Any:
    if type_ is bool:
        if not isinstance(value, bool):
            raise _Invalid(f"must be true or false, got {_type_name(value)} {value!r}")
        return value
    if type_ in (int, float):
        # TOML keeps integers and booleans apart from floats; a bool is never a number here.
        ok = int if type_ is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok):
            want = "an integer" if type_ is int else "a number"
            raise _Invalid(f"must be {want}, got {_type_name(value)} {value!r}")
        value = type_(value)
        if "min" in rule and value < rule["min"]:
            raise _Invalid(f"must be >= {rule['min']}, got {value}")
        if "above" in rule and value <= rule["above"]:
            raise _Invalid(f"must be > {rule['above']}, got {value}")
        if "max" in rule and value > rule["max"]:
            raise _Invalid(f"must be <= {rule['max']}, got {value}")
        return value
    if type_ is str:
        if not isinstance(value, str):
            raise _Invalid(f"must be a string, got {_type_name(value)} {value!r}")
        if value and len(value) < rule.get("min_length", 0):
            # The value is a secret: the message never repeats it.
            raise _Invalid(f"must be empty or at least {rule['min_length']} characters long")
        choices = rule.get("choices")
        if choices is None:
            return value
        # Log levels are written in either case; other choices are lower-case words.
        normal = value.upper() if choices is LEVELS else value
        if normal not in choices:
            raise _Invalid(f"must be one of {', '.join(choices)}, got {value!r}")
        return normal
    if type_ is Path:
        if not isinstance(value, str) or not value:
            raise _Invalid(f"must be a non-empty path string, got {_type_name(value)} {value!r}")
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path
    if typing.get_origin(type_) is dict:  # folder -> pixel size
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and k and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                for k, v in value.items()):
            raise _Invalid(f"must be a table of folder names to positive numbers, got {value!r}")
        return {k.strip("/"): float(v) for k, v in value.items()}
    # The only other field type is a list of glob patterns.
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _Invalid(f"must be a list of non-empty strings, got {value!r}")
    return tuple(value)


def _suggest(word: str, known: list[str], form: str = "{}") -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f" (did you mean '{form.format(close[0])}'?)" if close else ""


def _section_values(
    cls: type, raw: Mapping[str, Any], section: str, where: str, base: Path, errors: list[str]
) -> dict[str, Any]:
    """The checked values of one section's keys; problems go to ``errors``."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in fields or fields[key].metadata.get("table_of_tables"):
            errors.append(f"{where}: unknown key '{section}.{key}'{_suggest(key, list(fields))}")
            continue
        try:
            values[key] = _coerce(value, hints[key], fields[key].metadata, base)
        except _Invalid as exc:
            errors.append(f"{where}: '{section}.{key}' {exc}")
    return values


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError([f"{path}: no such configuration file"]) from exc
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc


def _overrides_as_tables(overrides: Mapping[str, Any], errors: list[str]) -> dict[str, dict]:
    tables: dict[str, dict] = {}
    for flag, value in overrides.items():
        if value is None:  # a flag that was not given
            continue
        key = FLAG_KEYS.get(flag, flag)
        section, _, name = key.partition(".")
        if not name:
            errors.append(f"command line: unknown option '{flag}'{_suggest(flag, list(FLAG_KEYS))}")
            continue
        if isinstance(value, Path):
            value = str(value)
        table = tables.setdefault(section, {})
        if "." in name:  # a key of a sub-table: model.triton.url
            sub, _, name = name.partition(".")
            table = table.setdefault(sub, {})
        table[name] = value
    return tables


# [model] keys of phasewatch 0.1, read as their [model.triton] keys with a warning.
DEPRECATED_MODEL_KEYS = {"triton_url": "url", "triton_model": "model", "triton_protocol": "protocol",
                         "triton_timeout_s": "timeout_s", "triton_shared_memory": "shared_memory"}


def _backend_settings(
    model: ModelConfig, raw: dict[str, Any], where: str, errors: list[str]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """[model]'s own keys, and its [model.<kind>] tables merged over ``model``'s, each checked
    by its backend (``registry.kind_options``); the deprecated ``triton_*`` keys are mapped."""
    plain: dict[str, Any] = {}
    settings = {kind: dict(table) for kind, table in model.backend_settings.items()}
    for key, value in raw.items():
        if key in DEPRECATED_MODEL_KEYS:
            log.warning("%s: 'model.%s' is deprecated, read as [model.triton] %s", where, key,
                        DEPRECATED_MODEL_KEYS[key])
            settings.setdefault("triton", {})[DEPRECATED_MODEL_KEYS[key]] = value
        elif isinstance(value, dict):
            settings.setdefault(key, {}).update(value)
        else:
            plain[key] = value
    for kind, table in settings.items():
        try:
            kind_options(kind, table)
        except BackendError as exc:
            errors.append(f"{where}: {exc}{_suggest(kind, list(KINDS[1:]), '[model.{}]') if kind not in KINDS else ''}")
    return plain, settings


def _merge(
    config: Config, tables: Mapping[str, Any], where: str, base: Path, errors: list[str]
) -> Config:
    changes = {}
    for section, raw in tables.items():
        if section not in SECTIONS:
            hint = _suggest(section, list(SECTIONS), "[{}]")
            errors.append(f"{where}: unknown section '[{section}]'{hint}")
            continue
        if not isinstance(raw, dict):
            errors.append(f"{where}: '{section}' must be a table ([{section}]), got {raw!r}")
            continue
        extra: dict[str, Any] = {}
        if section == "model":
            raw, extra["backend_settings"] = _backend_settings(config.model, raw, where, errors)
        values = _section_values(SECTIONS[section], raw, section, where, base, errors)
        name = _FIELDS.get(section, section)
        changes[name] = dataclasses.replace(getattr(config, name), **values, **extra)
    return dataclasses.replace(config, **changes)


def load_config(
    path: Path | str | None = None, overrides: Mapping[str, Any] | None = None
) -> Config:
    """Read the TOML file (``None``: the default path if it exists, else all defaults),
    then apply command-line ``overrides``: flag names of ``phasewatch serve`` (``watch``,
    ``data``, ``model``, ``backend``, ``host``, ``port``, ``pixel_size``) or dotted keys such as
    ``"watch.settle_s"``; ``None`` values are ignored. Raises :class:`ConfigError`."""
    errors: list[str] = []
    config = Config()
    if path is None and DEFAULT_CONFIG_PATH.is_file():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        path = Path(path)
        config = _merge(config, _read_toml(path), str(path), path.resolve().parent, errors)
        config = dataclasses.replace(config, source=path)
    tables = _overrides_as_tables(overrides or {}, errors)
    config = _merge(config, tables, "command line", Path.cwd(), errors)
    if errors:
        raise ConfigError(errors)
    return config


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags ``serve`` and ``doctor`` share: a config file and the common overrides."""
    parser.add_argument("--config", type=Path, default=None,
                        help=f"TOML file (default {DEFAULT_CONFIG_PATH} when it exists)")
    parser.add_argument("--watch", type=Path, help="folder the microscope writes into (only read)")
    parser.add_argument("--data", type=Path, help="folder for the database and results")
    parser.add_argument("--model", help="bundle folder or bundled model name")
    parser.add_argument("--backend", choices=KINDS)
    parser.add_argument("--triton-url", help="host:port of the Triton server for --backend triton")
    parser.add_argument("--host", help="address the web page listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port of the web page (default 8650)")
    parser.add_argument("--pixel-size", type=float, metavar="UM",
                        help="µm per pixel for files whose metadata carry none ([calibration] pixel_size_um)")


def config_from_args(args: argparse.Namespace) -> Config:
    """The configuration ``add_service_arguments``' flags describe (and ``--token``, else
    ``PHASEWATCH_TOKEN``, where the command has it); raises :class:`ConfigError`."""
    overrides = {flag: getattr(args, flag) for flag in FLAG_KEYS}
    if hasattr(args, "token"):
        overrides["web.token"] = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    return load_config(args.config, overrides)
