"""The rows the store hands out, typed: a file the service took in (:class:`FileRow`), the
same joined with its result (:class:`ImageRow`, what the page, the report and the statistics
read), and a specimen (:class:`SpecimenRow`; :class:`SpecimenSummary` in the list).

Keys are the columns of the tables (``database.MIGRATIONS``) as ``SELECT *`` gives them, so a
new column needs a key here: ``tests/test_record_schema.py`` compares these with the rows a
real database gives. The JSON columns of ``results`` come back decoded, as the records of
``src/phasewatch/core/records.py``.
"""

from __future__ import annotations

from typing import TypedDict

from phasewatch.core.records import FieldRecord, ModelIdentity, PhaseParticles, TrustRecord


class FileRow(TypedDict):
    """A ``files`` row, its path as Python names it (``database._path``)."""

    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str
    state: str  # one of database.STATES
    attempts: int
    error: str | None
    specimen_id: int  # enqueue puts every file in a specimen (the current one by default)
    created: float
    processed: float | None
    duplicate_of: int | None
    excluded: int  # 0 or 1
    exclude_reason: str | None
    accepted: int  # 0 or 1
    accepted_by: str | None
    accept_reason: str | None
    accepted_at: float | None
    stage: str | None
    stage_since: float | None
    crashes: int
    alone: int  # 0 or 1
    same_pixels_as: int | None  # the older field with the same pixels (store/queue.py); None: none


class ImageRow(FileRow):
    """A file with its specimen's name and its result (or its original's, for a duplicate);
    the result's keys are None until it is measured."""

    specimen: str  # the specimen's name
    fractions: dict[str, float] | None
    particles: dict[str, PhaseParticles] | None
    valid_area_px: int | None
    valid_area_um2: float | None
    pixel_size_um: float | None
    measurement: FieldRecord | None  # the whole record
    outputs: dict[str, str] | None  # output kind -> file
    model: ModelIdentity | None  # None for results recorded before the model identity was
    trust: TrustRecord | None  # the record's, lifted out; None without one


class SpecimenRow(TypedDict):
    """A ``specimens`` row, its folder as Python names it."""

    id: int
    name: str
    notes: str
    folder: str | None  # a sub-folder specimen's folder below the watch root
    created: float
    is_current: int  # 0 or 1
    model_name: str | None  # the one model whose fields it holds; None until its first
    model_sha256: str | None
    derived_from: int | None  # the specimen it was started from when the model changed
    closed: float | None  # when it was signed off; None while open
    operator: str
    closed_by: str | None  # who signed it off (store/signoff.py); None while open
    close_meaning: str | None  # what that signature means ("reviewed and released", "rejected")


class SpecimenSummary(SpecimenRow):
    """A specimen in ``list_specimens``: with its counts of files."""

    files: int
    done: int
    failed: int
    last_file: float | None  # when its last file arrived; None without one
