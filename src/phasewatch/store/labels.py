"""What people teach the appliance: materials (class sets), labels of fields, and which model
the daemon uses for new fields.

Materials. A material is a named class set: ``[{name, colour "#rrggbb", role}]``, the index
being the class id. A bundled model's classes are a material of its name (read from its
manifest, :func:`bundled_materials`); people make others (``materials`` table), each with
the mIoU its first taught model must reach (``target_miou``, default 0.80).

Labels. A field's labels belong to one material: a one-channel PNG of the field's size whose
values are class ids of the material and 255 where nobody labelled. Every save is a new
version (``labels`` table: who, when); nothing is overwritten, and the newest version is the
field's labels.

Models. ``model_activations`` is the daemon's model for new fields over time, newest last:
an activation names a model (NULL: the configured one) and the row that was in force before
it, so that a rollback (one action) returns to that one, and a second rollback to the one
before. Every change here is written to the audit record (:mod:`.audit`) in the same call.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

import cv2
import numpy as np

from phasewatch.bundle import ROLES, BundleError, bundled_model_names, load_bundle
from phasewatch.store.audit import Audited
from phasewatch.store.database import Refused, _one_line

UNLABELLED = 255
DEFAULT_TARGET_MIOU = 0.80
MAX_CLASSES = 32
NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+-]{0,63}$")  # also a folder name: DATA/models/NAME@N
COLOUR_RULE = re.compile(r"^#[0-9a-fA-F]{6}$")


def colour_hex(rgb: tuple[int, int, int] | list[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def check_material_name(name: str) -> str:
    if not NAME_RULE.match(name) or "@" in name:
        raise Refused(f"material name {name!r}: use 1-64 letters, digits, space, '.', '_', '+' or '-' "
                         "(starting with a letter or digit)")
    return name


def check_classes(raw: Any, where: str) -> list[dict[str, str]]:
    """A material's classes as given (``[{name, colour, role}]``), checked; one line on a fault."""
    if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_CLASSES:
        raise Refused(f"{where}: classes must be a list of 2..{MAX_CLASSES} classes")
    classes, names = [], set()
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise Refused(f"{where}: class {index} must be an object {{name, colour, role}}")
        name, colour, role = (str(entry.get(k, "")).strip() for k in ("name", "colour", "role"))
        role = role or "phase"
        if not name or len(name) > 64 or name in names:
            raise Refused(f"{where}: class {index}: a name of 1..64 characters, unique in the material, is needed")
        if not COLOUR_RULE.match(colour):
            raise Refused(f"{where}: class {name!r}: colour must be '#rrggbb', got {colour!r}")
        if role not in ROLES:
            raise Refused(f"{where}: class {name!r}: role must be one of {', '.join(ROLES)}, got {role!r}")
        names.add(name)
        classes.append({"name": name, "colour": colour.lower(), "role": role})
    return classes


def bundled_materials() -> list[dict[str, Any]]:
    """Each bundled model's classes as a material of its name."""
    materials = []
    for name in bundled_model_names():
        try:
            bundle = load_bundle(name, verify_hash=False)
        except BundleError:
            continue  # a broken bundled model is `doctor`'s to report; it teaches nothing
        materials.append({"name": name, "source": "bundled", "target_miou": DEFAULT_TARGET_MIOU,
                          "classes": [{"name": c.name, "colour": colour_hex(c.colour), "role": c.role}
                                      for c in bundle.classes],
                          "created": None, "created_by": None})
    return materials


def decode_label_png(png: bytes, width: int, height: int, num_classes: int, where: str) -> np.ndarray:
    """The class-id map a label PNG holds, refused (one line) unless it is one channel of the
    field's size with values < ``num_classes`` or 255."""
    array = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED) if png else None
    if array is None:
        raise Refused(f"{where}: the labels are not a readable PNG")
    if array.ndim != 2 or array.dtype != np.uint8:
        raise Refused(f"{where}: the labels PNG must be one 8-bit channel (class ids), got "
                         f"{array.shape[2] if array.ndim == 3 else 1} channel(s) of {array.dtype}")
    if array.shape != (height, width):
        raise Refused(f"{where}: the labels PNG is {array.shape[1]} x {array.shape[0]}, "
                         f"the field {width} x {height}")
    values = np.unique(array)
    bad = values[(values >= num_classes) & (values != UNLABELLED)]
    if bad.size:
        raise Refused(f"{where}: label value {int(bad[0])} is no class of the material (0..{num_classes - 1}, "
                         f"{UNLABELLED} = not labelled)")
    return array


