"""The document database: Loro documents over the entry store, with views.

Invariants (each one is tested):

1. An entry reaches Loro only when every parent is applied, at most once
   (states are keyed by CID); the rest wait in ``waits`` by missing parent.
2. An applied entry's delta holds only ops of the peer derived from its signed
   author (see :mod:`loomdb.documents.crdt`), continues that peer's ops without
   gap or overlap, and depends only on ops held by its own ancestors — so every
   replica that applies an entry applies it at the same point, and Loro never
   buffers anything.
3. Parents are of the same document and the height is 1 + the highest parent's.
4. A local write is checked (values, schema) before any op is made; the entry
   is stored before the views say it is applied. A crash between the two is
   repaired on open: the views consume the store from their saved position.
5. The views (``views.db``) are derived: deleting them rebuilds them.
6. An entry no held key reads waits (pending, ``wants_key``) and is tried again
   when the keyring changes (:meth:`Database.retry_pending`, and on open): its
   key may not be held, or the material held under its id may be another
   node's. Only when the held key's id is the fingerprint of its material
   (:attr:`~loomdb.identity.keys.NamedKey.names_its_material`) can no key read
   it, and it is refused.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import os
import sqlite3
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple, Protocol

import anyio
import loro

from loomdb.clock import Clock, HybridLogicalClock, SystemClock
from loomdb.documents import crdt
from loomdb.documents import query as q
from loomdb.documents.model import CollectionInfo, Document, HistoryItem, KeyWait
from loomdb.documents.schema import Schema
from loomdb.documents.values import (
    ROOT,
    Increment,
    apply_patch,
    check_key,
    check_path,
    check_value,
    container_at,
    fill_new_map,
    plain,
    preview_patch,
    read_value,
    set_field,
)
from loomdb.documents.views import (
    APPLIED,
    PENDING,
    REFUSED,
    SCHEMA_DOC,
    STATE_NAMES,
    DocRow,
    DocWrite,
    Replay,
    Snapshot,
    StateRow,
    Views,
)
from loomdb.entries.cid import CID
from loomdb.entries.entry import DEFAULT_POLICY, Entry, Kind, UnsignedEntry, prepare_entry
from loomdb.entries.signing import build_entries
from loomdb.errors import (
    ChangeRefusedError,
    ConflictError,
    CryptoKeyError,
    DecryptionError,
    LoomError,
    MissingKeyError,
    NotFoundError,
    SchemaError,
    StoreCorruptError,
    StoreError,
    ValidationError,
)
from loomdb.identity.keys import NamedKey, RandomSource
from loomdb.node.home import NodeHome
from loomdb.stores.base import ContentAddressedStore, PutStatus
from loomdb.stores.origin import written_here
from loomdb.trust.spaces import SEPARATOR as SPACE_ID_SEPARATOR
from loomdb.trust.spaces import parse_space_id

log = logging.getLogger("loomdb.documents")

DEFAULT_SPACE: Final = "main"
SPACE_SEPARATOR: Final = "~"  # in the id of a managed space (loomdb.trust.spaces)
DIRECTORY_COLLECTION: Final = "$directory"  # a managed space's tenant directory (loomdb.trust)


class WritePolicy(Protocol):
    """What a managed space adds to local writes (``loomdb.trust.admin.NodeTrust``)."""

    async def key_for(self, space: str, collection: str) -> NamedKey:
        """The key new entries of ``collection`` use; MissingKeyError when not held."""
        ...

    def check_write(self, space: str, collection: str, at: int) -> None:
        """Raise the TrustError that forbids this node's user to write, if any."""
        ...


def views_file(home: Path, space: str) -> Path:
    """The views of ``space``: ``views.db`` for the default space, else one file per space."""
    if space == DEFAULT_SPACE:
        return home / "views.db"
    digest = hashlib.sha256(space.encode("utf-8")).hexdigest()[:20]
    return home / "views" / f"{digest}.db"


DOC_KINDS: Final = frozenset(k.value for k in Kind)
MAX_ANCESTRY_WALK: Final = 100_000
INLINE_PUT_MAX: Final = 64  # entries a local write stores on the event loop's thread
CATCH_UP_FIRST: Final = 32  # catch_up's first read (SQLiteStore serves up to 32 inline)
# A document of at most this many applied entries keeps their deltas in the views
# and opens by importing them (no store read, no decryption); a longer one is
# snapshotted when it leaves the live cache. Callgrind, a document of four fields:
# importing its first delta into a new LoroDoc costs ~80k instructions and each
# next one ~50k, a snapshot import ~155k plus ~135k to export it again at every
# eviction: the deltas are cheaper up to about five entries.
REPLAY_MAX: Final = 4


class _Ref(NamedTuple):  # a ParentRef; one per new entry (a tuple: ~3x faster to make)
    cid: CID
    height: int


@dataclass(slots=True)
class _Live:
    """An open Loro document and what we know of its DAG."""

    doc_id: int
    coll: int
    is_schema: bool
    loro: loro.LoroDoc
    heads: list[_Ref]
    deleted: bool
    value: dict[str, Any]
    created_at: int
    updated_at: int
    salt: bytes | None = None
    peer: int | None = None
    saved: tuple[CID, ...] | None = None  # the heads of its snapshot in the views
    entries: int = 0  # applied entries (at least; REPLAY_MAX + 1 when opened from a snapshot)


@dataclass(slots=True)
class _Change:
    collection: str
    document: str
    kind: str
    mutate: Callable[[loro.LoroMap], None]


def _check_name(what: str, value: object, max_chars: int) -> str:
    """Names users choose: no leading '$' (reserved: ``$schema``); each one a URL
    path segment of its own (no '/', not '.' or '..', which URLs resolve away);
    no control characters, no space at either end."""
    if type(value) is not str or not value or len(value) > max_chars:
        raise ValidationError(f"{what}s are strings of 1-{max_chars} characters")
    if value.startswith("$") or not value.isprintable() or "/" in value:
        raise ValidationError(f"{what} {value!r}: no leading '$', no '/', no control characters")
    if value in (".", "..") or value != value.strip():
        raise ValidationError(f"{what} {value!r}: not '.' or '..', no space at either end")
    return value


def _check_doc_id(doc_id: object) -> str:
    return _check_name("document id", doc_id, 256)


def _check_collection(name: object) -> str:
    return _check_name("collection name", name, 128)


def check_space(space: object) -> str:
    """An open space's name follows the collection name rule; a managed space id
    (``name~z6Mk…``) its own (:func:`loomdb.trust.spaces.parse_space_id`)."""
    if isinstance(space, str) and SPACE_ID_SEPARATOR in space:
        try:
            parse_space_id(space)
        except ValidationError as exc:
            raise ValidationError(f"bad space id: {exc.message}") from None
        return space
    return _check_name("space name", space, 128)


