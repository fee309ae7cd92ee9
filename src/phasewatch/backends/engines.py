"""Where TensorRT engines are kept: the data folder, never the bundle.

A bundled model's folder is in site-packages: the service cannot write there and ``pip install
--upgrade`` deletes what is there, so the native engines (``phasewatch build-engine``) and the
TensorRT provider's engine cache live under the service's data folder,
``/var/lib/phasewatch/engines/<model>/``, or wherever ``[model.tensorrt] engines`` (and
``[model.tensorrt-ep] engines``) say; the service passes its own data folder's
(``service.config.Config.backend_settings``). The bundle's own ``engines`` folder, where
build-engine wrote them before, is still read. This module imports no GPU library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from phasewatch.backends.base import Table, options_from_table
from phasewatch.bundle import Bundle

# The default data folder's engines (service.config.DataConfig().engines_dir): where a command
# run without a configuration (segment, evaluate) looks, and the service's unless configured.
DEFAULT_ENGINES = Path("/var/lib/phasewatch/engines")


def sanitise(text: str) -> str:
    """A file-name-safe, lower-case form: runs of anything but letters, digits and dots become '-'."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.") or "unknown"


@dataclass(frozen=True)
class EngineOptions:
    """``[model.tensorrt]``: ``engines``, the folder engines are kept in; empty: :data:`DEFAULT_ENGINES`."""

    engines: str = ""

    @classmethod
    def from_table(cls, table: Table) -> EngineOptions:
        return options_from_table(cls, "tensorrt", table)

    @property
    def root(self) -> Path:
        return Path(self.engines) if self.engines else DEFAULT_ENGINES


def engine_folder(root: Path, bundle: Bundle) -> Path:
    """The folder of ``bundle``'s engines under ``root``: one per model name (the engines' file
    names tell the ONNX files of two versions apart)."""
    return root / sanitise(bundle.name)


def engine_folders(root: Path, bundle: Bundle) -> list[Path]:
    """Where ``bundle``'s engines are looked for: under ``root``, then the bundle's own ``engines``."""
    return [engine_folder(root, bundle), bundle.engines_dir]
