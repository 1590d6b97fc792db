"""``NodeDatabases``: the databases of one node's spaces over one guarded store.

A node stores every space it syncs in one store, behind the trust guard. The
document API works on one space per request: the node's default space, or the
one a request names (header ``X-Loomdb-Space``). Databases are opened on first
use and share the store, the keyring and :class:`~loomdb.trust.admin.NodeTrust`
(which picks each managed space's key and checks this node's right to write).

As a store (what sync and the store server see), ``put_entries`` stores through
the guard, then applies what landed to every open database; when directory
entries brought keys granted to this node's user, they are unwrapped into the
keyring and the entries that waited for them are applied.

:meth:`NodeDatabases.open` wires them over a home's own store as the daemon
does (directory book, guard, trust): ``loomdb.connect(home, space=S)`` uses it,
so a script writes a managed space with its keys and checks, as a node would.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio

from loomdb.documents.database import Database, check_space
from loomdb.documents.model import KeyWait
from loomdb.errors import NotFoundError, ValidationError
from loomdb.node.home import NodeHome
from loomdb.stores.base import ContentAddressedStore, PutResult
from loomdb.sync.reconcile import ReconcileReply, ReconcileRequest
from loomdb.sync.replicate import SyncScope
from loomdb.trust.admin import NodeTrust
from loomdb.trust.book import DirectoryBook
from loomdb.trust.guard import GuardedStore
from loomdb.trust.spaces import parse_space_id

MAX_OPEN = 64
IDLE_SECONDS = 300.0


class NodeDatabases:
    """Opens, caches and closes the node's databases; also the node's sync store.

    At most :data:`MAX_OPEN` are open: opening one more closes the one used
    least recently, and one unused for :data:`IDLE_SECONDS` is closed at the
    next open — so naming many spaces cannot exhaust the node. The default
    space's database stays open, and so does any held by :meth:`using`."""

    def __init__(
        self,
        home: NodeHome,
        store: GuardedStore,
        trust: NodeTrust,
        default_space: str,
        *,
        max_open: int = MAX_OPEN,
        idle_seconds: float = IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        options: dict[str, Any] | None = None,
        owned: ContentAddressedStore | None = None,
    ) -> None:
        """``options`` go to every :meth:`Database.open` (clock, random, cache_size,
        key); ``owned`` is a store :meth:`aclose` closes."""
        self.home = home
        self.store = store
        self.trust = trust
        self.default_space = default_space
        self.max_open = max_open
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._open: OrderedDict[str, Database] = OrderedDict()  # least recently used first
        self._used: dict[str, float] = {}
        self._leases: Counter[str] = Counter()
        self._lock = anyio.Lock()
        self._options = options or {}
        self._owned = owned

    @classmethod
    async def open(
        cls,
        home: NodeHome,
        default_space: str,
        *,
        store: ContentAddressedStore | None = None,
        **options: Any,
    ) -> NodeDatabases:
        """The databases of ``home`` over ``store`` (default: the home's own, closed
        by :meth:`aclose`), behind the trust guard, with ``default_space`` open."""
        base = home.open_store() if store is None else store
        owned = base if store is None else None
        dbs: NodeDatabases | None = None
        try:
            book = DirectoryBook()
            await book.load(base)
            guarded = GuardedStore(base, book)
            trust = NodeTrust(home, guarded, book)
            dbs = cls(home, guarded, trust, default_space, options=options, owned=owned)
            await dbs.start()
        except BaseException:
            with anyio.CancelScope(shield=True):
                if dbs is not None:
                    await dbs.aclose()  # closes the owned store too
                elif owned is not None:
                    await owned.aclose()
            raise
        return dbs

    @property
    def default(self) -> Database:
        return self._open[self.default_space]

    @property
    def open_spaces(self) -> list[str]:
        return list(self._open)

    async def start(self) -> None:
        await self.get(self.default_space)

    async def get(self, space: str | None = None) -> Database:
        """The database of ``space`` (default: the node's), opened on first use."""
        space = space or self.default_space
        if space not in self._open:
            check_space(space)
            if parse_space_id(space) is not None and self.store.book.state(space) is None:
                raise NotFoundError(
                    f"this node holds no directory for space {space!r}: join it first"
                )
            async with self._lock:
                if space not in self._open:
                    await self._make_room()
                    self._open[space] = await Database.open(
                        self.home,
                        space=space,
                        store=self.store,
                        policy=self.trust,
                        close_store=False,
                        **self._options,
                    )
        self._open.move_to_end(space)
        self._used[space] = self._clock()
        return self._open[space]

    @asynccontextmanager
    async def using(self, space: str | None = None) -> AsyncIterator[Database]:
        """The database of ``space``, kept open until the block ends."""
        db = await self.get(space)
        self._leases[db.space] += 1
        try:
            yield db
        finally:
            self._leases[db.space] -= 1
            self._used[db.space] = self._clock()

    async def _make_room(self) -> None:
        """Close idle databases, then the least recently used while full."""
        now = self._clock()
        for space in [s for s in self._open if self._closable(s)]:
            if now - self._used.get(space, now) >= self.idle_seconds:
                await self._close(space)
        while len(self._open) >= self.max_open:
            victim = next((s for s in self._open if self._closable(s)), None)
            if victim is None:
                raise ValidationError(
                    f"{len(self._open)} spaces are in use at once; try again shortly"
                )
            await self._close(victim)

    def _closable(self, space: str) -> bool:
        return space != self.default_space and self._leases[space] == 0

    async def _close(self, space: str) -> None:
        db = self._open.pop(space)
        self._used.pop(space, None)
        await db.aclose()

    async def aclose(self) -> None:
        for db in self._open.values():
            await db.aclose()
        self._open.clear()
        if self._owned is not None:
            owned, self._owned = self._owned, None
            await owned.aclose()

    async def waiting_for_key(self, scope: SyncScope) -> KeyWait:
        """The entries of ``scope`` this node cannot read yet for want of a key (for
        the sync report; a scope of every space counts the open databases')."""
        spaces = [scope.space] if scope.space is not None else list(self._open)
        entries, keys = 0, set[str]()
        for space in spaces:
            try:
                db = await self.get(space)
            except (NotFoundError, ValidationError):
                continue  # a managed space this node holds no directory of: nothing applied
            found = await db.waiting_for_key(scope.collections, scope.documents)
            entries += found.entries
            keys.update(found.keys)
        return KeyWait(entries, tuple(sorted(keys)))

    async def after_put(self) -> None:
        """Apply what landed to the open databases, and what waited for new keys."""
        added = self.trust.refresh_keys()
        for db in list(self._open.values()):
            await db.catch_up()
            if added:
                await db.retry_pending()

    # --- the store sync sees --------------------------------------------------------------

    async def put_entries(self, entries: Iterable[Any]) -> list[PutResult]:
        results = await self.store.put_entries(list(entries))
        # Shielded like Database.put_entries: stored entries must not stay unapplied.
        with anyio.CancelScope(shield=True):
            await self.after_put()
        return results

    async def reconcile(self, requests: Sequence[ReconcileRequest]) -> list[ReconcileReply]:
        for db in list(self._open.values()):
            await db.catch_up()
        return await self.store.reconcile(requests)


def _delegate(name: str) -> Any:
    async def method(self: NodeDatabases, *args: Any) -> Any:
        return await getattr(self.store, name)(*args)

    method.__name__ = name
    return method


# Real attributes, not __getattr__: isinstance() against the runtime-checkable store
# protocol looks attributes up statically from Python 3.12 on.
for _name in (
    "get_entries",
    "get_raw",
    "has_entries",
    "get_metadata",
    "heads",
    "list_spaces",
    "list_collections",
    "list_documents",
    "list_entries",
    "missing_parents",
    "scan",
    "store_head",
    "count",
    "catch_up_fingerprints",
):
    setattr(NodeDatabases, _name, _delegate(_name))
