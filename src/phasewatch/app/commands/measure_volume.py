"""``phasewatch measure-volume LABELS.tif``: 3D measurements of a stack of class maps.

The stack is read page by page (never whole); the rules and how they are computed are in
:mod:`phasewatch.core.measure3d`. Prints a table, or with ``--json`` one JSON object. The
classes are ``--classes``, else those the stack names (``segment --volume`` writes them into
its ``NAME.classes.tif``), else "class 0", "class 1", ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from phasewatch.app.common import ArgumentError, parse_spacing
from phasewatch.bundle import ROLES, ClassInfo
from phasewatch.core.measure3d import VolumeMeasureError, VolumeMeasurer
from phasewatch.errors import PhasewatchError
from phasewatch.imageio.stacks import StackReadError, open_label_stack


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("labels", type=Path, help="multi-page TIFF of class ids, one page per slice")
    parser.add_argument("--spacing", metavar="Z,Y,X",
                        help="voxel size in µm (default: from the file's ImageJ metadata, else voxels)")
    parser.add_argument("--classes", metavar="NAMES|JSON",
                        help='class names for ids 0, 1, ... ("matrix,si"), or JSON inline or in a file: '
                             'a list of names or of {"name", "role"} (role excluded leaves the valid volume), '
                             'a bundle manifest or a NAME.volume.json from segment (its "classes"); default: '
                             'the classes the stack names')
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def parse_classes(text: str) -> list[ClassInfo]:
    """Names (comma-separated), or a JSON list / manifest inline or in a file, as ClassInfo for ids 0..n-1."""
    stripped = text.strip()
    if stripped[:1] in "[{":
        raw: Any = _json(stripped, "--classes")
    elif stripped.endswith(".json") or Path(stripped).is_file():
        try:
            raw = _json(Path(stripped).read_text(encoding="utf-8"), stripped)
        except OSError as exc:
            raise VolumeMeasureError(f"{stripped}: cannot read the classes ({exc.strerror})") from exc
    else:
        raw = [name.strip() for name in stripped.split(",")]
    if isinstance(raw, dict):
        raw = raw.get("classes")
    return class_list(raw, "--classes")


def class_list(raw: Any, where: str) -> list[ClassInfo]:
    """A JSON list of names or of ``{"name", "role", "id"}`` as ClassInfo for ids 0..n-1."""
    if not isinstance(raw, list) or not raw:
        raise VolumeMeasureError(f"{where} must name at least one class")
    return [_class_info(index, entry, where) for index, entry in enumerate(raw)]


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise VolumeMeasureError(f"{where}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc


def _class_info(index: int, entry: Any, where: str) -> ClassInfo:
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or not str(entry.get("name", "")).strip():
        raise VolumeMeasureError(f"{where}: entry {index} needs a name, got {entry!r}")
    if entry.get("id", index) != index:
        raise VolumeMeasureError(f"{where}: class ids must be 0..n-1 in order, entry {index} has id {entry['id']!r}")
    role = str(entry.get("role", "phase"))
    if role not in ROLES:
        raise VolumeMeasureError(f"{where}: class '{entry['name']}' has role '{role}', not one of {ROLES}")
    return ClassInfo(id=index, name=str(entry["name"]), colour=(0, 0, 0), role=role)


def _cell(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(path: Path, result: dict[str, Any]) -> str:
    z, y, x = result["shape"]
    spacing = result["spacing_um"]
    lines = [f"{path}: {z} x {y} x {x} voxels (Z x Y x X), "
             + (f"spacing {spacing[0]:g} x {spacing[1]:g} x {spacing[2]:g} µm" if spacing else "no spacing: voxels"),
             "",
             f"{'class':<24} {'fraction':>9} {'comp 26':>8} {'comp 6':>8} {'intercon':>9} "
             f"{'Euler 26':>9} {'Euler 6':>8} {'Euler/mm3':>10} {'ESD median':>11}"]
    unit = "µm" if spacing else "vox"
    for name, m in result["classes"].items():
        esd = m["esd_um"] if spacing else m["esd_voxels"]
        lines.append(f"{name[:24]:<24} {m['volume_fraction']:>9.4f} {m['components_26']:>8} {m['components_6']:>8} "
                     f"{_cell(m['interconnectivity'], '.3f'):>9} {m['euler_number']:>9} {m['euler_number_6']:>8} "
                     f"{_cell(m['euler_number_per_mm3'], '.4g'):>10} "
                     f"{_cell(esd['median'], '.3g'):>7} {unit}")
    lines += ["", "components and interconnectivity 26-connected (comp 6: 6-connected); Euler 26: "
              "26-connectivity for the class; fractions over valid voxels; ESD = equivalent-sphere diameter"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    path: Path = args.labels
    try:
        stack = open_label_stack(path)
        classes = (parse_classes(args.classes) if args.classes
                   else class_list(stack.classes, f"{path}: its classes") if stack.classes is not None else None)
        spacing = parse_spacing(args.spacing) if args.spacing else stack.spacing_um
        measurer = VolumeMeasurer(classes, spacing)
        for plane in stack.slices():
            measurer.add(plane)
        result = measurer.result()
    except (VolumeMeasureError, StackReadError, ArgumentError) as exc:
        message = str(exc)
        where = "" if message.startswith(str(path)) or message.startswith("--") else f"{path}: "
        print(f"phasewatch measure-volume: {where}{message}", file=sys.stderr)
        return 1
    except PhasewatchError as exc:
        print(f"phasewatch measure-volume: {path}: {exc}", file=sys.stderr)
        return 1
    result["file"] = str(path)
    print(json.dumps(result, indent=2) if args.json else format_table(path, result))
    return 0
