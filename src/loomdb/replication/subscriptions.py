"""``Subscriptions``: which collections and documents this node follows by gossip.

Opt-in, DefraDB's semantics: a **document** subscription receives that
document's updates; a **collection** subscription receives every document of
the collection, new ones included. Persisted in the node's home
(:data:`FILE`, JSON, written atomically: a crash leaves the old file or the
new one) and restored on restart.

Invariants:

1. A batch (``add_*``/``remove_*``) is checked whole before anything changes:
   one bad name, and nothing is changed or written.
2. What is in memory is what is on disk once a call returns.
3. :meth:`Subscriptions.topics` are collection topics only (see
   :mod:`loomdb.replication.topics`): the number of topics is the number of
   distinct collections followed, whatever the number of documents.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from loomdb.documents.database import _check_collection, _check_doc_id, check_space
from loomdb.errors import StoreCorruptError, ValidationError
from loomdb.files import atomic_write
from loomdb.replication.topics import collection_topic
from loomdb.sync.replicate import SyncScope

FILE: Final = "p2p-subscriptions.json"
MAX_SUBSCRIPTIONS: Final = 100_000
MAX_BATCH: Final = 1000

CollectionKey = tuple[str, str]  # (space, collection)
DocumentKey = tuple[str, str, str]  # (space, collection, document)


def parse_document_name(text: object) -> tuple[str, str]:
    """``COLLECTION/DOCUMENT`` (neither may hold '/')."""
    if not isinstance(text, str) or text.count("/") != 1:
        raise ValidationError(f"bad document {text!r}: expected COLLECTION/DOCUMENT")
    collection, document = text.split("/")
    return _check_collection(collection), _check_doc_id(document)


class Subscriptions:
    """The node's subscriptions, saved at ``path`` (None: kept in memory only)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.collections: set[CollectionKey] = set()
        self.documents: set[DocumentKey] = set()
        self.version = 0  # bumped at every change (followers re-read topics)
        if path is not None and path.exists():
            self._load(path)

    # --- questions ---------------------------------------------------------------------

    def wants(self, space: str, collection: str, document: str) -> bool:
        return (space, collection) in self.collections or (
            space,
            collection,
            document,
        ) in self.documents

    def topics(self) -> dict[str, CollectionKey]:
        """The collection topics to join, each with its (space, collection)."""
        keys = self.collections | {(s, c) for s, c, _ in self.documents}
        return {collection_topic(s, c): (s, c) for s, c in sorted(keys)}

    def scopes(self) -> list[SyncScope]:
        """What this node follows, as one sync scope per space."""
        spaces = sorted({s for s, _ in self.collections} | {s for s, _, _ in self.documents})
        out = []
        for space in spaces:
            collections = tuple(sorted(c for s, c in self.collections if s == space))
            documents = tuple(
                sorted(
                    (c, d)
                    for s, c, d in self.documents
                    if s == space and (s, c) not in self.collections
                )
            )
            out.append(SyncScope(space, collections, documents))
        return out

    def listing(self) -> dict[str, list[dict[str, str]]]:
        return {
            "collections": [{"space": s, "collection": c} for s, c in sorted(self.collections)],
            "documents": [
                {"space": s, "collection": c, "document": d} for s, c, d in sorted(self.documents)
            ],
        }

    # --- changes (all or nothing) ----------------------------------------------------

    def add_collections(self, space: str, names: Iterable[object]) -> list[CollectionKey]:
        keys = self._collection_keys(space, names)
        new = [k for k in keys if k not in self.collections]
        self._check_room(len(new))
        self.collections.update(new)
        self._changed(bool(new))
        return new

    def remove_collections(self, space: str, names: Iterable[object]) -> list[CollectionKey]:
        keys = self._collection_keys(space, names)
        gone = [k for k in keys if k in self.collections]
        self.collections.difference_update(gone)
        self._changed(bool(gone))
        return gone

    def add_documents(self, space: str, names: Iterable[object]) -> list[DocumentKey]:
        keys = self._document_keys(space, names)
        new = [k for k in keys if k not in self.documents]
        self._check_room(len(new))
        self.documents.update(new)
        self._changed(bool(new))
        return new

    def remove_documents(self, space: str, names: Iterable[object]) -> list[DocumentKey]:
        keys = self._document_keys(space, names)
        gone = [k for k in keys if k in self.documents]
        self.documents.difference_update(gone)
        self._changed(bool(gone))
        return gone

    def _collection_keys(self, space: str, names: Iterable[object]) -> list[CollectionKey]:
        check_space(space)
        items = _batch(names)
        return list(dict.fromkeys((space, _check_collection(n)) for n in items))

    def _document_keys(self, space: str, names: Iterable[object]) -> list[DocumentKey]:
        check_space(space)
        items = _batch(names)
        return list(dict.fromkeys((space, *parse_document_name(n)) for n in items))

    def _check_room(self, more: int) -> None:
        if len(self.collections) + len(self.documents) + more > MAX_SUBSCRIPTIONS:
            raise ValidationError(f"a node follows at most {MAX_SUBSCRIPTIONS} names")

    def _changed(self, changed: bool) -> None:
        if not changed:
            return
        self.version += 1
        if self.path is not None:
            data = {
                "version": 1,
                "collections": sorted(self.collections),
                "documents": sorted(self.documents),
            }
            atomic_write(self.path, json.dumps(data, indent=1).encode())

    def _load(self, path: Path) -> None:
        try:
            data: Any = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("version") != 1:
                raise ValueError("not version 1")
            for space, collection in data["collections"]:
                self.collections.add((check_space(space), _check_collection(collection)))
            for space, collection, document in data["documents"]:
                check_space(space)
                key = (space, _check_collection(collection), _check_doc_id(document))
                self.documents.add(key)
        except (ValueError, TypeError, KeyError, ValidationError) as exc:
            raise StoreCorruptError(f"{path} is not a subscriptions file: {exc}") from None


def _batch(names: Iterable[object]) -> list[object]:
    items = list(names)
    if not items:
        raise ValidationError("name at least one")
    if len(items) > MAX_BATCH:
        raise ValidationError(f"at most {MAX_BATCH} names at once")
    return items