class Database:
    """A node's documents: open with :meth:`open`, close with :meth:`aclose`."""

    def __init__(
        self,
        home: NodeHome,
        store: ContentAddressedStore,
        views: Views,
        *,
        space: str = DEFAULT_SPACE,
        clock: Clock | None = None,
        random: RandomSource = os.urandom,
        cache_size: int = 2048,
        key: NamedKey | None = None,
        policy: WritePolicy | None = None,
        close_store: bool = True,
    ) -> None:
        self.home = home
        self.store = store
        self.space = space
        self._views = views
        self._hlc = HybridLogicalClock(clock or SystemClock())
        self._random = random
        self._author = home.user.signing_key
        self._key = key
        self._policy = policy if SPACE_SEPARATOR in space else None
        self._close_store = close_store
        self._cache: OrderedDict[int, _Live] = OrderedDict()
        self._cache_size = max(1, cache_size)
        self._lock = anyio.Lock()
        self._cursor = 0
        self._closed = False
        self._schemas: dict[str, Schema] = {}  # parsed schemas by their JSON text

    # --- lifecycle -------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        home: NodeHome | str | os.PathLike[str],
        *,
        space: str = DEFAULT_SPACE,
        store: ContentAddressedStore | None = None,
        clock: Clock | None = None,
        random: RandomSource = os.urandom,
        cache_size: int = 2048,
        key: NamedKey | None = None,
        policy: WritePolicy | None = None,
        close_store: bool = True,
    ) -> Database:
        """Open the database of a node home (a path or a :class:`NodeHome`).

        ``store`` defaults to the home's SQLite store; ``key`` (default: the
        home's default key) encrypts what this database writes."""
        node = home if isinstance(home, NodeHome) else NodeHome.open(Path(home))
        path = views_file(node.path, space)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        views = Views(path)
        db = cls(
            node,
            store or node.open_store(),
            views,
            space=space,
            clock=clock,
            random=random,
            cache_size=cache_size,
            key=key,
            policy=policy,
            close_store=close_store,
        )
        try:
            await db._attach()
        except BaseException:
            await db.aclose()
            raise
        return db

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._lock.locked():  # (else a batch is half done: its documents may not be)
            try:
                self._save_open()
            except (LoomError, sqlite3.Error) as exc:  # only a cost: they are replayed
                log.warning("documents not snapshotted on close: %s", exc)
        self._cache.clear()
        self._views.close()
        if self._close_store:
            await self.store.aclose()

    async def _attach(self) -> None:
        head = await self.store.store_head()
        with self._views.tx():
            if self._views.get_meta("store_epoch") != head.epoch:
                self._views.reset()
                self._views.set_meta("store_epoch", head.epoch)
                self._views.set_meta("cursor", "0")
            self._cursor = int(self._views.get_meta("cursor") or 0)
        await self.catch_up()
        if self._views.get_meta("keyring") != self.home.keyring.fingerprint():
            await self.retry_pending()  # keys were added since: what waited may be readable

    async def _key_for(self, collection: str, at: int) -> NamedKey:
        """The key of a new entry, once this node's user is known to be allowed to
        write it (managed spaces; TrustError or MissingKeyError when not)."""
        if self._policy is None:
            return self._key or self.home.default_key
        self._policy.check_write(self.space, collection, at)
        return self._key or await self._policy.key_for(self.space, collection)

    @property
    def peer_id(self) -> str:
        return self.home.peer_id

    @property
    def user_id(self) -> str:
        return self.home.user.user_id

    @property
    def keys(self) -> Mapping[str, Any]:
        return self.home.keyring.named_keys

    def _decrypt(self, entry: Entry) -> bytes:
        """``entry``'s payload, opened with the material held under its key id (more
        than one when other nodes' keys of the same id were imported)."""
        if entry.key_id is None:
            return entry.payload
        keys = self.home.keyring.keys_for(entry.key_id)
        if self._key is not None and self._key.key_id == entry.key_id and self._key not in keys:
            keys.append(self._key)
        if not keys:
            raise MissingKeyError(f"no key {entry.key_id!r} to read entry {entry.cid}")
        for key in keys[:-1]:
            try:
                return entry.decrypt(key)
            except DecryptionError:
                continue
        return entry.decrypt(keys[-1])

    def _names_its_material(self, key_id: str) -> bool:
        return any(k.names_its_material for k in self.home.keyring.keys_for(key_id))

    # --- collections -------------------------------------------------------------

    def collection(self, name: str) -> Collection:
        return Collection(self, _check_collection(name))

    async def create_collection(
        self, name: str, schema: Mapping[str, Any] | None = None
    ) -> CollectionInfo:
        """Create a collection (idempotent). With ``schema``, set its schema."""
        _check_collection(name)
        parsed = Schema.from_json(schema) if schema is not None else None
        with self._views.lock:
            coll = self._views.coll_id(name, create=False)
            exists = coll is not None and self._views.doc_id(coll, SCHEMA_DOC, create=False)
        if not exists or schema is not None:
            await self._set_schema(name, parsed)
        return await self.collection_info(name)

    async def set_schema(self, name: str, schema: Mapping[str, Any] | None) -> CollectionInfo:
        _check_collection(name)
        parsed = Schema.from_json(schema) if schema is not None else None
        if parsed is not None:
            await self._check_existing(name, parsed)
        await self._set_schema(name, parsed)
        return await self.collection_info(name)

    async def _check_existing(self, name: str, schema: Schema) -> None:
        with self._views.lock:
            coll = self._views.coll_id(name, create=False)
            rows = [] if coll is None else self._views.query(coll, [], [], 1_000_000, 0)
        for row in rows:
            try:
                schema.validate(row.value or {})
            except SchemaError as exc:
                raise SchemaError(f"document {row.name!r} breaks the new schema: {exc}") from None

    async def _set_schema(self, name: str, schema: Schema | None) -> None:
        text = json.dumps(schema.to_json(), sort_keys=True) if schema is not None else None

        def mutate(root: loro.LoroMap) -> None:
            root.insert("json", text)

        await self._commit([_Change(name, SCHEMA_DOC, Kind.SCHEMA.value, mutate)], check=None)

    async def collections(self) -> list[CollectionInfo]:
        with self._views.lock:
            names = [name for _, name, _ in self._views.collections()]
        return [await self.collection_info(n) for n in names]

    async def collection_info(self, name: str) -> CollectionInfo:
        _check_collection(name)
        with self._views.lock:
            coll = self._views.coll_id(name, create=False)
            if coll is None:
                raise NotFoundError(f"no collection {name!r}")
            schema = self._views.schema_of(coll)
            count = self._views.count_docs(coll)
            indexes = tuple(self._views.indexes(coll))
        return CollectionInfo(name, json.loads(schema) if schema else None, count, indexes)

    def _schema(self, name: str) -> Schema | None:
        with self._views.lock:
            coll = self._views.coll_id(name, create=False)
            text = self._views.schema_of(coll) if coll is not None else None
        if not text:
            return None
        cached = self._schemas.get(text)
        if cached is None:
            cached = self._schemas[text] = Schema.from_json(json.loads(text))
        return cached

    async def stats(self) -> dict[str, Any]:
        with self._views.lock:
            states = self._views.count_states()
            colls = len(self._views.collections())
        return {"entries": await self.store.count(), "collections": colls, "states": states}

    # --- the live-document cache ---------------------------------------------------

    async def _live(self, collection: str, document: str, pinned: dict[int, _Live]) -> _Live:
        with self._views.lock:
            coll = self._views.coll_id(collection)
            assert coll is not None
            doc_id = self._views.doc_id(coll, document)
            assert doc_id is not None
        live = pinned.get(doc_id) or self._cache.get(doc_id)
        if live is None:
            live = await self._load(doc_id)
        self._cache[doc_id] = live
        self._cache.move_to_end(doc_id)
        pinned[doc_id] = live
        return live

    def _trim_cache(self) -> None:
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _preload(
        self, docs: Sequence[tuple[str, str]], pinned: dict[int, _Live], *, reserve: bool = False
    ) -> dict[tuple[str, str], _Live]:
        """Open the documents of a batch: those not open are loaded with one store
        read; documents new to the views (their rows are made here, in one
        transaction, or with ``reserve`` only given ids, the row written whole
        with the batch's views) start empty, without a read. Returns them by
        (collection, document), each also pinned and in the cache."""
        found: dict[tuple[str, str], _Live] = {}
        known = self._views.known_doc_id
        for key in docs:  # all of them open already (the usual single update): no SQL
            doc_id = known(*key)
            live = None if doc_id is None else pinned.get(doc_id) or self._cache.get(doc_id)
            if doc_id is None or live is None:
                break
            self._cache[doc_id] = pinned[doc_id] = found[key] = live
        else:
            return found
        by_coll: dict[str, list[str]] = {}
        for collection, document in docs:
            by_coll.setdefault(collection, []).append(document)
        wanted: dict[int, tuple[str, str]] = {}
        with self._views.tx():
            for collection, names in by_coll.items():
                coll = self._views.coll_id(collection)
                assert coll is not None
                ids, created = self._views.doc_ids(coll, names, reserve=reserve)
                for name, doc_id in ids.items():
                    live = pinned.get(doc_id) or self._cache.get(doc_id)
                    if live is None:
                        if name not in created:
                            wanted[doc_id] = (collection, name)
                            continue
                        live = _Live(doc_id, coll, name == SCHEMA_DOC, crdt.new_doc(), [], False,
                                     {}, 0, 0)  # fmt: skip
                    self._cache[doc_id] = pinned[doc_id] = live
                    found[(collection, name)] = live
        if not wanted:
            return found
        opened = await self._open_docs(list(wanted))
        for doc_id, live in opened.items():
            self._cache[doc_id] = pinned[doc_id] = found[wanted[doc_id]] = live
        return found

    async def _load(self, doc_id: int) -> _Live:
        return (await self._open_docs([doc_id]))[doc_id]

    async def _open_docs(self, doc_ids: Sequence[int]) -> dict[int, _Live]:
        """Open documents that are not open: from their snapshot when it was taken at
        their current heads (one import), else by replaying their applied entries
        (they were checked once; one store read for them all)."""
        with self._views.lock:
            loaded = self._views.load_docs(doc_ids)
        out: dict[int, _Live] = {}
        replay: dict[int, DocRow] = {}
        for doc_id in doc_ids:
            row, snap = loaded[doc_id]
            live = self._from_snapshot(row, snap) if snap is not None else None
            if live is None:
                replay[doc_id] = row
            else:
                out[doc_id] = live
        if not replay:
            return out
        with self._views.lock:
            plans = self._views.replay_plans(list(replay))
        # The deltas the views keep (a document's first entries) need no store read.
        damaged: dict[int, list[Replay]] = {}
        for doc_id, deltas in (await self._deltas(plans, kept=True)).items():
            try:
                out[doc_id] = self._build_live(replay[doc_id], plans[doc_id], deltas)
            except ChangeRefusedError:  # a kept delta is damaged (views.db is derived)
                damaged[doc_id] = plans[doc_id]
        for doc_id, deltas in (await self._deltas(damaged, kept=False)).items():
            out[doc_id] = self._build_live(replay[doc_id], plans[doc_id], deltas)
        return out

    async def _deltas(
        self, plans: Mapping[int, Sequence[Replay]], *, kept: bool
    ) -> dict[int, list[bytes]]:
        """The deltas of documents' applied entries: with ``kept``, those the views
        keep, and the others from the store (one read for them all)."""
        wanted = [s.cid for rows in plans.values() for s in rows if not kept or s.delta is None]
        entries = await self.store.get_entries([CID(c) for c in wanted]) if wanted else []
        read = dict(zip(wanted, entries, strict=True))
        return {
            doc_id: [
                s.delta if kept and s.delta is not None else self._delta_of(s.cid, read[s.cid])
                for s in rows
            ]
            for doc_id, rows in plans.items()
        }

    def _delta_of(self, cid: bytes, entry: Entry | None) -> bytes:
        if entry is None:
            raise StoreCorruptError(f"entry {CID(cid)} is applied but not in the store")
        return crdt.decode_payload(self._decrypt(entry))[1]

    @staticmethod
    def _from_snapshot(row: DocRow, snap: Snapshot) -> _Live | None:
        doc = crdt.new_doc()
        try:
            crdt.import_snapshot(doc, snap.data)
        except ChangeRefusedError:
            return None  # a damaged snapshot (views.db is derived): replay the entries
        heads = [_Ref(c, h) for c, h in zip(snap.heads, snap.heights, strict=True)]
        return _Live(row.id, row.coll, row.name == SCHEMA_DOC, doc, heads, row.deleted,
                     row.value or {}, row.created_at, row.updated_at, saved=snap.heads,
                     entries=REPLAY_MAX + 1)  # fmt: skip

    def _build_live(self, row: DocRow, rows: Sequence[Replay], deltas: Sequence[bytes]) -> _Live:
        """A document replayed from its applied entries' deltas (``rows``, parents
        first; each one was checked when it was applied)."""
        doc = crdt.new_doc()
        for delta in deltas:
            if delta:
                crdt.import_delta(doc, delta)
        height = {s.cid: s.height for s in rows}
        heads = [_Ref(h, height[h.binary]) for h in row.heads]
        return _Live(
            row.id,
            row.coll,
            row.name == SCHEMA_DOC,
            doc,
            heads,
            row.deleted,
            row.value or {},
            row.created_at,
            row.updated_at,
            entries=len(rows),
        )

    def _evict(self) -> None:
        """Trim the live cache to its size, at the end of a batch's views transaction.
        An evicted document whose heads moved since its last snapshot is saved again
        (as this transaction leaves it), so it opens with one import next time."""
        cache = self._cache
        excess = len(cache) - self._cache_size
        if excess <= 0:
            return
        evicted = [cache.popitem(last=False)[1] for _ in range(excess)]  # least recently used
        self._views.put_snapshots(
            (live.doc_id, self._snapshot(live)) for live in evicted if self._unsaved(live)
        )

    @staticmethod
    def _unsaved(live: _Live) -> bool:
        """Whether ``live`` is worth a new snapshot: it changed since its last one, and
        it has more entries than the views keep the deltas of (:data:`REPLAY_MAX`: a
        shorter one opens from them more cheaply than from a snapshot)."""
        return live.entries > REPLAY_MAX and live.saved != tuple(h.cid for h in live.heads)

    @staticmethod
    def _snapshot(live: _Live) -> Snapshot:
        heads = tuple(h.cid for h in live.heads)
        return Snapshot(heads, tuple(h.height for h in live.heads), crdt.export_snapshot(live.loro))

    def _save_open(self) -> None:
        """Snapshot the open documents that changed since their last one (on close)."""
        unsaved = [live for live in self._cache.values() if self._unsaved(live)]
        if unsaved:
            with self._views.tx():
                self._views.put_snapshots((live.doc_id, self._snapshot(live)) for live in unsaved)

    # --- local writes ------------------------------------------------------------------

    async def _commit(
        self,
        changes: Sequence[_Change],
        check: Callable[[_Change, _Live], None] | None,
    ) -> list[_Live]:
        """Make, store and apply one entry per change, all in one store batch."""
        if self._closed:
            raise StoreError("the database is closed")
        async with self._lock:
            with self._pinning() as pinned:
                return await self._commit_locked(changes, check, pinned)

    @contextmanager
    def _pinning(self) -> Iterator[dict[int, _Live]]:
        """The documents a batch works on. If the batch fails, their Loro state
        may hold ops that were never stored: drop them from the cache."""
        pinned: dict[int, _Live] = {}
        try:
            yield pinned
        except BaseException:
            for doc_id in pinned:
                self._cache.pop(doc_id, None)
            raise
        finally:
            with self._views.lock:
                self._views.drop_reserved()  # rows of new documents the batch did not write
            self._trim_cache()

    async def _commit_locked(
        self,
        changes: Sequence[_Change],
        check: Callable[[_Change, _Live], None] | None,
        pinned: dict[int, _Live],
    ) -> list[_Live]:
        made: list[tuple[Entry, _Live, int | None, int, int, bool, bytes | None]] = []
        lives = []
        # Entries are prepared one by one and signed a wave at a time, on every core
        # (``build_entries``). A wave holds one entry per document: a second change of
        # a document needs the first one's CID as its parent, so it starts a new wave.
        wave: list[tuple[UnsignedEntry, _Live, int | None, int, int, bool, bytes | None]] = []
        in_wave: set[int] = set()

        def sign_wave() -> None:
            signed = build_entries(self._author, [w[0] for w in wave])
            for entry, (_, live, peer, start, end, deleted, kept) in zip(signed, wave, strict=True):
                live.heads = [_Ref(entry.cid, entry.height)]
                made.append((entry, live, peer, start, end, deleted, kept))
            wave.clear()
            in_wave.clear()

        opened = await self._preload(
            [(c.collection, c.document) for c in changes], pinned, reserve=True
        )
        cache = self._cache
        for change in changes:
            live = opened[(change.collection, change.document)]
            if live.doc_id in in_wave:
                sign_wave()
            cache[live.doc_id] = live
            cache.move_to_end(live.doc_id)  # most recently used: the batch's order
            if check is not None:
                check(change, live)
            created_at = self._hlc.now()
            if self._policy is None:
                key = self._key or self.home.default_key
            else:
                key = await self._key_for(change.collection, created_at)
            doc = live.loro
            if live.salt is None:
                live.salt = self._random(crdt.SALT_SIZE)
                live.peer = crdt.writer_peer(
                    self._author.public_key,
                    self.space,
                    change.collection,
                    change.document,
                    live.salt,
                )
                doc.peer_id = live.peer
            peer = live.peer
            assert peer is not None
            since = doc.oplog_vv
            last = since.get_last(peer)
            start = 0 if last is None else last + 1
            change.mutate(doc.get_map(ROOT))
            doc.commit()
            end = crdt.next_counter(doc, peer)
            delta = crdt.export_since(doc, since) if end > start else b""
            deleted = change.kind == Kind.DELETE or (change.kind != Kind.CREATE and live.deleted)
            unsigned = prepare_entry(
                author=self._author,
                space=self.space,
                collection=change.collection,
                document=change.document,
                kind=change.kind,
                payload=crdt.encode_payload(live.salt, delta),
                created_at=created_at,
                parents=live.heads,
                key=key,
                policy=DEFAULT_POLICY,
                random=self._random,
            )
            live.deleted = deleted
            live.entries += 1
            kept = delta if live.entries <= REPLAY_MAX else None
            wave.append((unsigned, live, peer if end > start else None, start, end, deleted, kept))
            in_wave.add(live.doc_id)
            lives.append(live)
        sign_wave()

        new = [m[0] for m in made]
        # A few entries are stored right here when the writer is free: the hop to a
        # worker thread cost more than their insert (a bigger batch lets the event
        # loop run while it is stored).
        put_now = getattr(self.store, "try_put_entries", None)
        with written_here():  # this node's own write: its followers may publish it
            results = put_now(new) if put_now is not None and len(new) <= INLINE_PUT_MAX else None
            if results is None:
                results = await self.store.put_entries(new)
        bad = [r for r in results if r.status is not PutStatus.ACCEPTED]
        if bad:
            raise StoreError(f"the store refused a new entry: {bad[0].reason}")

        for entry, live, *_ in made:
            live.updated_at = max(live.updated_at, entry.created_at)
            if not live.created_at:
                live.created_at = entry.created_at
        # Made one at a time as they are written: a batch's worth of rows alive at
        # once would set the garbage collector off several times per batch.
        states = (
            StateRow(
                entry.cid, live.doc_id, APPLIED, entry.kind, entry.height, entry.parents,
                entry.created_at, peer, start if peer is not None else None,
                end if peer is not None else None, deleted, None, None, kept,
            )
            for entry, live, peer, start, end, deleted, kept in made
        )  # fmt: skip
        with self._views.tx():
            self._views.put_states(states, reasons=False)
            self._materialize({id(v): v for v in lives}.values())
            self._evict()
            # When nothing else reached the store since the views' position, these
            # entries are the next ones in its log: move past them without a scan.
            seqs = [r.seq for r in results]
            if seqs == list(range(self._cursor + 1, self._cursor + 1 + len(seqs))):
                self._cursor += len(seqs)
                self._views.set_meta("cursor", str(self._cursor))
        return lives

    def _materialize(self, lives: Iterable[_Live]) -> None:
        """Write live documents' values and heads to the views (inside a tx)."""
        lives = list(lives)
        self._views.write_docs(self._doc_write(live) for live in lives)  # one row at a time
        for live in (v for v in lives if v.is_schema):
            text = live.value.get("json")
            self._views.set_schema(live.coll, text if type(text) is str else None)
            if type(text) is str:
                try:
                    schema = Schema.from_json(json.loads(text))
                except (SchemaError, ValueError):
                    continue  # a peer's malformed schema is kept as text, not enforced
                for path in schema.indexes:
                    self._views.ensure_index(live.coll, path)

    @staticmethod
    def _doc_write(live: _Live) -> DocWrite:
        value = read_value(live.loro)
        live.value = value
        return DocWrite(
            live.doc_id,
            value,
            live=not live.deleted and not live.is_schema and bool(live.heads),
            deleted=live.deleted,
            created_at=live.created_at,
            updated_at=live.updated_at,
            heads=[h.cid for h in live.heads],
        )

    # --- receiving entries ----------------------------------------------------------------

    async def put_entries(self, entries: Sequence[Any]) -> list[Any]:
        """Store entries (any form a store takes) and apply those of this space."""
        results = await self.store.put_entries(entries)
        # Shielded: a cancel arriving here (an interrupted sync) must not leave
        # stored entries unapplied until the next write or restart.
        with anyio.CancelScope(shield=True):
            await self.catch_up()
        return results

    async def catch_up(self, batch: int = 1000) -> int:
        """Apply entries the store holds that the views have not consumed."""
        applied = 0
        # After a put the store holds a few new entries: a small first read (a store may
        # serve it without a thread hop), and no second read when it was not full.
        limit = min(batch, CATCH_UP_FIRST)
        while True:
            got = await self.store.scan(self._cursor, limit)
            if not got:
                return applied
            mine = []
            for r in got:
                if r.entry.space != self.space:
                    continue
                if r.entry.collection == DIRECTORY_COLLECTION:
                    self._hlc.observe(r.entry.created_at)  # later writes come after grants
                else:
                    mine.append(r.entry)
            async with self._lock:
                applied += await self._ingest(mine)
                with self._views.tx():
                    self._cursor = got[-1].seq
                    self._views.set_meta("cursor", str(self._cursor))
            if len(got) < limit:
                return applied  # the log's end; a later put catches up on its own
            limit = batch

    async def retry_pending(self) -> int:
        """Try again the entries that waited for a key (call after adding keys; the
        database calls it on open when the keyring changed since it last did)."""
        fingerprint = self.home.keyring.fingerprint()
        with self._views.lock:
            stalled = self._views.stalled()
        entries = [e for e in await self.store.get_entries(stalled) if e is not None]
        async with self._lock:
            applied = await self._ingest(entries)
            with self._views.tx():
                self._views.set_meta("keyring", fingerprint)
        return applied

    async def waiting_for_key(
        self, collections: Sequence[str] = (), documents: Sequence[tuple[str, str]] = ()
    ) -> KeyWait:
        """The entries this node holds but cannot read yet for want of a key (theirs,
        or one an ancestor needs), in ``collections`` and ``documents`` (default:
        all of this space)."""
        with self._views.lock:
            colls = [c for c in map(self._coll_of, collections) if c is not None]
            docs = [d for d in (self._doc_of(c, d) for c, d in documents) if d is not None]
            if (collections or documents) and not colls and not docs:
                return KeyWait(0, ())
            found = self._views.key_waits(colls=colls, docs=docs)
        return KeyWait(found.entries, found.keys)

    def _coll_of(self, name: str) -> int | None:
        return self._views.coll_id(name, create=False)

    def _doc_of(self, collection: str, name: str) -> int | None:
        coll = self._views.coll_id(collection, create=False)
        return None if coll is None else self._views.doc_id(coll, name, create=False)

    async def _ingest(self, entries: Sequence[Entry]) -> int:
        """Apply what is ready, park the rest by missing parent, then wake waiters."""
        with self._pinning() as pinned, self._views.tx():
            return await self._ingest_in_tx(entries, pinned)

    async def _ingest_in_tx(self, entries: Sequence[Entry], pinned: dict[int, _Live]) -> int:
        applied = 0
        todo = list(entries)
        while todo:
            with self._views.lock:
                known = self._views.states([e.cid for e in todo])
            # An entry can come twice (a duplicate in the batch, or woken by two
            # parents): keep one, or its delta would be offered to Loro twice.
            unique = {e.cid: e for e in todo if e.cid not in known or known[e.cid].state == PENDING}
            fresh = sorted(unique.values(), key=lambda e: e.height)
            woken: list[CID] = []
            await self._preload([(e.collection, e.document) for e in fresh], pinned)
            for entry in fresh:
                outcome = await self._try_apply(entry, pinned)
                if outcome is not None:
                    applied += outcome == APPLIED
                    with self._views.tx():
                        woken += self._views.take_waiters(entry.cid)
            todo = [e for e in await self.store.get_entries(woken) if e is not None]
        self._materialize(pinned.values())
        self._evict()
        return applied

    async def _try_apply(self, entry: Entry, pinned: dict[int, _Live]) -> int | None:
        """Apply ``entry`` if its parents are applied. Returns the state it reached,
        or None when it keeps waiting."""
        with self._views.lock:
            parents = self._views.states(list(entry.parents))
        missing = [p for p in entry.parents if p not in parents or parents[p].state == PENDING]
        refused = [p for p in entry.parents if p in parents and parents[p].state == REFUSED]
        with self._views.lock:
            coll = self._views.coll_id(entry.collection)
            assert coll is not None
            doc_id = self._views.doc_id(coll, entry.document)
            assert doc_id is not None

        def record(state: int, reason: str | None, **ops: Any) -> None:
            with self._views.tx():
                self._views.put_state(
                    StateRow(
                        entry.cid, doc_id, state, entry.kind, entry.height, entry.parents,
                        entry.created_at, ops.get("peer"), ops.get("start"), ops.get("end"),
                        ops.get("deleted", False), reason, ops.get("wants_key"),
                        ops.get("delta"),
                    )
                )  # fmt: skip
                if state == PENDING and missing:
                    self._views.add_waits(entry.cid, missing)

        if refused:
            record(REFUSED, f"parent {refused[0]} was refused")
            await self._refuse_waiters(entry.cid)
            return REFUSED
        if missing:
            record(PENDING, f"waits for parent {missing[0]}")
            return None
        try:
            peer, start, end, deleted, kept = await self._apply(entry, doc_id, parents, pinned)
        except MissingKeyError as exc:
            record(PENDING, exc.message, wants_key=entry.key_id)
            return None
        except DecryptionError as exc:
            # Signed as it is, so not damaged on the way: its author encrypted it with
            # material this node lacks — or with garbage, which no one can tell apart,
            # unless the id held names the held material.
            assert entry.key_id is not None
            if not self._names_its_material(entry.key_id):
                record(
                    PENDING,
                    f"no key {entry.key_id!r} that reads entry {entry.cid}: the key this node"
                    " holds under that id is other material (another node's key of that name)",
                    wants_key=entry.key_id,
                )
                return None
            record(REFUSED, f"{exc.message}, whose id names the material this node holds")
            await self._refuse_waiters(entry.cid)
            return REFUSED
        except (ChangeRefusedError, CryptoKeyError) as exc:
            record(REFUSED, exc.message)
            await self._refuse_waiters(entry.cid)
            return REFUSED
        record(APPLIED, None, peer=peer, start=start, end=end, deleted=deleted, delta=kept)
        return APPLIED

    async def _refuse_waiters(self, cid: CID) -> None:
        """Children of a refused entry can never be applied: refuse them too."""
        stack = [cid]
        while stack:
            with self._views.tx():
                children = self._views.take_waiters(stack.pop())
                found = self._views.states(children)
                for child in found.values():
                    self._views.put_state(
                        StateRow(
                            child.cid, child.doc, REFUSED, child.kind, child.height,
                            child.parents, child.created_at, None, None, None, False,
                            f"ancestor {cid} was refused",
                        )
                    )  # fmt: skip
            stack.extend(found)

    async def _apply(
        self,
        entry: Entry,
        doc_id: int,
        parents: Mapping[CID, StateRow],
        pinned: dict[int, _Live],
    ) -> tuple[int | None, int, int, bool, bytes | None]:
        """Apply a causally ready entry to its document; returns its op range, its
        deleted flag and its delta when the views keep it (:data:`REPLAY_MAX`)."""
        if entry.kind not in DOC_KINDS:
            raise ChangeRefusedError(f"kind {entry.kind!r} is not a document change")
        if (entry.kind == Kind.SCHEMA) != (entry.document == SCHEMA_DOC):
            raise ChangeRefusedError("schema entries live in the '$schema' document only")
        for p in parents.values():
            if p.doc != doc_id:
                raise ChangeRefusedError(f"parent {p.cid} belongs to another document")
        expected = 1 + max((p.height for p in parents.values()), default=0)
        if entry.height != expected:
            raise ChangeRefusedError(f"height {entry.height}; its parents make it {expected}")
        salt, delta = crdt.decode_payload(self._decrypt(entry))
        live = await self._live(entry.collection, entry.document, pinned)
        peer = crdt.writer_peer(entry.author, self.space, entry.collection, entry.document, salt)
        start = end = 0
        if delta:
            info = crdt.inspect_delta(delta)
            if info.peer != peer:
                raise ChangeRefusedError("the delta holds ops of another writer than its author")
            start, end = info.start, info.end
            have = crdt.next_counter(live.loro, peer)
            if start != have:
                raise ChangeRefusedError(
                    f"the delta's ops start at {start}; this writer's next op is {have}"
                )
            for dep_peer, counter in info.deps:
                self._check_dep(doc_id, dep_peer, counter, parents)
            crdt.import_delta(live.loro, delta)
        deleted = entry.kind == Kind.DELETE or (
            entry.kind != Kind.CREATE and any(p.deleted for p in parents.values())
        )
        heads = [h for h in live.heads if h.cid not in parents]
        live.heads = sorted([*heads, _Ref(entry.cid, entry.height)], key=lambda r: r.cid)
        with self._views.lock:
            flags = self._views.states([h.cid for h in heads])
        live.deleted = deleted or any(flags[h.cid].deleted for h in heads if h.cid in flags)
        live.updated_at = max(live.updated_at, entry.created_at)
        live.created_at = min(live.created_at or entry.created_at, entry.created_at)
        self._hlc.observe(entry.created_at)
        live.entries += 1
        kept = delta if live.entries <= REPLAY_MAX else None
        return (peer if delta else None), start, end, deleted, kept

    def _check_dep(
        self, doc_id: int, peer: int, counter: int, parents: Mapping[CID, StateRow]
    ) -> None:
        with self._views.lock:
            owner = self._views.owner(doc_id, peer, counter)
        if owner is None:
            raise ChangeRefusedError(f"the delta depends on op {counter}@{peer}, not applied")
        if owner.cid in parents:
            return
        seen: set[CID] = set()
        stack = list(parents.values())
        while stack:
            s = stack.pop()
            if s.cid == owner.cid:
                return
            if s.height <= owner.height or s.cid in seen:
                continue
            seen.add(s.cid)
            if len(seen) > MAX_ANCESTRY_WALK:
                break
            with self._views.lock:
                stack.extend(self._views.states(list(s.parents)).values())
        raise ChangeRefusedError(f"the delta depends on op {counter}@{peer} outside its ancestry")

    # --- reads -----------------------------------------------------------------------------

    def _document(self, collection: str, row: Any) -> Document:
        return Document(
            row.name,
            collection,
            row.value or {},
            tuple(str(h) for h in row.heads),
            row.created_at,
            row.updated_at,
            row.deleted,
        )

    def _doc_id(self, collection: str, doc_id: str) -> int | None:
        with self._views.lock:
            coll = self._views.coll_id(collection, create=False)
            return None if coll is None else self._views.doc_id(coll, doc_id, create=False)

    def _doc_row(self, collection: str, doc_id: str) -> Any:
        """The document's views row; MissingKeyError when some of its entries wait
        for a key (its value would be partial, or empty)."""
        did = self._doc_id(collection, doc_id)
        with self._views.lock:
            row = self._views.doc(did) if did is not None else None
            waits = self._views.key_waits(doc=did) if did is not None else None
        if waits is not None and waits.entries:
            keys = ", ".join(repr(k) for k in waits.keys)
            count = "1 entry waits" if waits.entries == 1 else f"{waits.entries} entries wait"
            raise MissingKeyError(
                f"document {doc_id!r} in {collection!r}: {count} for key {keys} ({waits.reason})"
            )
        if row is None or not row.heads:
            raise NotFoundError(f"no document {doc_id!r} in {collection!r}")
        return row


