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

from collections.abc import Iterable, Sequence
from typing import Any

import anyio

from loomdb.documents.database import Database
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


class NodeDatabases:
    """Opens, caches and closes the node's databases; also the node's sync store."""

    def __init__(
        self,
        home: NodeHome,
        store: GuardedStore,
        trust: NodeTrust,
        default_space: str,
        *,
        options: dict[str, Any] | None = None,
        owned: ContentAddressedStore | None = None,
    ) -> None:
        """``options`` go to every :meth:`Database.open` (clock, random, cache_size,
        key); ``owned`` is a store :meth:`aclose` closes."""
        self.home = home
        self.store = store
        self.trust = trust
        self.default_space = default_space
        self._open: dict[str, Database] = {}
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

    async def start(self) -> None:
        await self.get(self.default_space)

    async def get(self, space: str | None = None) -> Database:
        """The database of ``space`` (default: the node's), opened on first use."""
        space = space or self.default_space
        if space in self._open:
            return self._open[space]
        try:
            managed = parse_space_id(space)
        except ValidationError as exc:
            raise ValidationError(f"bad space id: {exc.message}") from None
        if managed is not None and self.store.book.state(space) is None:
            raise NotFoundError(f"this node holds no directory for space {space!r}: join it first")
        async with self._lock:
            if space not in self._open:
                if len(self._open) >= MAX_OPEN:
                    raise ValidationError(f"at most {MAX_OPEN} spaces are open at once")
                self._open[space] = await Database.open(
                    self.home,
                    space=space,
                    store=self.store,
                    policy=self.trust,
                    close_store=False,
                    **self._options,
                )
        return self._open[space]

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
):
    setattr(NodeDatabases, _name, _delegate(_name))
