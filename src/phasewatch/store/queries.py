"""What the page, the report and the statistics read: images, their results, flags.

Results. ``results`` keeps per field what the statistics need (``fractions``,
``particles``, ``valid_area_px``, ``valid_area_um2``, ``pixel_size_um``, as
``measure.measure`` returns them) and the whole measurement JSON; ``outputs`` maps
an output kind to its file.

Trust. A field record's ``trust`` (``{"ok", "score", "reasons"}``) says whether the model
was inside its experience on that field; image rows carry it as ``trust`` (None for
records made before it existed, which count as trusted). A flagged field (``ok`` false)
stays out of its specimen's statistics until an operator accepts it
(:meth:`Store.accept_field`, who and why kept like an exclusion's reason), unless the
caller asks for flagged fields to count: numbers the model may have got wrong never
count silently.

"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from phasewatch.store.database import STATES, Database, _image
from phasewatch.store.rows import ImageRow

log = logging.getLogger(__name__)
def flagged(image: Mapping[str, Any]) -> bool:
    """Whether the model said it was outside its experience on this image row's field."""
    trust = image.get("trust")
    return trust is not None and not trust.get("ok", True)


def awaits_acceptance(image: Mapping[str, Any]) -> bool:
    """A flagged field that no operator has accepted: left out of the statistics."""
    return flagged(image) and not image["accepted"]


def same_pixels_pending(image: Mapping[str, Any]) -> bool:
    """Likely the same field as an older one (``queue`` module doc) and not accepted: left
    out of the statistics, ``count_flagged`` or not (it is not the model's doubt)."""
    return image.get("same_pixels_as") is not None and not image["accepted"]


@dataclass(frozen=True)
class ImageFilter:
    """What :meth:`Store.list_images` narrows a list to: paths containing ``name`` (ASCII
    letters in any case), one of :data:`STATES` or :data:`IMAGE_KINDS` as ``state``, and
    arrival (``created``, epoch seconds) within ``since`` .. ``until``."""

    name: str = ""
    state: str = ""
    since: float | None = None
    until: float | None = None

    def conditions(self) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        args: list[Any] = []
        if self.name:
            where.append("instr(lower(CAST(f.path AS TEXT)), ?) > 0")
            args.append(self.name.lower())
        if self.state in STATES:
            where.append("f.state = ?")
            args.append(self.state)
        elif self.state:
            where.append(_KIND_CONDITIONS[self.state])
        if self.since is not None:
            where.append("f.created >= ?")
            args.append(self.since)
        if self.until is not None:
            where.append("f.created < ?")
            args.append(self.until)
        return where, args


_KIND_CONDITIONS = {
    "excluded": "f.excluded = 1",
    # A record's trust.ok is JSON false for a field the model flagged.
    "flagged": "json_extract(r.measurement, '$.trust.ok') = 0",
    "duplicate": "f.duplicate_of IS NOT NULL",
}
# What a list of images can be narrowed to besides a state (:meth:`Store.list_images`).
IMAGE_KINDS = tuple(_KIND_CONDITIONS)


# The result of a duplicate is its original's: join on COALESCE(duplicate_of, id).
_IMAGE_SELECT = """
    SELECT f.*, s.name AS specimen, r.fractions, r.particles, r.valid_area_px,
           r.valid_area_um2, r.pixel_size_um, r.measurement, r.outputs, r.model
    FROM files f
    LEFT JOIN specimens s ON s.id = f.specimen_id
    LEFT JOIN results r ON r.file_id = COALESCE(f.duplicate_of, f.id)
"""



class Queries(Database):
    """Reads of images and of the fields a specimen's statistics are made of."""


    def list_images(
        self,
        limit: int = 100,
        specimen: int | None = None,
        before_id: int | None = None,
        after_id: int | None = None,
        only: ImageFilter | None = None,
    ) -> list[ImageRow]:
        """Newest first, with results; ``before_id`` pages back through older ones and
        ``after_id`` forward through newer ones (the ``limit`` oldest of them); ``only``
        narrows the list (:class:`ImageFilter`)."""
        where, args = (only or ImageFilter()).conditions()
        for condition, value in (("f.specimen_id = ?", specimen), ("f.id < ?", before_id), ("f.id > ?", after_id)):
            if value is not None:
                where.append(condition)
                args.append(value)
        sql = _IMAGE_SELECT + (" WHERE " + " AND ".join(where) if where else "")
        order = "ASC" if after_id is not None else "DESC"
        rows = [_image(r) for r in self._read(f"{sql} ORDER BY f.id {order} LIMIT ?", (*args, limit))]
        return rows[::-1] if after_id is not None else rows

    def get_image(self, file_id: int) -> ImageRow | None:
        rows = self._read(_IMAGE_SELECT + " WHERE f.id = ?", (file_id,))
        return _image(rows[0]) if rows else None

    def _measured_fields(self, specimen_id: int) -> list[ImageRow]:
        """The measured, not excluded fields of a specimen, oldest first (duplicates are
        left out: their content counts once)."""
        rows = self._conn().execute(
            _IMAGE_SELECT + """ WHERE f.specimen_id = ? AND f.state = 'done'
                AND f.duplicate_of IS NULL AND f.excluded = 0 ORDER BY f.id""",
            (specimen_id,),
        )
        return [_image(r) for r in rows]

    def field_results(self, specimen_id: int, count_flagged: bool = False) -> list[ImageRow]:
        """What a specimen's statistics are made of: its measured, not excluded fields,
        oldest first, without the flagged fields no operator has accepted unless
        ``count_flagged``."""
        fields = self._measured_fields(specimen_id)
        return [f for f in fields if not same_pixels_pending(f) and (count_flagged or not awaits_acceptance(f))]

    def flagged_pending(self, specimen_id: int) -> int:
        """How many of a specimen's measured, not excluded fields are flagged and not
        accepted (:func:`awaits_acceptance`)."""
        return sum(awaits_acceptance(f) for f in self._measured_fields(specimen_id))
