"""Signing many new entries at once, on every core.

:func:`build_entries` is :meth:`UnsignedEntry.finish` of each item of a batch
with its author's signature, the same entries, item for item, as signing them
one by one. Ed25519 signing is most of a new entry's cost after its payload is
made (~20 of ~50 µs on a quiet core) and libsodium releases the GIL while it
signs (PyNaCl is a cffi binding), so slices of a batch signed on several
threads sign on as many cores at once. The threads are the pool that
:mod:`loomdb.entries.verify` checks received batches on.
"""

from __future__ import annotations

from collections.abc import Sequence

from loomdb.entries import verify
from loomdb.entries.entry import Entry, UnsignedEntry
from loomdb.identity.keys import SigningKey


def _sign(author: SigningKey, unsigned: Sequence[UnsignedEntry]) -> list[Entry]:
    sign = author.sign
    return [u.finish(sign(u.signed)) for u in unsigned]


def build_entries(
    author: SigningKey, unsigned: Sequence[UnsignedEntry], *, threads: int | None = None
) -> list[Entry]:
    """Sign and address every item of ``unsigned`` (made by ``author``), in order,
    on ``threads`` threads (default :data:`verify.THREADS`), this one among them.
    A batch too small to share (fewer than ``2 * verify.MIN_SLICE``) is signed here."""
    for u in unsigned:
        if u.author != author.public_key:
            raise ValueError("build_entries: an entry prepared for another author")
    parts = max(
        1, min(verify.THREADS if threads is None else threads, len(unsigned) // verify.MIN_SLICE)
    )
    if parts == 1:
        return _sign(author, unsigned)
    size = -(-len(unsigned) // parts)
    pool = verify.executor()
    later = [
        pool.submit(_sign, author, unsigned[i : i + size]) for i in range(size, len(unsigned), size)
    ]
    out = _sign(author, unsigned[:size])  # this thread takes the first slice
    for future in later:
        out += future.result()
    return out
