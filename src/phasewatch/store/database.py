"""The SQLite file under the store: connections per thread, write transactions, faults,
migrations, and how rows become dicts.

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

Paths. A file name need not be UTF-8 (an SMB client may write Latin-1 names); Python
gives such a name as a ``str`` with surrogate escapes, which SQLite cannot store as
text. A path is therefore stored as text when it is UTF-8 (every row of an older
database matches its file still) and as a blob of its raw bytes when it is not, and is
given back as the ``str`` Python gave, so the file can be opened again; the same goes
for a sub-folder specimen's ``folder``. Text meant to be read (errors, specimen names)
is stored with a replacement character for each undecodable byte.
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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

from phasewatch.errors import PhasewatchError
from phasewatch.store.rows import FileRow, ImageRow, SpecimenRow

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
    """
    CREATE TABLE materials (                 -- class sets people made (bundled models' come from manifests)
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        classes TEXT NOT NULL,                -- JSON [{name, colour, role}], index = class id
        target_miou REAL NOT NULL DEFAULT 0.8,
        created REAL NOT NULL,
        created_by TEXT NOT NULL
    );
    CREATE TABLE labels (                    -- every version kept
        id INTEGER PRIMARY KEY,
        file_id INTEGER NOT NULL REFERENCES files(id),
        material TEXT NOT NULL,
        version INTEGER NOT NULL,
        png BLOB NOT NULL,                    -- one channel, class ids, 255 = not labelled
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        labelled_px INTEGER NOT NULL,
        who TEXT NOT NULL,
        created REAL NOT NULL,
        UNIQUE (file_id, material, version)
    );
    CREATE INDEX labels_material ON labels(material, file_id);
    CREATE TABLE model_activations (         -- the daemon's model for new fields, newest last
        id INTEGER PRIMARY KEY,
        name TEXT,                            -- NULL: the configured model
        previous INTEGER REFERENCES model_activations(id),
        rollback_of INTEGER REFERENCES model_activations(id),
        who TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE audit (                     -- append-only, hash-chained: store/audit.py
        seq INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        before TEXT,
        after TEXT,
        reason TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit record is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit record is append-only'); END;
    """,
    """
    ALTER TABLE specimens ADD COLUMN closed_by TEXT;      -- who signed it off (store/signoff.py)
    ALTER TABLE specimens ADD COLUMN close_meaning TEXT;  -- what the signature means
    CREATE TABLE specimen_limits (           -- specification limits, JSON (core/verdict.py; store/specs.py)
        specimen_id INTEGER PRIMARY KEY REFERENCES specimens(id),
        limits TEXT NOT NULL
    );
    CREATE TABLE limit_templates (           -- named sets of limits ("IN718 gamma prime check")
        name TEXT PRIMARY KEY,
        limits TEXT NOT NULL,
        created REAL NOT NULL,
        created_by TEXT NOT NULL
    );
    CREATE TABLE reports (                   -- every report served, by its bytes' sha256
        sha256 TEXT PRIMARY KEY,
        specimen_id INTEGER NOT NULL REFERENCES specimens(id),
        kind TEXT NOT NULL,                   -- pdf, html
        size INTEGER NOT NULL,
        created REAL NOT NULL,
        closed REAL,                          -- the specimen's sign-off it shows (NULL: open)
        closed_by TEXT,
        close_meaning TEXT,
        verdict TEXT
    );
    """,
    """
    ALTER TABLE results ADD COLUMN pixel_sha256 TEXT;   -- core/pixel_hash.py: the same field re-saved
    CREATE INDEX results_pixel_sha256 ON results(pixel_sha256);
    -- the older field of the same specimen with the same pixels: not counted until accepted
    ALTER TABLE files ADD COLUMN same_pixels_as INTEGER REFERENCES files(id);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
# The suffix a specimen started for another model gets (Store._derive_specimen).
_MODEL_SUFFIX = re.compile(r" \(model [^()]*\)$")
# Surrogates: how Python spells the bytes of a name that are not UTF-8; never valid text.
_SURROGATES = re.compile("[\ud800-\udfff]")


def _statements(script: str) -> list[str]:
    """The SQL statements of a migration, whole: a trigger's body holds semicolons of its own."""
    statements, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending)
            pending = ""
    return statements


class StoreError(PhasewatchError):
    """A database that cannot be used or a request that does not fit it; one line."""


class Refused(StoreError):
    """A request the data does not allow (a label PNG that does not fit its field, a material
    that exists already, nothing to roll back): the caller's to mend, not the store's fault."""


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


# Rows become the TypedDicts of rows.py by a cast: their keys are the columns, which
# tests/test_record_schema.py holds to them on a real database.
def _file(row: sqlite3.Row) -> FileRow:
    """A ``files`` row with its path as Python names it."""
    file = dict(row)
    file["path"] = _path(file["path"])
    return cast(FileRow, file)


def _specimen(row: sqlite3.Row) -> SpecimenRow:
    """A ``specimens`` row with its folder as Python names it (a :class:`SpecimenSummary`
    where the query adds the counts)."""
    specimen = dict(row)
    specimen["folder"] = _path(specimen["folder"])
    return cast(SpecimenRow, specimen)


def _inserted(cursor: sqlite3.Cursor) -> int:
    """The id of the row an INSERT just made (never None after a successful INSERT)."""
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _image(row: sqlite3.Row) -> ImageRow:
    """A files row joined with its (or its original's) result, JSON decoded, with the
    record's ``trust`` (None without a result or from before the trust record)."""
    image: dict[str, Any] = dict(_file(row))
    for key in ("fractions", "particles", "measurement", "outputs", "model"):
        if image.get(key) is not None:
            image[key] = json.loads(image[key])
    image["trust"] = (image.get("measurement") or {}).get("trust")
    return cast(ImageRow, image)


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


class Database:
    """The SQLite file at ``path`` (created with its folder when missing), migrated to the
    current schema; the concerns of the store build on it (``phasewatch.store``)."""

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
                    for statement in _statements(MIGRATIONS[step]):
                        conn.execute(statement)
                if version == 0:
                    conn.execute(
                        "INSERT INTO specimens (name, created, is_current) VALUES (?, ?, 1)",
                        (DEFAULT_SPECIMEN, time.time()),
                    )
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable phasewatch database: {exc}") from exc
