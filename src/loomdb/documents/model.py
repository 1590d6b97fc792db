"""What the document layer hands to its callers: plain, immutable records.

Values are plain Python: ``str``, ``int`` (64-bit), ``float`` (finite), ``bool``,
``None``, ``bytes``, ``dict`` (string keys) and ``list``. Two wrappers ask for a
collaborative container instead of a plain value when writing:

* :class:`Text` — collaborative text: concurrent edits interleave, nothing is lost;
* :class:`Counter` — a counter: concurrent increments sum.

When read back, a text is a ``str`` and a counter a number (``int`` when integral).
The JSON form (HTTP API, CLI) writes them ``{"$text": "…"}``, ``{"$counter": 3}``
and bytes as ``{"$bytes": "<base64>"}``; see :mod:`loomdb.documents.values`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Text:
    """Ask for a collaborative text field holding ``value``."""

    value: str = ""


@dataclass(frozen=True, slots=True)
class Counter:
    """Ask for a counter field starting at ``value``."""

    value: int | float = 0


@dataclass(frozen=True, slots=True)
class Document:
    """A document as materialized from its entries."""

    id: str
    collection: str
    value: dict[str, Any]
    heads: tuple[str, ...]  # CIDs (text form) of the document's head entries
    created_at: int  # HLC of the first entry (see loomdb.clock)
    updated_at: int  # HLC of the newest entry
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """One entry of a document's history, parents before children."""

    cid: str
    kind: str
    parents: tuple[str, ...]
    height: int
    author: str  # hex of the author's Ed25519 public key
    created_at: int  # HLC
    state: str  # "applied", "pending" (waits for a parent or a key) or "refused"
    reason: str | None = None
    key_id: str | None = None  # the key its payload is encrypted under (None: public)
    waits_for_key: str | None = None  # pending: the key it (or a parent it waits on) needs


@dataclass(frozen=True, slots=True)
class KeyWait:
    """Entries a node holds but cannot read yet: they, or ancestors they wait on, are
    under keys it lacks (``keys``; or holds other material under their id)."""

    entries: int
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    name: str
    schema: dict[str, Any] | None
    documents: int
    indexes: tuple[str, ...] = field(default=())
