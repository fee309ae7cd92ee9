"""Packages import one way, down the layers of docs/ARCHITECTURE.md, and never sideways.

Every ``import`` in ``src/phasewatch`` is parsed with ``ast`` (top-level and inside functions
alike, plus ``importlib.import_module("phasewatch....")`` by name), so a lazy import cannot hide
a cycle. A package may import its own modules and any lower layer; packages that share a layer
(``service``, ``webui``, ``export``) never import each other: ``app`` is the one place that
wires them together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "phasewatch"

LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors", "tomlfile"}),
    frozenset({"bundle", "imageio", "atomic_files"}),
    frozenset({"backends"}),
    frozenset({"core"}),
    frozenset({"store"}),
    frozenset({"service", "webui", "export"}),
    frozenset({"app"}),
)
LEVEL = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def top_package(module: str) -> str | None:
    """``phasewatch.core.pipeline`` -> ``core``; anything outside phasewatch -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "phasewatch" and len(parts) > 1 else None


def module_name(path: Path) -> str:
    """The dotted name from the last folder called phasewatch down (the tree under test)."""
    parts = path.with_suffix("").parts
    parts = parts[len(parts) - 1 - parts[::-1].index("phasewatch"):]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _called_name(call: ast.Call) -> str | None:
    return getattr(call.func, "attr", getattr(call.func, "id", None))


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and _called_name(node) == "import_module" and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append((node.lineno, first.value))
    return found


def violations() -> list[str]:
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        own = top_package(module_name(path))
        if own is None:  # phasewatch/__init__.py
            continue
        for line, module in imported_modules(path):
            target = top_package(module)
            if target is None or target == own or target not in LEVEL:
                continue
            if LEVEL[target] >= LEVEL[own]:
                wrong.append(f"{path.relative_to(SRC.parent)}:{line}: {own} imports {module} ({target})")
    return wrong


def command_imports(src: Path = SRC) -> list[str]:
    """Imports of one command module by another: what two commands share belongs in the
    library or in app/ (wiring.py, common.py), never in a command."""
    commands = src / "app" / "commands"
    wrong = []
    for path in sorted(commands.glob("*.py")):
        own = module_name(path)
        for line, module in imported_modules(path):
            if module.startswith("phasewatch.app.commands.") and not module.startswith(own + "."):
                wrong.append(f"{path.relative_to(src.parent)}:{line}: {own} imports {module}")
    return wrong


def test_every_top_level_package_has_a_layer():
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    packages |= {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}
    assert packages - {"models"} == set(LEVEL), "add the new package to LAYERS and to docs/ARCHITECTURE.md"


def test_packages_import_only_down_the_layers():
    assert violations() == []


def test_commands_never_import_each_other():
    assert command_imports() == []


def test_a_command_importing_another_is_found(tmp_path):
    fake = tmp_path / "phasewatch"
    (fake / "app" / "commands").mkdir(parents=True)
    (fake / "app" / "commands" / "one.py").write_text("from phasewatch.app.commands.two import helper\n")
    (fake / "app" / "commands" / "two.py").write_text("from phasewatch.app.common import expand_inputs\n")
    assert command_imports(fake) == [
        "phasewatch/app/commands/one.py:1: phasewatch.app.commands.one imports phasewatch.app.commands.two.helper"]


@pytest.mark.parametrize(("own", "imported", "allowed"), [
    ("core", "phasewatch.backends.registry", True),
    ("core", "phasewatch.store.database", False),
    ("webui", "phasewatch.service.config", False),
    ("export", "phasewatch.app.cli", False),
    ("app", "phasewatch.webui.app", True),
])
def test_the_rule_itself(own, imported, allowed):
    target = top_package(imported)
    assert target is not None
    assert (LEVEL[target] < LEVEL[own]) is allowed
