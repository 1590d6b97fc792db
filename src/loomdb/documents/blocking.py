"""A small synchronous façade over :class:`Database`, for scripts and notebooks.

::

    import loomdb

    with loomdb.connect("./my-home") as db:
        notes = db.collection("notes")
        notes.create({"title": "hello"}, id="n1")
        print(notes.get("n1").value)

The database runs on an event loop in a background thread (anyio's blocking
portal); every method blocks until its coroutine is done.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from loomdb.documents.database import Collection, Database
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

    def __init__(self, db: Database, portal: BlockingPortal, cm: AbstractContextManager[Any]):
        self._db = db
        self._portal = portal
        self._cm = cm

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
            self._portal.call(self._db.aclose)
        finally:
            self._cm.__exit__(None, None, None)

    def __enter__(self) -> BlockingDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(home: NodeHome | str | os.PathLike[str], **options: Any) -> BlockingDatabase:
    """Open a node home's database for blocking use (options as :meth:`Database.open`)."""
    cm = start_blocking_portal()
    portal = cm.__enter__()
    try:
        db = portal.call(lambda: Database.open(home, **options))
    except BaseException:
        cm.__exit__(None, None, None)
        raise
    return BlockingDatabase(db, portal, cm)