class Labels(Audited):
    """Materials, labels and the active model (module doc)."""

    # -- materials -------------------------------------------------------------------

    def create_material(self, name: str, classes: Any, who: str,
                        target_miou: float = DEFAULT_TARGET_MIOU) -> dict[str, Any]:
        name = check_material_name(str(name).strip())
        checked = check_classes(classes, f"material {name!r}")
        who = _one_line(who)
        if not who:
            raise Refused(f"material {name!r}: who makes it is required")
        if not 0 < target_miou <= 1:
            raise Refused(f"material {name!r}: target mIoU must be in (0, 1], got {target_miou}")
        if name in bundled_model_names():
            raise Refused(f"material {name!r}: a bundled model's material of that name exists")
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM materials WHERE name = ?", (name,)).fetchone():
                raise Refused(f"material {name!r} exists already")
            conn.execute("INSERT INTO materials (name, classes, target_miou, created, created_by) "
                         "VALUES (?, ?, ?, ?, ?)", (name, json.dumps(checked), float(target_miou), time.time(), who))
        material = self.material(name)
        assert material is not None
        self.audit.record(who, "material.create", f"material:{name}", None,
                          {"classes": checked, "target_miou": target_miou})
        return material

    def material(self, name: str) -> dict[str, Any] | None:
        """A material by name: one people made, else a bundled model's."""
        rows = self._read("SELECT * FROM materials WHERE name = ?", (name,))
        if rows:
            return _material(rows[0])
        return next((m for m in bundled_materials() if m["name"] == name), None)

    def materials(self) -> list[dict[str, Any]]:
        """Bundled models' materials, then those people made, oldest first."""
        made = [_material(r) for r in self._read("SELECT * FROM materials ORDER BY id")]
        return bundled_materials() + made

    def _known_material(self, name: str) -> dict[str, Any]:
        material = self.material(name)
        if material is None:
            raise Refused(f"no material {name!r}: create it first (POST /api/materials)")
        return material

    # -- labels ----------------------------------------------------------------------

    def save_labels(self, file_id: int, material: str, png: bytes, who: str) -> dict[str, Any]:
        """Store a new version of a field's labels (checked against the field and the
        material); returns the version's row without its PNG."""
        who = _one_line(who)
        if not who:
            raise Refused(f"image {file_id}: who labelled it is required")
        classes = self._known_material(material)["classes"]
        image = self._labelable(file_id)
        array = decode_label_png(png, image["width"], image["height"], len(classes), f"image {file_id}")
        labelled = int(np.count_nonzero(array != UNLABELLED))
        with self._write() as conn:
            last = conn.execute("SELECT MAX(version) AS v FROM labels WHERE file_id = ? AND material = ?",
                                (file_id, material)).fetchone()["v"]
            version = (last or 0) + 1
            conn.execute(
                """INSERT INTO labels (file_id, material, version, png, width, height, labelled_px, who, created)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (file_id, material, version, png, image["width"], image["height"], labelled, who, time.time()))
        saved = self.label_versions(file_id, material)[-1]
        self.audit.record(who, "labels.save", f"image:{file_id}", {"material": material, "version": last},
                          {"material": material, "version": version, "labelled_px": labelled,
                           "sha256_png": hashlib.sha256(png).hexdigest()})
        return saved

    def _labelable(self, file_id: int) -> dict[str, Any]:
        """The width and height of a measured single-page field (what a label PNG must match)."""
        rows = self._read("""SELECT f.id, f.state, r.measurement FROM files f
                             LEFT JOIN results r ON r.file_id = COALESCE(f.duplicate_of, f.id) WHERE f.id = ?""",
                          (file_id,))
        if not rows:
            raise Refused(f"no image {file_id}")
        measurement = json.loads(rows[0]["measurement"]) if rows[0]["measurement"] else None
        if rows[0]["state"] != "done" or not measurement:
            raise Refused(f"image {file_id} is {rows[0]['state']}: only a measured field can be labelled")
        if "width" not in measurement or "height" not in measurement:
            raise Refused(f"image {file_id}: labels fit a single-page field; this one has pages or slices")
        return {"width": int(measurement["width"]), "height": int(measurement["height"])}

    def labels(self, file_id: int, material: str, version: int | None = None) -> dict[str, Any] | None:
        """A version (default the newest) of a field's labels with its ``png``, or None."""
        if version is None:
            rows = self._read("SELECT * FROM labels WHERE file_id = ? AND material = ? ORDER BY version DESC LIMIT 1",
                              (file_id, material))
        else:
            rows = self._read("SELECT * FROM labels WHERE file_id = ? AND material = ? AND version = ?",
                              (file_id, material, version))
        return dict(rows[0]) if rows else None

    def label_versions(self, file_id: int, material: str) -> list[dict[str, Any]]:
        """Every version of a field's labels for a material, oldest first, without the PNGs."""
        return [dict(r) for r in self._read(
            """SELECT id, file_id, material, version, width, height, labelled_px, who, created FROM labels
               WHERE file_id = ? AND material = ? ORDER BY version""", (file_id, material))]

    def labelled_fields(self, material: str, file_ids: list[int] | None = None) -> list[dict[str, Any]]:
        """The newest labels of every field labelled with ``material`` (or of ``file_ids``
        only), with the field's path, sha256 and specimen, oldest field first; no PNGs."""
        rows = [dict(r) for r in self._read(
            """SELECT l.id AS label_id, l.file_id, l.version, l.width, l.height, l.labelled_px, l.who, l.created,
                      f.path, f.sha256, f.specimen_id, s.name AS specimen
               FROM labels l JOIN files f ON f.id = l.file_id LEFT JOIN specimens s ON s.id = f.specimen_id
               WHERE l.material = ? AND l.labelled_px > 0 AND l.version =
                     (SELECT MAX(version) FROM labels m WHERE m.file_id = l.file_id AND m.material = l.material)
               ORDER BY l.file_id""", (material,))]
        if file_ids is None:
            return rows
        found = {r["file_id"] for r in rows}
        if missing := [i for i in file_ids if i not in found]:
            raise Refused(f"image {missing[0]} has no labels of material {material!r}"
                             + (f" ({len(missing)} such)" if len(missing) > 1 else ""))
        wanted = set(file_ids)
        return [r for r in rows if r["file_id"] in wanted]

    # -- the daemon's model for new fields ---------------------------------------------

    def active_model(self) -> dict[str, Any] | None:
        """The newest activation (``name`` None: the configured model), or None: never changed."""
        rows = self._read("SELECT * FROM model_activations ORDER BY id DESC LIMIT 1")
        return dict(rows[0]) if rows else None

    def activate_model(self, name: str, who: str, reason: str = "") -> dict[str, Any]:
        """Make ``name`` the model for new fields; audited with the model it replaces."""
        who = _one_line(who)
        if not who:
            raise Refused(f"activating {name}: who activates it is required")
        current = self.active_model()
        with self._write() as conn:
            conn.execute("INSERT INTO model_activations (name, previous, who, created) VALUES (?, ?, ?, ?)",
                         (name, current["id"] if current else None, who, time.time()))
        self.audit.record(who, "model.activate", f"model:{name}", {"model": current["name"] if current else None},
                          {"model": name}, reason)
        active = self.active_model()
        assert active is not None
        return active

    def rollback_model(self, who: str, reason: str = "") -> dict[str, Any]:
        """Undo the newest activation: back to the model in force before it (module doc)."""
        who = _one_line(who)
        if not who:
            raise Refused("rolling back: who rolls back is required")
        current = self.active_model()
        if current is None or current["previous"] is None and current["name"] is None:
            raise Refused("no model activation to roll back: the configured model is in use")
        target = (self._read("SELECT * FROM model_activations WHERE id = ?", (current["previous"],))
                  if current["previous"] is not None else [])
        name, previous = (target[0]["name"], target[0]["previous"]) if target else (None, None)
        with self._write() as conn:
            conn.execute("INSERT INTO model_activations (name, previous, rollback_of, who, created) "
                         "VALUES (?, ?, ?, ?, ?)", (name, previous, current["id"], who, time.time()))
        self.audit.record(who, "model.rollback", f"model:{current['name']}", {"model": current["name"]},
                          {"model": name}, reason)
        active = self.active_model()
        assert active is not None
        return active


def _material(row: Any) -> dict[str, Any]:
    material = dict(row)
    material["classes"] = json.loads(material["classes"])
    material["source"] = "made"
    material.pop("id", None)
    return material