class Collection:
    """One collection of a :class:`Database`. Get it with ``db.collection(name)``."""

    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.name = name

    def __repr__(self) -> str:
        return f"<Collection {self.name!r}>"

    # --- writes ---------------------------------------------------------------------------

    def _prepare(
        self, fields: Mapping[str, Any], where: str, schema: Schema | None
    ) -> dict[str, Any]:
        if not isinstance(fields, Mapping):
            raise ValidationError(f"{where} must be an object of fields")
        check_value(dict(fields), where)
        if schema is None:
            return dict(fields)
        prepared = schema.coerce(fields)
        schema.check_write(prepared)
        return prepared

    async def create(self, value: Mapping[str, Any], *, id: str | None = None) -> Document:
        """Create a document; ``id`` defaults to a random one."""
        try:
            return (await self.create_many([value], ids=[id]))[0]
        except LoomError as exc:
            exc.index = None  # not a batch of the caller's
            raise

    async def create_many(
        self, values: Sequence[Mapping[str, Any]], *, ids: Sequence[str | None] | None = None
    ) -> builtins.list[Document]:
        """Create documents in one store batch: all of them, or none.

        ``ids[i]`` (default: a random id) is the id of ``values[i]``. When one
        of them is refused (a bad value or id, a schema violation, an id that
        exists or that comes twice), nothing is written and the error raised is
        that one's, with its position in :attr:`LoomError.index`."""
        changes, lives = await self._create_many(values, ids)
        return [self._from_live(c.document, live) for c, live in zip(changes, lives, strict=True)]

    async def create_many_ids(
        self, values: Sequence[Mapping[str, Any]], *, ids: Sequence[str | None] | None = None
    ) -> builtins.list[str]:
        """:meth:`create_many`, answering only the new documents' ids (what a bulk
        import needs: no :class:`Document` is made)."""
        changes, _ = await self._create_many(values, ids)
        return [c.document for c in changes]

    async def _create_many(
        self, values: Sequence[Mapping[str, Any]], ids: Sequence[str | None] | None
    ) -> tuple[builtins.list[_Change], builtins.list[_Live]]:
        ids = list(ids) if ids is not None else [None] * len(values)
        if len(ids) != len(values):
            raise ValidationError("give one id (or None) per value")
        schema = self.db._schema(self.name)
        changes = []
        for index, (value, given) in enumerate(zip(values, ids, strict=True)):
            try:
                doc_id = _check_doc_id(given) if given is not None else uuid.uuid4().hex
                prepared = self._prepare(value, "value", schema)
                if schema is not None:
                    schema.validate(plain(prepared))
            except LoomError as exc:
                raise _at(exc, index) from None
            changes.append(_Change(self.name, doc_id, Kind.CREATE.value, _replace(prepared)))
        position = {id(c): i for i, c in enumerate(changes)}

        def check(change: _Change, live: _Live) -> None:
            if live.heads and not live.deleted:
                raise _at(
                    ConflictError(f"document {change.document!r} already exists in {self.name!r}"),
                    position[id(change)],
                )

        return changes, await self.db._commit(changes, check)

    async def update(
        self, id: str, patch: Mapping[str, Any], *, unset: Sequence[str] = ()
    ) -> Document:
        """Merge ``patch`` into the document; remove the ``unset`` field paths."""
        return (await self.update_many([(id, patch)], unset=unset))[0]

    async def update_many(
        self,
        patches: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        unset: Sequence[str] = (),
    ) -> builtins.list[Document]:
        unset = [check_path(u) for u in unset]
        schema = self.db._schema(self.name)
        changes = []
        prepared_by_change: dict[int, dict[str, Any]] = {}
        for doc_id, patch in patches:
            _check_doc_id(doc_id)
            prepared = self._prepare(patch, "patch", schema)
            change = _Change(self.name, doc_id, Kind.CHANGE.value, _patch(prepared, unset))
            prepared_by_change[id(change)] = prepared
            changes.append(change)

        def check(change: _Change, live: _Live) -> None:
            if not live.heads or live.deleted:
                raise NotFoundError(f"no document {change.document!r} in {self.name!r}")
            if schema is not None:  # without one, nothing reads the preview: the
                # value is read from Loro when the batch is written
                preview = preview_patch(live.value, prepared_by_change[id(change)], unset)
                schema.validate(preview)
                live.value = preview  # later patches of this batch see this one

        lives = await self.db._commit(changes, check)
        return [self._from_live(c.document, live) for c, live in zip(changes, lives, strict=True)]

    async def increment(self, id: str, field: str, by: int | float = 1) -> Document:
        return await self.update(id, {field: Increment(by)})

    async def edit_text(
        self, id: str, field: str, *, index: int, delete: int = 0, insert: str = ""
    ) -> Document:
        """Splice a text field: delete ``delete`` chars at ``index``, insert ``insert``."""
        check_key(field)
        if type(index) is not int or type(delete) is not int or index < 0 or delete < 0:
            raise ValidationError("index and delete must be non-negative integers")
        if type(insert) is not str:
            raise ValidationError("insert must be a string")

        def mutate(root: loro.LoroMap) -> None:
            text = container_at(root, field)
            if not isinstance(text, loro.LoroText):
                raise ValidationError(f"field {field!r} is not a text")
            if index + delete > text.len_unicode:
                raise ValidationError(f"text {field!r} has {text.len_unicode} characters")
            if delete:
                text.delete(index, delete)
            if insert:
                text.insert(index, insert)

        def check(change: _Change, live: _Live) -> None:
            if not live.heads or live.deleted:
                raise NotFoundError(f"no document {id!r} in {self.name!r}")
            current = live.value.get(field)
            if type(current) is not str:
                raise ValidationError(f"field {field!r} is not a text")
            if index + delete > len(current):
                raise ValidationError(f"text {field!r} has {len(current)} characters")

        _check_doc_id(id)
        (live,) = await self.db._commit([_Change(self.name, id, Kind.CHANGE.value, mutate)], check)
        return self._from_live(id, live)

    async def delete(self, id: str) -> None:
        """Delete a document: a tombstone entry; its history stays."""
        _check_doc_id(id)

        def check(change: _Change, live: _Live) -> None:
            if not live.heads or live.deleted:
                raise NotFoundError(f"no document {id!r} in {self.name!r}")

        await self.db._commit([_Change(self.name, id, Kind.DELETE.value, _noop)], check)

    # --- reads ------------------------------------------------------------------------------

    def _from_live(self, doc_id: str, live: _Live) -> Document:
        return Document(
            doc_id,
            self.name,
            live.value,
            tuple(str(h.cid) for h in live.heads),
            live.created_at,
            live.updated_at,
            live.deleted,
        )

    async def get(self, id: str) -> Document:
        _check_doc_id(id)
        row = self.db._doc_row(self.name, id)
        if row.deleted:
            raise NotFoundError(f"document {id!r} in {self.name!r} was deleted")
        return self.db._document(self.name, row)

    async def list(self, *, limit: int = 100, offset: int = 0) -> builtins.list[Document]:
        return await self.query(None, limit=limit, offset=offset)

    async def query(
        self,
        where: Sequence[Any] | None = None,
        *,
        sort: Sequence[Any] | str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[Document]:
        filters = q.parse_filters(where)
        sorts = q.parse_sort(sort)
        limit, offset = q.check_page(limit, offset)
        views = self.db._views

        def run() -> builtins.list[Any]:
            with views.lock:
                coll = views.coll_id(self.name, create=False)
                return [] if coll is None else views.query(coll, filters, sorts, limit, offset)

        rows = await anyio.to_thread.run_sync(run) if filters or sorts else run()
        return [self.db._document(self.name, r) for r in rows]

    async def exists(self) -> bool:
        """Whether this node has the collection (a document or a schema made it)."""
        views = self.db._views
        with views.lock:
            return views.coll_id(self.name, create=False) is not None

    async def count(self, where: Sequence[Any] | None = None) -> int:
        filters = q.parse_filters(where)
        views = self.db._views
        with views.lock:
            coll = views.coll_id(self.name, create=False)
            return 0 if coll is None else views.count(coll, filters)

    async def explain(self, where: Sequence[Any] | None = None, sort: Any = None) -> str:
        """SQLite's query plan (shows whether an index is used)."""
        views = self.db._views
        with views.lock:
            coll = views.coll_id(self.name, create=False)
            if coll is None:
                return ""
            return views.explain(coll, q.parse_filters(where), q.parse_sort(sort))

    async def create_index(self, field: str) -> None:
        """Index a field (dotted path) of this collection's documents, on this node."""
        check_path(field)
        views = self.db._views

        def run() -> None:
            with views.tx():
                coll = views.coll_id(self.name)
                assert coll is not None
                views.ensure_index(coll, field)

        await anyio.to_thread.run_sync(run)

    async def indexes(self) -> builtins.list[str]:
        views = self.db._views
        with views.lock:
            coll = views.coll_id(self.name, create=False)
            return [] if coll is None else views.indexes(coll)

    async def history(self, id: str) -> builtins.list[HistoryItem]:
        """Every entry of the document, parents before children."""
        _check_doc_id(id)
        did = self.db._doc_id(self.name, id)
        views = self.db._views
        with views.lock:
            states = views.doc_states(did) if did is not None else []
        if not states:  # what the node holds of it, whether applied, waiting or refused
            raise NotFoundError(f"no document {id!r} in {self.name!r}")
        metas = await self.db.store.get_metadata([s.cid for s in states])
        items = []
        wants: dict[CID, str] = {}  # the key each pending entry waits for, if any
        for s, meta in zip(states, metas, strict=True):
            if s.state == PENDING:
                key = s.wants_key
                if key is None:  # waits for parents: for a key, if one of them does
                    with views.lock:
                        parents = views.waiting_on(s.cid)
                    key = next((wants[p] for p in parents if p in wants), None)
                if key is not None:
                    wants[s.cid] = key
            items.append(
                HistoryItem(
                    str(s.cid),
                    s.kind,
                    tuple(str(p) for p in s.parents),
                    s.height,
                    meta.author.hex() if meta is not None else "",
                    s.created_at,
                    STATE_NAMES[s.state],
                    s.reason,
                    meta.key_id if meta is not None else None,
                    wants.get(s.cid),
                )
            )
        return items

    async def get_version(self, id: str, cid: str | CID) -> Document:
        """The document as it was right after entry ``cid`` (with its ancestors only)."""
        _check_doc_id(id)
        try:
            target = CID.coerce(cid)
        except LoomError as exc:
            raise ValidationError(f"bad version id {cid!r}: {exc.message}") from exc
        row = self.db._doc_row(self.name, id)
        views = self.db._views
        with views.lock:
            found = views.states([target])
            if target not in found or found[target].doc != row.id:
                raise NotFoundError(f"{target} is not an entry of document {id!r}")
            if found[target].state != APPLIED:
                raise NotFoundError(f"{target} is not applied ({STATE_NAMES[found[target].state]})")
            ancestry = {target: found[target]}
            stack = list(found[target].parents)
            while stack:
                more = views.states([c for c in stack if c not in ancestry])
                ancestry.update(more)
                stack = [p for s in more.values() for p in s.parents if p not in ancestry]
        ordered = sorted(ancestry.values(), key=lambda s: (s.height, s.cid))
        entries = await self.db.store.get_entries([s.cid for s in ordered])
        doc = crdt.new_doc()
        for entry in entries:
            if entry is None:
                raise StoreCorruptError("an applied entry is missing from the store")
            _, delta = crdt.decode_payload(self.db._decrypt(entry))
            if delta:
                crdt.import_delta(doc, delta)
        t = found[target]
        deleted = t.deleted
        return Document(
            id,
            self.name,
            read_value(doc),
            (str(target),),
            min(s.created_at for s in ordered),
            max(s.created_at for s in ordered),
            deleted,
        )


def _at(error: LoomError, index: int) -> LoomError:
    """``error``, marked as the refusal of the item at ``index`` of a batch."""
    error.index = index
    return error


def _noop(root: loro.LoroMap) -> None:
    return None


def _replace(fields: Mapping[str, Any]) -> Callable[[loro.LoroMap], None]:
    def mutate(root: loro.LoroMap) -> None:
        existing = root.keys()
        if not existing:  # a new document (not one revived after a delete)
            fill_new_map(root, fields)
            return
        for key in existing:
            if key not in fields:
                root.delete(key)
        for key, value in fields.items():
            set_field(root, key, value)

    return mutate


def _patch(fields: Mapping[str, Any], unset: Sequence[str]) -> Callable[[loro.LoroMap], None]:
    def mutate(root: loro.LoroMap) -> None:
        apply_patch(root, fields, unset)

    return mutate
