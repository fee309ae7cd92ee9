"""The durable queue and results store: one SQLite file.

Every file that arrives is a row of ``files`` whose ``state`` moves
``pending -> processing -> done | failed``; a file is never dropped, it ends ``done``
or ``failed`` with a reason, through crashes and restarts
(:meth:`Store.recover_after_crash`).

Crash accounting. A worker that dies (a native crash, the kernel's OOM killer, ``kill -9``)
leaves its rows ``processing``. Only a row that was inside inference at that moment can
have caused it, so the daemon marks rows ``stage = 'segmenting'`` just before they enter
the backend and clears the mark when they leave (:meth:`Store.set_stage`); at the next
start only those rows are charged a crash, and only when the worker died of a crash
rather than being killed (the daemon tells them apart, ``charge``); every other row goes
back to ``pending`` free. Rows that were inside inference together (one batch) are each
run alone from then on (``alone``), so that a file that crashes the worker is soon
charged by itself and ends ``failed`` after ``max_attempts`` crashes, while its batch
mates survive any number of restarts.

Durability. The database runs in WAL mode (readers - the web page - never block the
worker, and the worker never blocks them) with ``synchronous=NORMAL``: a crash of the
process loses nothing, and a power cut can lose at most the last few commits but
never corrupts the file. That is enough here because nothing is lost for good: at
start the daemon rescans the watch folder, so a lost ``enqueue`` is redone, and a lost
``mark_done`` only means the file is segmented again (outputs are written atomically).
``FULL`` would cost an fsync per commit on the appliance's flash for no such gain.
``busy_timeout`` makes a writer wait for another writer instead of failing; one that
waits longer than that, and a full disk or an I/O error, raises :class:`StoreUnavailable`:
the same call can succeed later, and the daemon retries it rather than failing a file.

Threads. Each thread gets its own connection (``threading.local``), as SQLite
connections must not be shared by concurrent threads; writers are serialised by
SQLite itself: every change runs in ``BEGIN IMMEDIATE``, so a read-then-update such as
:meth:`Store.claim_next` is atomic and two workers never claim the same row.

Duplicates. The same content (same sha256) is one result, whatever its path: a
second arrival becomes a ``done`` row with ``duplicate_of`` pointing at the first,
and shares its result (exclusion acts on the first). When the first fails, so do its
duplicates, with its reason: the same bytes would fail the same way. A file rewritten
with new content (same path, new sha256) is a new field. An arrival whose content
matches only a ``failed`` row is queued anew: copying a file again is how an operator
retries it.

Paths. A file name need not be UTF-8 (an SMB client may write Latin-1 names); Python
gives such a name as a ``str`` with surrogate escapes, which SQLite cannot store as
text. A path is therefore stored as text when it is UTF-8 (every row of an older
database matches its file still) and as a blob of its raw bytes when it is not, and is
given back as the ``str`` Python gave, so the file can be opened again; the same goes
for a sub-folder specimen's ``folder``. Text meant to be read (errors, specimen names)
is stored with a replacement character for each undecodable byte.

Specimens. There is always a current specimen (a first one, ``default``, is created
with the database); a new field belongs to it unless ``enqueue`` names another, e.g.
the sub-folder specimen of :meth:`Store.specimen_for_path`. A specimen holds the fields
of one model only: its classes and calibration are what its statistics compare. The
first field recorded with a model identity (:meth:`Store.mark_done`'s ``model``: name and
ONNX sha256) claims the specimen for that model; a field of another model is moved to a
specimen derived from it for that model (``"<name> (model X)"``, created on first need,
current when the original was, with its operator), so that restarting the service with
another model on the same data folder never mixes two models' classes in one set of
statistics. A closed specimen is signed off: it cannot be made current, and the current
one cannot be closed. A specimen's ``operator`` is who prepared and imaged it ("" when
nobody said), one line like an acceptance's ``accepted_by``.

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

import contextlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from phasewatch.errors import PhasewatchError

log = logging.getLogger(__name__)

STATES = ("pending", "processing", "done", "failed")
DEFAULT_SPECIMEN = "default"
BUSY_TIMEOUT_S = 10.0
# SQLite result codes of faults outside the data (another process holds the lock, the disk
# is full or failing, the file is read-only or gone): the same statement can succeed later.
_TRANSIENT_CODES = frozenset({5, 6, 7, 8, 10, 13, 14})  # BUSY LOCKED NOMEM READONLY IOERR FULL CANTOPEN
# Python < 3.11 gives no result code: the messages SQLite has for the same faults.
_TRANSIENT_MESSAGES = ("locked", "out of memory", "readonly", "disk i/o error", "disk is full", "unable to open")

# MIGRATIONS[v] takes a database from user_version v to v + 1.
MIGRATIONS = [
    """
    CREATE TABLE specimens (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        notes TEXT NOT NULL DEFAULT '',
        folder TEXT UNIQUE,             -- set for sub-folder specimens
        created REAL NOT NULL,
        is_current INTEGER NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX specimens_one_current ON specimens(is_current) WHERE is_current = 1;
    CREATE TABLE files (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'processing', 'done', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        specimen_id INTEGER REFERENCES specimens(id),
        created REAL NOT NULL,
        processed REAL,
        duplicate_of INTEGER REFERENCES files(id),
        excluded INTEGER NOT NULL DEFAULT 0,
        exclude_reason TEXT
    );
    CREATE UNIQUE INDEX files_version ON files(path, size, mtime_ns, sha256);
    CREATE INDEX files_state ON files(state, id);
    CREATE INDEX files_sha256 ON files(sha256);
    CREATE INDEX files_specimen ON files(specimen_id, id);
    CREATE TABLE results (
        file_id INTEGER PRIMARY KEY REFERENCES files(id),
        fractions TEXT NOT NULL,
        particles TEXT NOT NULL,
        valid_area_px INTEGER,
        valid_area_um2 REAL,
        pixel_size_um REAL,
        measurement TEXT NOT NULL,
        outputs TEXT NOT NULL
    );
    """,
    """
    ALTER TABLE files ADD COLUMN accepted INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE files ADD COLUMN accepted_by TEXT;
    ALTER TABLE files ADD COLUMN accept_reason TEXT;
    ALTER TABLE files ADD COLUMN accepted_at REAL;
    """,
    """
    ALTER TABLE files ADD COLUMN stage TEXT;           -- 'segmenting' while inside the backend
    ALTER TABLE files ADD COLUMN stage_since REAL;
    ALTER TABLE files ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE files ADD COLUMN alone INTEGER NOT NULL DEFAULT 0;  -- run alone: crashed in a batch
    """,
    """
    ALTER TABLE specimens ADD COLUMN model_name TEXT;     -- the one model whose fields it holds
    ALTER TABLE specimens ADD COLUMN model_sha256 TEXT;
    ALTER TABLE specimens ADD COLUMN derived_from INTEGER REFERENCES specimens(id);  -- model change
    ALTER TABLE specimens ADD COLUMN closed REAL;         -- when it was closed, NULL while open
    ALTER TABLE results ADD COLUMN model TEXT;            -- JSON: identity of the model that measured it
    """,
    """
    ALTER TABLE specimens ADD COLUMN operator TEXT NOT NULL DEFAULT '';  -- who prepared and imaged it
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
# The suffix a specimen started for another model gets (Store._derive_specimen).
_MODEL_SUFFIX = re.compile(r" \(model [^()]*\)$")
# Surrogates: how Python spells the bytes of a name that are not UTF-8; never valid text.
_SURROGATES = re.compile("[\ud800-\udfff]")


class StoreError(PhasewatchError):
    """A database that cannot be used or a request that does not fit it; one line."""


class StoreUnavailable(StoreError):
    """The database cannot be written or read right now (another process holds its lock
    past the busy timeout, the disk is full, an I/O error); the same call may succeed later."""


def _transient(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _TRANSIENT_CODES
    return any(m in str(exc).lower() for m in _TRANSIENT_MESSAGES)


def display_text(text: str) -> str:
    """``text`` that can be encoded as UTF-8 anywhere (SQLite, JSON, a web page): each
    undecodable byte of a file name becomes U+FFFD, the replacement character."""
    return _SURROGATES.sub("\ufffd", text)


def _one_line(text: str) -> str:
    return display_text(" ".join(text.split()))


def _db_path(path: str) -> str | bytes:
    """How a path is stored: text when it is UTF-8, else its raw bytes (module doc)."""
    return os.fsencode(path) if _SURROGATES.search(path) else path


def _path(value: str | bytes | None) -> str | None:
    """A stored path as Python names it (the inverse of :func:`_db_path`)."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _file(row: sqlite3.Row) -> dict[str, Any]:
    """A ``files`` row with its path as Python names it."""
    file = dict(row)
    file["path"] = _path(file["path"])
    return file


def _specimen(row: sqlite3.Row) -> dict[str, Any]:
    """A ``specimens`` row with its folder as Python names it."""
    specimen = dict(row)
    specimen["folder"] = _path(specimen["folder"])
    return specimen


def _inserted(cursor: sqlite3.Cursor) -> int:
    """The id of the row an INSERT just made (never None after a successful INSERT)."""
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _image(row: sqlite3.Row) -> dict[str, Any]:
    """A files row joined with its (or its original's) result, JSON decoded, with the
    record's ``trust`` (None without a result or from before the trust record)."""
    image = _file(row)
    for key in ("fractions", "particles", "measurement", "outputs", "model"):
        if image.get(key) is not None:
            image[key] = json.loads(image[key])
    image["trust"] = (image.get("measurement") or {}).get("trust")
    return image


def flagged(image: Mapping[str, Any]) -> bool:
    """Whether the model said it was outside its experience on this image row's field."""
    trust = image.get("trust")
    return trust is not None and not trust.get("ok", True)


def awaits_acceptance(image: Mapping[str, Any]) -> bool:
    """A flagged field that no operator has accepted: left out of the statistics."""
    return flagged(image) and not image["accepted"]


def _fail_duplicates(conn: sqlite3.Connection) -> None:
    """Duplicates of a failed original fail with its reason: a duplicate is ``done``
    only while its original can stand for its result."""
    conn.execute(
        """UPDATE files SET state = 'failed',
               error = 'same content as file ' || duplicate_of || ', which failed: ' ||
                       (SELECT o.error FROM files o WHERE o.id = files.duplicate_of)
           WHERE state = 'done'
             AND duplicate_of IN (SELECT id FROM files WHERE state = 'failed')"""
    )


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


class Store:
    """The SQLite store at ``path`` (created with its folder when missing)."""

    def __init__(self, path: Path | str, max_attempts: int = 3, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.max_attempts = max_attempts
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    # -- connections -------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                # isolation_level=None: transactions are opened explicitly (BEGIN IMMEDIATE).
                conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_s,
                )
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout = {round(self.busy_timeout_s * 1000)}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA foreign_keys = ON")
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.OperationalError) and _transient(exc):
                    raise StoreUnavailable(f"{self.path}: cannot open the database: {exc}") from exc
                raise StoreError(f"{self.path}: cannot open the database: {exc}") from exc
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def _faults(self) -> Iterator[None]:
        """Raise the transient faults of SQLite as :class:`StoreUnavailable`, one line."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if not _transient(exc):
                raise
            raise StoreUnavailable(f"{self.path}: {exc}") from exc

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the write lock from its first statement."""
        with self._faults():
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # a failed COMMIT may have rolled back already
                    with contextlib.suppress(sqlite3.Error):  # the cause, raised below, says more
                        conn.execute("ROLLBACK")
                raise

    def _read(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._faults():
            return self._conn().execute(sql, tuple(args)).fetchall()

    def close(self) -> None:
        """Close every thread's connection (a later call opens a new one)."""
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def _migrate(self) -> None:
        try:
            with self._write() as conn:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path}: database schema version {version} is newer than this "
                        f"phasewatch understands ({SCHEMA_VERSION}); upgrade phasewatch"
                    )
                for step in range(version, SCHEMA_VERSION):
                    # executescript would commit our transaction; run statements one by one.
                    for statement in MIGRATIONS[step].split(";"):
                        if statement.strip():
                            conn.execute(statement)
                if version == 0:
                    conn.execute(
                        "INSERT INTO specimens (name, created, is_current) VALUES (?, ?, 1)",
                        (DEFAULT_SPECIMEN, time.time()),
                    )
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable phasewatch database: {exc}") from exc

    # -- specimens ---------------------------------------------------------------

    def start_specimen(self, name: str, notes: str = "", operator: str = "") -> int:
        """A new specimen that becomes the current one; returns its id."""
        if not name.strip():
            raise StoreError(f"{self.path}: a specimen needs a name")
        with self._write() as conn:
            conn.execute("UPDATE specimens SET is_current = 0 WHERE is_current = 1")
            return _inserted(conn.execute(
                "INSERT INTO specimens (name, notes, operator, created, is_current) VALUES (?, ?, ?, ?, 1)",
                (display_text(name.strip()), display_text(notes), _one_line(operator), time.time()),
            ))

    def current_specimen(self) -> dict[str, Any]:
        rows = self._read("SELECT * FROM specimens WHERE is_current = 1")
        if not rows:  # _migrate creates one and every change keeps exactly one current
            raise StoreError(f"{self.path}: no current specimen")
        return _specimen(rows[0])

    def get_specimen(self, specimen_id: int) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT * FROM specimens WHERE id = ?", (specimen_id,)).fetchone()
        return _specimen(row) if row is not None else None

    def list_specimens(self) -> list[dict[str, Any]]:
        """Newest first, each with its number of files, of measured and of failed ones,
        and when its last file arrived."""
        rows = self._read(
            """SELECT s.*, COUNT(f.id) AS files, COALESCE(SUM(f.state = 'done'), 0) AS done,
                      COALESCE(SUM(f.state = 'failed'), 0) AS failed, MAX(f.created) AS last_file
               FROM specimens s LEFT JOIN files f ON f.specimen_id = s.id GROUP BY s.id ORDER BY s.id DESC"""
        )
        return [_specimen(r) for r in rows]

    def update_specimen(
        self, specimen_id: int, name: str | None = None, notes: str | None = None, operator: str | None = None
    ) -> None:
        """Rename a specimen and/or replace its notes or operator (None: leave as is)."""
        if name is not None and not name.strip():
            raise StoreError(f"{self.path}: a specimen needs a name")
        with self._write() as conn:
            self._existing_specimen(conn, specimen_id)
            if name is not None:
                conn.execute("UPDATE specimens SET name = ? WHERE id = ?", (display_text(name.strip()), specimen_id))
            if notes is not None:
                conn.execute("UPDATE specimens SET notes = ? WHERE id = ?", (display_text(notes), specimen_id))
            if operator is not None:
                conn.execute("UPDATE specimens SET operator = ? WHERE id = ?", (_one_line(operator), specimen_id))

    def make_current(self, specimen_id: int) -> None:
        """New fields go to this open specimen from now on."""
        with self._write() as conn:
            if self._existing_specimen(conn, specimen_id)["closed"] is not None:
                raise StoreError(f"{self.path}: specimen {specimen_id} is closed; reopen it first")
            conn.execute("UPDATE specimens SET is_current = 0 WHERE is_current = 1")
            conn.execute("UPDATE specimens SET is_current = 1 WHERE id = ?", (specimen_id,))

    def close_specimen(self, specimen_id: int) -> None:
        """Sign a specimen off; the current one cannot be (new fields need a home)."""
        with self._write() as conn:
            specimen = self._existing_specimen(conn, specimen_id)
            if specimen["is_current"]:
                raise StoreError(f"{self.path}: specimen {specimen_id} is the current one; "
                                 "start or switch to another before closing it")
            if specimen["closed"] is None:
                conn.execute("UPDATE specimens SET closed = ? WHERE id = ?", (time.time(), specimen_id))

    def reopen_specimen(self, specimen_id: int) -> None:
        with self._write() as conn:
            self._existing_specimen(conn, specimen_id)
            conn.execute("UPDATE specimens SET closed = NULL WHERE id = ?", (specimen_id,))

    def _existing_specimen(self, conn: sqlite3.Connection, specimen_id: int) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute("SELECT * FROM specimens WHERE id = ?", (specimen_id,)).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: no specimen {specimen_id}")
        return row

    def _keep_to_one_model(self, conn: sqlite3.Connection, file_id: int, model: Mapping[str, Any]) -> None:
        """Claim the field's specimen for ``model``, or move the field to the specimen
        derived from it for that model (module doc)."""
        name, sha256 = str(model["name"]), str(model["onnx_sha256"])
        specimen = conn.execute(
            "SELECT s.* FROM specimens s JOIN files f ON f.specimen_id = s.id WHERE f.id = ?", (file_id,)
        ).fetchone()
        if specimen["model_name"] is None:
            conn.execute("UPDATE specimens SET model_name = ?, model_sha256 = ? WHERE id = ?",
                         (name, sha256, specimen["id"]))
            return
        if (specimen["model_name"], specimen["model_sha256"]) == (name, sha256):
            return
        derived = conn.execute(
            """SELECT id FROM specimens WHERE derived_from = ? AND model_name = ? AND model_sha256 = ?
               AND closed IS NULL ORDER BY id DESC LIMIT 1""",
            (specimen["id"], name, sha256),
        ).fetchone()
        if derived is not None:
            target: int = derived["id"]
        else:
            target = self._derive_specimen(conn, specimen, name, sha256)
        conn.execute("UPDATE files SET specimen_id = ? WHERE id = ?", (target, file_id))

    def _derive_specimen(self, conn: sqlite3.Connection, specimen: sqlite3.Row, name: str, sha256: str) -> int:
        # "S-1 (model ebc)" from "S-1 (model superalloy)" too, not a growing chain of suffixes.
        base = _MODEL_SUFFIX.sub("", specimen["name"]) or specimen["name"]
        if specimen["is_current"]:
            conn.execute("UPDATE specimens SET is_current = 0 WHERE is_current = 1")
        derived = _inserted(conn.execute(
            """INSERT INTO specimens (name, notes, operator, created, is_current, model_name, model_sha256,
                                      derived_from)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            (f"{base} (model {name})", f"started automatically: the model changed from "
             f"{specimen['model_name']} to {name}", specimen["operator"], time.time(), specimen["is_current"],
             name, sha256, specimen["id"]),
        ))
        log.warning("specimen %d (%s) holds fields of model %s (%s); fields of model %s (%s) go to a new "
                    "specimen %d", specimen["id"], specimen["name"], specimen["model_name"],
                    specimen["model_sha256"][:12], name, sha256[:12], derived)
        return derived

    def specimen_for_path(self, path: Path | str, watch_root: Path | str) -> int:
        """The specimen of a file when every sub-folder is a specimen: the one named after
        the first folder below ``watch_root`` (created on first use); a file directly in
        the root belongs to the current specimen."""
        try:
            parts = PurePath(path).relative_to(watch_root).parts
        except ValueError as exc:
            raise StoreError(f"{path}: not inside the watch folder {watch_root}") from exc
        if len(parts) < 2:
            return self.current_specimen()["id"]
        folder = _db_path(parts[0])
        with self._write() as conn:
            row = conn.execute("SELECT id FROM specimens WHERE folder = ?", (folder,)).fetchone()
            if row is not None:
                return row["id"]
            return _inserted(conn.execute(
                "INSERT INTO specimens (name, folder, created) VALUES (?, ?, ?)",
                (display_text(parts[0]), folder, time.time()),
            ))

    # -- the queue ---------------------------------------------------------------

    def enqueue(
        self,
        path: Path | str,
        size: int,
        mtime_ns: int,
        sha256: str,
        specimen_id: int | None = None,
    ) -> dict[str, Any]:
        """The row for this version of the file, created ``pending`` (or ``done`` as a
        duplicate) when new; the same path, size, mtime and sha256 again is the same row."""
        stored_path = _db_path(str(path))
        with self._write() as conn:
            row = conn.execute(
                "SELECT * FROM files WHERE path = ? AND size = ? AND mtime_ns = ? AND sha256 = ?",
                (stored_path, size, mtime_ns, sha256),
            ).fetchone()
            if row is not None:
                return _file(row)
            if specimen_id is None:
                specimen_id = conn.execute(
                    "SELECT id FROM specimens WHERE is_current = 1"
                ).fetchone()["id"]
            original = conn.execute(
                """SELECT id FROM files WHERE sha256 = ? AND duplicate_of IS NULL
                   AND state != 'failed' ORDER BY id LIMIT 1""",
                (sha256,),
            ).fetchone()
            now = time.time()
            values: tuple[str, str | None, float | None, int | None]
            if original is None:
                values = ("pending", None, None, None)
            else:
                note = f"same content as file {original['id']}"
                values = ("done", note, now, original["id"])
            file_id = _inserted(conn.execute(
                """INSERT INTO files (path, size, mtime_ns, sha256, specimen_id, created,
                                      state, error, processed, duplicate_of)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (stored_path, size, mtime_ns, sha256, specimen_id, now, *values),
            ))
            return _file(conn.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone())

    def claim_next(self, batch: int = 1) -> list[dict[str, Any]]:
        """Up to ``batch`` oldest pending rows, moved to ``processing`` with one more
        attempt, atomically: no two callers get the same row."""
        with self._write() as conn:
            rows = conn.execute(
                "SELECT id FROM files WHERE state = 'pending' ORDER BY id LIMIT ?", (batch,)
            ).fetchall()
            ids = [r["id"] for r in rows]
            marks = ",".join("?" * len(ids))
            if not ids:
                return []
            conn.execute(
                f"UPDATE files SET state = 'processing', attempts = attempts + 1 "
                f"WHERE id IN ({marks})",
                ids,
            )
            claimed = conn.execute(f"SELECT * FROM files WHERE id IN ({marks}) ORDER BY id", ids)
            return [_file(r) for r in claimed]

    def set_stage(self, file_ids: Iterable[int], stage: str | None) -> None:
        """Mark claimed rows as inside a step that can crash the worker (``'segmenting'``),
        or clear the mark (None): what :meth:`recover_after_crash` charges (module doc)."""
        ids = list(file_ids)
        marks = ",".join("?" * len(ids))
        with self._write() as conn:
            conn.execute(
                f"UPDATE files SET stage = ?, stage_since = ? WHERE state = 'processing' AND id IN ({marks})",
                (stage, None if stage is None else time.time(), *ids),
            )

    def _finish(
        self, conn: sqlite3.Connection, file_id: int, state: str, error: str | None
    ) -> None:
        updated = conn.execute(
            """UPDATE files SET state = ?, error = ?, processed = ?, stage = NULL, stage_since = NULL
               WHERE id = ? AND state = 'processing'""",
            (state, error, time.time(), file_id),
        ).rowcount
        if not updated:
            raise StoreError(f"{self.path}: file {file_id} is not being processed")

    def mark_done(
        self,
        file_id: int,
        result: Mapping[str, Any],
        outputs: Mapping[str, str] | None = None,
        model: Mapping[str, Any] | None = None,
    ) -> None:
        """Store a claimed file's measurement (``measure.measure``'s dict) and outputs;
        ``model`` is the identity of the model that measured it (``name``, ``onnx_sha256``
        and whatever else the caller records, JSON-able), which keeps each specimen to one
        model (module doc)."""
        with self._write() as conn:
            self._finish(conn, file_id, "done", None)
            if model is not None:
                self._keep_to_one_model(conn, file_id, model)
            conn.execute(
                """INSERT OR REPLACE INTO results (file_id, fractions, particles, valid_area_px,
                       valid_area_um2, pixel_size_um, measurement, outputs, model)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    file_id,
                    json.dumps(result.get("fractions", {})),
                    json.dumps(result.get("particles", {})),
                    result.get("valid_area_px"),
                    result.get("valid_area_um2"),
                    result.get("pixel_size_um"),
                    json.dumps(result),
                    json.dumps({k: str(v) for k, v in (outputs or {}).items()}),
                    None if model is None else json.dumps(model),
                ),
            )

    def mark_failed(self, file_id: int, error: str) -> None:
        """A claimed file that cannot be processed; ``error`` is its one-line reason.
        Its duplicates fail with it."""
        with self._write() as conn:
            self._finish(conn, file_id, "failed", _one_line(error))
            _fail_duplicates(conn)

    def release(self, file_id: int, reason: str) -> None:
        """Put a claimed file back in the queue without spending an attempt: the worker
        could not finish it for a reason outside the file (full disk, backend error)."""
        with self._write() as conn:
            updated = conn.execute(
                """UPDATE files SET state = 'pending', attempts = MAX(attempts - 1, 0), error = ?,
                       stage = NULL, stage_since = NULL
                   WHERE id = ? AND state = 'processing'""",
                (_one_line(reason), file_id),
            ).rowcount
            if not updated:
                raise StoreError(f"{self.path}: file {file_id} is not being processed")

    def requeue_failed(self) -> int:
        """Put every failed file back in the queue with its attempts and crashes forgiven, and
        its duplicates back to ``done`` beside it: how a re-analysis retries what failed last
        time (the daemon retries a file when it is copied again). Returns how many were requeued."""
        with self._write() as conn:
            requeued = conn.execute(
                """UPDATE files SET state = 'pending', error = NULL, processed = NULL, attempts = 0,
                       crashes = 0, alone = 0
                   WHERE state = 'failed' AND duplicate_of IS NULL"""
            ).rowcount
            conn.execute(
                """UPDATE files SET state = 'done', error = 'same content as file ' || duplicate_of
                   WHERE state = 'failed' AND duplicate_of IS NOT NULL"""
            )
        return requeued

    def recover_after_crash(self, max_attempts: int | None = None, charge: bool = True) -> dict[str, int]:
        """At start, the rows a dead worker left ``processing`` (module doc): those inside
        inference run alone from now on when several were, and when ``charge`` (the worker
        crashed, it was not killed) are charged a crash and fail, with their duplicates,
        after ``max_attempts`` crashes; every other row goes back to ``pending`` without
        spending its attempt. Returns how many rows were requeued, charged and failed."""
        limit = self.max_attempts if max_attempts is None else max_attempts
        with self._write() as conn:
            inside = conn.execute(
                "SELECT COUNT(*) FROM files WHERE state = 'processing' AND stage IS NOT NULL").fetchone()[0]
            charged = inside if charge else 0
            conn.execute(
                """UPDATE files SET crashes = crashes + ?, alone = MAX(alone, ?)
                   WHERE state = 'processing' AND stage IS NOT NULL""",
                (int(charge), int(inside > 1)),
            )
            failed = conn.execute(
                """UPDATE files SET state = 'failed', processed = ?, error = 'crashed the worker '
                       || CASE crashes WHEN 1 THEN 'once' ELSE crashes || ' times' END || ' while ' || stage
                   WHERE state = 'processing' AND stage IS NOT NULL AND crashes >= ?""",
                (time.time(), limit),
            ).rowcount
            # Also mends duplicates that older versions left done on a failed original.
            _fail_duplicates(conn)
            requeued = conn.execute(
                """UPDATE files SET state = 'pending', stage = NULL, stage_since = NULL,
                       attempts = CASE WHEN stage IS NULL OR NOT ? THEN MAX(attempts - 1, 0) ELSE attempts END
                   WHERE state = 'processing'""",
                (int(charge),),
            ).rowcount
        return {"requeued": requeued, "charged": charged, "failed": failed}

    def counts_by_state(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        rows = self._read("SELECT state, COUNT(*) AS n FROM files GROUP BY state")
        counts.update({r["state"]: r["n"] for r in rows})
        return counts

    # -- images and results ------------------------------------------------------

    def list_images(
        self,
        limit: int = 100,
        specimen: int | None = None,
        before_id: int | None = None,
        after_id: int | None = None,
        only: ImageFilter | None = None,
    ) -> list[dict[str, Any]]:
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

    def get_image(self, file_id: int) -> dict[str, Any] | None:
        rows = self._read(_IMAGE_SELECT + " WHERE f.id = ?", (file_id,))
        return _image(rows[0]) if rows else None

    def _measured_fields(self, specimen_id: int) -> list[dict[str, Any]]:
        """The measured, not excluded fields of a specimen, oldest first (duplicates are
        left out: their content counts once)."""
        rows = self._conn().execute(
            _IMAGE_SELECT + """ WHERE f.specimen_id = ? AND f.state = 'done'
                AND f.duplicate_of IS NULL AND f.excluded = 0 ORDER BY f.id""",
            (specimen_id,),
        )
        return [_image(r) for r in rows]

    def field_results(self, specimen_id: int, count_flagged: bool = False) -> list[dict[str, Any]]:
        """What a specimen's statistics are made of: its measured, not excluded fields,
        oldest first, without the flagged fields no operator has accepted unless
        ``count_flagged``."""
        fields = self._measured_fields(specimen_id)
        return [f for f in fields if count_flagged or not awaits_acceptance(f)]

    def flagged_pending(self, specimen_id: int) -> int:
        """How many of a specimen's measured, not excluded fields are flagged and not
        accepted (:func:`awaits_acceptance`)."""
        return sum(awaits_acceptance(f) for f in self._measured_fields(specimen_id))

    def exclude_field(self, file_id: int, reason: str) -> None:
        """Leave a field out of its specimen's statistics (a duplicate's original)."""
        self._set_excluded(file_id, 1, _one_line(reason) or "excluded by the operator")

    def include_field(self, file_id: int) -> None:
        self._set_excluded(file_id, 0, None)

    def accept_field(self, file_id: int, who: str, reason: str) -> None:
        """An operator vouches for a flagged field, so that it counts (a duplicate's
        original); ``who`` and ``reason`` are required: an acceptance is accountable."""
        who, reason = _one_line(who), _one_line(reason)
        if not who or not reason:
            raise StoreError(f"{self.path}: accepting file {file_id} needs who and why")
        self._set_accepted(file_id, 1, who, reason, time.time())

    def unaccept_field(self, file_id: int) -> None:
        self._set_accepted(file_id, 0, None, None, None)

    def _target(self, conn: sqlite3.Connection, file_id: int) -> int:
        """The row a field's exclusion or acceptance is kept on: a duplicate's original."""
        row = conn.execute(
            "SELECT COALESCE(duplicate_of, id) AS target FROM files WHERE id = ?", (file_id,)
        ).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: no file {file_id}")
        target: int = row["target"]
        return target

    def _set_excluded(self, file_id: int, excluded: int, reason: str | None) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE files SET excluded = ?, exclude_reason = ? WHERE id = ?",
                (excluded, reason, self._target(conn, file_id)),
            )

    def _set_accepted(
        self, file_id: int, accepted: int, who: str | None, reason: str | None, at: float | None
    ) -> None:
        with self._write() as conn:
            conn.execute(
                """UPDATE files SET accepted = ?, accepted_by = ?, accept_reason = ?,
                       accepted_at = ? WHERE id = ?""",
                (accepted, who, reason, at, self._target(conn, file_id)),
            )
