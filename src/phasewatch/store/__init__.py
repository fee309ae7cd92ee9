"""The durable queue and results store: one SQLite file (``database``), and a module per
concern built on it: ``specimens``, ``queue``, ``queries``, ``curation``, ``labels`` (materials,
labels, the active model), ``audit`` (the hash-chained record, ``store.audit``), ``specs``
(specification limits and their templates) and ``signoff`` (signed close and reopen, reports
by hash). :class:`Store` is all of them over one connection per thread.
"""

from phasewatch.store.audit import AuditLog, Verification
from phasewatch.store.curation import Curation
from phasewatch.store.database import (
    BUSY_TIMEOUT_S,
    DEFAULT_SPECIMEN,
    STATES,
    Refused,
    StoreError,
    StoreUnavailable,
    display_text,
)
from phasewatch.store.labels import UNLABELLED, Labels
from phasewatch.store.queries import IMAGE_KINDS, ImageFilter, Queries, awaits_acceptance, flagged, same_pixels_pending
from phasewatch.store.queue import Queue
from phasewatch.store.signoff import MEANINGS, SignOff
from phasewatch.store.specs import Specs


class Store(Queue, Queries, Curation, Labels, Specs, SignOff):
    """The SQLite store at ``path`` (created with its folder when missing)."""


__all__ = [
    "BUSY_TIMEOUT_S", "DEFAULT_SPECIMEN", "IMAGE_KINDS", "MEANINGS", "STATES", "UNLABELLED", "AuditLog", "ImageFilter",
    "Refused", "Store", "StoreError", "StoreUnavailable", "Verification", "awaits_acceptance", "display_text",
    "flagged", "same_pixels_pending",
]
