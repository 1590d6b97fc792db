"""The gossip message: signed entries, or the news of one too large to carry.

A message is a CBOR map (no tags, at most :data:`MAX_MESSAGE` bytes), one of::

    {"v": 1, "e": <the entry's bytes>}                            an entry
    {"v": 1, "a": [<cid bytes>, space, collection, document]}     an announcement
    {"v": 2, "b": [<entry bytes>, <entry bytes>, ...]}            a batch (2 or more)

Version 2 only adds the batch: entries stored together (one write of many
documents, an import) go out as a few batches instead of a message each. A
sender still sends a lone entry in the version-1 form, so a node that knows only
version 1 keeps receiving single updates (it drops batches as malformed, and
head exchange brings it those entries). A receiver takes all three forms.

An entry larger than :data:`MAX_INLINE` is announced by CID and document; the
receiver fetches the document over ``/loomdb/sync`` (which brings its
parents too). The entry's bytes are what the author signed: a receiver
verifies them like any entry it receives (CID, signature, then membership).

:func:`pack` splits entries into messages, each within :data:`MAX_MESSAGE`
and :data:`MAX_BATCH_ENTRIES`, in the order given (parents before children stay
so). :func:`parse_message` takes untrusted bytes and either returns a
:class:`GossipEntry` / :class:`GossipBatch` / :class:`Announcement` or raises
``ProtocolError`` (``oversized`` first, before anything is decoded).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import cbor2

from loomdb.entries.cid import CID, CID_SIZE, PREFIX
from loomdb.entries.entry import Entry
from loomdb.errors import ProtocolError

VERSION: Final = 1
BATCH_VERSION: Final = 2
MAX_INLINE: Final = 128 * 1024
"""An entry larger than this is announced, not carried."""
MAX_MESSAGE: Final = MAX_INLINE + 1024
"""A received message larger than this is dropped unread (counted ``oversized``);
a batch is packed within it."""
MAX_BATCH_ENTRIES: Final = 500
"""Entries in one batch, at most (a longer one is malformed)."""
MAX_NAME: Final = 1024  # bytes of a space, collection or document name in an announcement
_BATCH_HEAD: Final = 16  # the map, its keys, the version and the array's head, at most


class OversizedError(ProtocolError):
    """A gossip message over :data:`MAX_MESSAGE` bytes."""


@dataclass(frozen=True, slots=True)
class GossipEntry:
    raw: bytes


@dataclass(frozen=True, slots=True)
class GossipBatch:
    raws: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Announcement:
    cid: CID
    space: str
    collection: str
    document: str


Message = GossipEntry | GossipBatch | Announcement


def encode_entry(raw: bytes, space: str, collection: str, document: str, cid: CID) -> bytes:
    """The message for an entry: the entry itself, or its announcement when large."""
    if len(raw) <= MAX_INLINE:
        return cbor2.dumps({"v": VERSION, "e": raw})
    return cbor2.dumps({"v": VERSION, "a": [cid.binary, space, collection, document]})


def encode_batch(raws: Sequence[bytes]) -> bytes:
    """One message carrying ``raws`` (each at most :data:`MAX_INLINE`): the
    version-1 form for one entry, a batch for more."""
    if len(raws) == 1:
        return cbor2.dumps({"v": VERSION, "e": raws[0]})
    return cbor2.dumps({"v": BATCH_VERSION, "b": list(raws)})


def _item_size(raw: bytes) -> int:
    """The CBOR size of a byte string of ``raw``'s length (its head and bytes)."""
    n = len(raw)
    return n + (1 if n < 24 else 2 if n < 256 else 3 if n < 65536 else 5)


def pack(entries: Sequence[Entry]) -> Iterator[tuple[bytes, int]]:
    """The messages that carry ``entries``, in order, each with the number of
    entries it carries: batches of the inline ones (each within
    :data:`MAX_MESSAGE` and :data:`MAX_BATCH_ENTRIES`), an announcement for each
    entry over :data:`MAX_INLINE` (where it stood in the order)."""
    batch: list[bytes] = []
    size = _BATCH_HEAD
    for entry in entries:
        raw = entry.raw
        if len(raw) > MAX_INLINE:
            if batch:
                yield encode_batch(batch), len(batch)
                batch, size = [], _BATCH_HEAD
            yield encode_entry(raw, entry.space, entry.collection, entry.document, entry.cid), 1
            continue
        item = _item_size(raw)
        if batch and (size + item > MAX_MESSAGE or len(batch) >= MAX_BATCH_ENTRIES):
            yield encode_batch(batch), len(batch)
            batch, size = [], _BATCH_HEAD
        batch.append(raw)
        size += item
    if batch:
        yield encode_batch(batch), len(batch)


def parse_message(data: bytes) -> Message:
    """A received message, or ``ProtocolError`` (``OversizedError`` when too large)."""
    if len(data) > MAX_MESSAGE:
        raise OversizedError(f"a gossip message of {len(data)} bytes; the limit is {MAX_MESSAGE}")
    try:
        body = cbor2.loads(data, tag_hook=_no_tags)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise ProtocolError(f"not a gossip message: {exc}") from None
    if not isinstance(body, dict) or body.get("v") not in (VERSION, BATCH_VERSION):
        raise ProtocolError("not a gossip message of version 1 or 2")
    if body["v"] == BATCH_VERSION:
        return _parse_batch(body)
    if set(body) == {"v", "e"} and isinstance(body["e"], bytes):
        return GossipEntry(body["e"])
    if set(body) == {"v", "a"} and isinstance(body["a"], list) and len(body["a"]) == 4:
        cid, *names = body["a"]
        if not (isinstance(cid, bytes) and len(cid) == CID_SIZE and cid[:4] == PREFIX):
            raise ProtocolError("an announcement's CID is not a loomdb CID")
        if not all(isinstance(n, str) and 0 < len(n.encode()) <= MAX_NAME for n in names):
            raise ProtocolError("an announcement names a document badly")
        return Announcement(CID(cid), *names)
    raise ProtocolError("a gossip message holds an entry or an announcement")


def _parse_batch(body: dict[object, object]) -> GossipBatch:
    raws = body.get("b")
    if set(body) != {"v", "b"} or not isinstance(raws, list):
        raise ProtocolError("a version-2 gossip message holds a batch")
    if not 2 <= len(raws) <= MAX_BATCH_ENTRIES:
        raise ProtocolError(f"a batch of {len(raws)} entries (2 to {MAX_BATCH_ENTRIES})")
    if not all(isinstance(r, bytes) and r for r in raws):
        raise ProtocolError("a batch holds entries' bytes only")
    return GossipBatch(tuple(raws))


def _no_tags(decoder: object, tag: object) -> object:
    raise ValueError("tags are not used")
