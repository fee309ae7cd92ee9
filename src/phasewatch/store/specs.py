"""Specification limits: a specimen's (``specimen_limits``) and named templates of them
(``limit_templates``, e.g. "IN718 γ′ check"), as the JSON :mod:`phasewatch.core.verdict`
reads, checked by :func:`~phasewatch.core.verdict.parse_limits` before they are stored.

Setting a specimen's limits (from a template or not) and saving a template are written to
the audit record with the limits before and after; a closed specimen's limits cannot
change.
"""

from __future__ import annotations

import json
import time
from typing import Any

from phasewatch.core.verdict import Limit, LimitError, limits_json, parse_limits
from phasewatch.store.database import Refused, StoreError, _one_line
from phasewatch.store.specimens import Specimens


class Specs(Specimens):
    """Limits of specimens and templates of limits."""

    def _checked(self, raw: object) -> list[Limit]:
        try:
            return parse_limits(raw)
        except LimitError as exc:
            raise Refused(f"{self.path}: {exc}") from None

    def limits(self, specimen_id: int) -> list[Limit]:
        """A specimen's limits; [] when it has none."""
        rows = self._read("SELECT limits FROM specimen_limits WHERE specimen_id = ?", (specimen_id,))
        return parse_limits(json.loads(rows[0]["limits"])) if rows else []

    def set_limits(self, specimen_id: int, raw: object, who: str, reason: str = "") -> list[Limit]:
        """Replace a specimen's limits with ``raw`` (JSON; [] removes them); the limits kept."""
        limits = self._checked(raw)
        with self._write() as conn:
            self._open_specimen(conn, specimen_id)
            old = conn.execute("SELECT limits FROM specimen_limits WHERE specimen_id = ?", (specimen_id,)).fetchone()
            before = json.loads(old["limits"]) if old else []
            after = limits_json(limits)
            if before == after:
                return limits
            conn.execute("INSERT OR REPLACE INTO specimen_limits (specimen_id, limits) VALUES (?, ?)",
                         (specimen_id, json.dumps(after)))
            self.audit.append(conn, who, "limits.set", f"specimen:{specimen_id}", before, after, reason)
        return limits

    def apply_template(self, specimen_id: int, name: str, who: str) -> list[Limit]:
        """A template's limits as the specimen's."""
        template = self.template(name)
        if template is None:
            raise Refused(f"{self.path}: no limit template {name!r}")
        return self.set_limits(specimen_id, template["limits"], who, f"template {name}")

    def save_template(self, name: str, raw: object, who: str) -> None:
        """Make or replace the template ``name``."""
        name = _one_line(name)
        if not name:
            raise StoreError(f"{self.path}: a limit template needs a name")
        after = limits_json(self._checked(raw))
        with self._write() as conn:
            old = conn.execute("SELECT limits FROM limit_templates WHERE name = ?", (name,)).fetchone()
            conn.execute("INSERT OR REPLACE INTO limit_templates (name, limits, created, created_by) "
                         "VALUES (?, ?, ?, ?)", (name, json.dumps(after), time.time(), _one_line(who)))
            self.audit.append(conn, who, "template.save", f"template:{name}",
                              json.loads(old["limits"]) if old else None, after)

    def template(self, name: str) -> dict[str, Any] | None:
        rows = self._read("SELECT * FROM limit_templates WHERE name = ?", (name,))
        return {**dict(rows[0]), "limits": json.loads(rows[0]["limits"])} if rows else None

    def templates(self) -> list[dict[str, Any]]:
        """Every template, by name."""
        return [{**dict(r), "limits": json.loads(r["limits"])}
                for r in self._read("SELECT * FROM limit_templates ORDER BY name")]
