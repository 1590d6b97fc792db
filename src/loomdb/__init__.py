"""loomdb: a peer-to-peer, offline-first, end-to-end-encrypted document database."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.3.0"

if TYPE_CHECKING:
    from loomdb.documents.blocking import BlockingDatabase


def connect(home: Any, **options: Any) -> BlockingDatabase:
    """Open a node home's database for blocking use; see :mod:`loomdb.documents.blocking`."""
    from loomdb.documents.blocking import connect as _connect

    return _connect(home, **options)
