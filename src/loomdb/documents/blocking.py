"""A small synchronous façade over :class:`Database`, for scripts and notebooks.

::

    import loomdb

    with loomdb.connect("./my-home") as db:
        notes = db.collection("notes")
        notes.create({"title": "hello"}, id="n1")
        print(notes.get("n1").value)

The database runs on an event loop in a background thread (anyio's blocking
portal); every method blocks until its coroutine is done.

It is opened as a node opens its databases (:meth:`NodeDatabases.open
<loomdb.node.databases.NodeDatabases.open>`): behind the trust guard, so
``connect(home, space="team~z6Mk…")`` writes that managed space with the key
its directory gives this node's user, and refuses what the directory forbids.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from loomdb.documents.database import DEFAULT_SPACE, Collection, Database
from loomdb.node.home import NodeHome

T = TypeVar("T")


class BlockingCollection:
    """The methods of :class:`Collection`, blocking."""

    def __init__(self, portal: BlockingPortal, collection: Collection) -> None:
        self._portal = portal
        self._collection = collection
        self.name = collection.name

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._collection, name)
        if not callable(method):
            return method  # type: ignore[no-any-return]

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._portal.call(lambda: method(*args, **kwargs))

        return call


class BlockingDatabase:
    """The methods of :class:`Database`, blocking. Close it (or use ``with``)."""

    def __init__(
        self,
        db: Database,
        portal: BlockingPortal,
        cm: AbstractContextManager[Any],
        close: Callable[[], Awaitable[None]] | None = None,
    ):
        self._db = db
        self._portal = portal
        self._cm = cm
        self._close = close or db.aclose

    @property
    def peer_id(self) -> str:
        return self._db.peer_id

    @property
    def user_id(self) -> str:
        return self._db.user_id

    def collection(self, name: str) -> BlockingCollection:
        return BlockingCollection(self._portal, self._db.collection(name))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._db, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._portal.call(lambda: method(*args, **kwargs))

        return call

    def close(self) -> None:
        try:
            self._portal.call(self._close)
        finally:
            self._cm.__exit__(None, None, None)

    def __enter__(self) -> BlockingDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    home: NodeHome | str | os.PathLike[str], *, space: str = DEFAULT_SPACE, **options: Any
) -> BlockingDatabase:
    """Open the database of ``space`` in a node home for blocking use (other options
    as :meth:`Database.open`: ``store``, ``clock``, ``random``, ``cache_size``, ``key``)."""
    from loomdb.node.databases import NodeDatabases  # the node layer sits above this one

    node = home if isinstance(home, NodeHome) else NodeHome.open(Path(home))
    cm = start_blocking_portal()
    portal = cm.__enter__()
    try:
        dbs = portal.call(lambda: NodeDatabases.open(node, space, **options))
    except BaseException:
        cm.__exit__(None, None, None)
        raise
    return BlockingDatabase(dbs.default, portal, cm, dbs.aclose)
