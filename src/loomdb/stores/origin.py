"""Where a put comes from: this node's own write path, or the receive path.

The node's own writes (a document change made here, a directory operation
signed here) run inside :func:`written_here`; everything else a store is given
— entries pulled or pushed by sync, received by gossip, a relay's traffic — is
*received*. The guarded store reads :func:`is_written_here` when it reports
what it stored, so the node's receipt-log followers can tell the two apart
(:meth:`~loomdb.replication.feed.EntryFeed.written_here`): gossip publishes
only what this node wrote itself, not what the same user wrote on another
device and this node received.

A context variable, not an argument: the write path goes through layers that
take any store (a database over a guarded store, or over a plain one), and the
mark must not be forgeable by the data — only code on the write path sets it.
It is set for the duration of one ``put_entries`` call and is task-local.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_WRITTEN_HERE: ContextVar[bool] = ContextVar("loomdb_written_here", default=False)


@contextmanager
def written_here() -> Iterator[None]:
    """Mark the puts made inside the block as this node's own writes."""
    token = _WRITTEN_HERE.set(True)
    try:
        yield
    finally:
        _WRITTEN_HERE.reset(token)


def is_written_here() -> bool:
    """Whether the current put is one of this node's own writes."""
    return _WRITTEN_HERE.get()
