"""Checking many received entries at once, on every core.

:func:`decode_many` is :func:`~loomdb.entries.entry.decode_entry` over a batch,
with the same result, item for item, as a loop over it. Most of an entry's check
is its Ed25519 signature (~55 of ~70 µs on a quiet core), and libsodium releases
the GIL while it verifies (PyNaCl is a cffi binding), so slices of one batch
checked on several threads verify on as many cores at once; the Python around
the signature (CBOR, field checks, the canonical re-encode) still takes turns.

The threads are a small pool shared by the process, created on first use; a
batch too small to share (fewer than ``2 * MIN_SLICE`` entries) is checked on
the calling thread alone.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from loomdb.entries.cid import CID
from loomdb.entries.entry import DEFAULT_POLICY, Entry, EntryPolicy, decode_entry, decode_hashed
from loomdb.errors import EntryError

THREADS = max(1, min(4, os.cpu_count() or 1))
"""Threads that check one batch between them: one per core, at most 4 (read at
each call: a benchmark sets 1 to measure one core)."""
MIN_SLICE: Final = 32  # fewer entries per thread are not worth the hand-over

Checked = Entry | EntryError
"""An entry that passed every check, or the error that refused it."""

_pool: list[ThreadPoolExecutor] = []  # made on first use
_pool_lock = threading.Lock()


def executor() -> ThreadPoolExecutor:
    """The shared pool (made on first use) that batches are split across."""
    with _pool_lock:
        if not _pool:
            _pool.append(
                ThreadPoolExecutor(max(1, THREADS - 1), thread_name_prefix="loomdb-verify")
            )
        return _pool[0]


def _check(
    raws: Sequence[bytes], cids: Sequence[CID | None], policy: EntryPolicy, hashed: bool
) -> list[Checked]:
    out: list[Checked] = []
    for raw, cid in zip(raws, cids, strict=True):
        try:
            if hashed:
                assert cid is not None
                out.append(decode_hashed(raw, cid, policy=policy))
            else:
                out.append(decode_entry(raw, expected_cid=cid, policy=policy))
        except EntryError as exc:
            out.append(exc)
    return out


def decode_many(
    raws: Sequence[bytes],
    expected: Sequence[CID | None] | None = None,
    *,
    policy: EntryPolicy = DEFAULT_POLICY,
    threads: int | None = None,
    hashed: bool = False,
) -> list[Checked]:
    """``decode_entry`` (signature included) of every item of ``raws``, in order:
    the entry, or the :class:`EntryError` that refused it. ``expected``: the CID
    each was asked for (None: any). ``hashed``: each of ``expected`` is
    ``CID.of`` of its bytes, computed by the caller in this process (a store's
    duplicate check), so it is not computed again (see ``decode_hashed``).
    Runs on ``threads`` threads, this one among them."""
    cids: Sequence[CID | None] = [None] * len(raws) if expected is None else expected
    if len(cids) != len(raws):
        raise ValueError("decode_many: one expected CID per entry")
    if hashed and any(c is None for c in cids):
        raise ValueError("decode_many: hashed=True needs every entry's CID")
    parts = max(1, min(THREADS if threads is None else threads, len(raws) // MIN_SLICE))
    if parts == 1:
        return _check(raws, cids, policy, hashed)
    size = -(-len(raws) // parts)
    cuts = range(0, len(raws), size)
    pool = executor()
    later = [
        pool.submit(_check, raws[i : i + size], cids[i : i + size], policy, hashed)
        for i in cuts[1:]
    ]
    out = _check(raws[:size], cids[:size], policy, hashed)  # this thread takes the first slice
    for future in later:
        out += future.result()
    return out
