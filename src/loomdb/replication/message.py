"""The gossip message: one signed entry, or the news of one too large to carry.

A message is a CBOR map (no tags, at most :data:`MAX_MESSAGE` bytes)::

    {"v": 1, "e": <the entry's bytes>}                            an entry
    {"v": 1, "a": [<cid bytes>, space, collection, document]}     an announcement

An entry larger than :data:`MAX_INLINE` is announced by CID and document; the
receiver fetches the document over ``/loomdb/sync`` (which brings its
parents too). The entry's bytes are what the author signed: a receiver
verifies them like any entry it receives (CID, signature, then membership).

:func:`parse_message` takes untrusted bytes and either returns a
:class:`GossipEntry` / :class:`Announcement` or raises ``ProtocolError``
(``oversized`` first, before anything is decoded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import cbor2

from loomdb.entries.cid import CID, CID_SIZE, PREFIX
from loomdb.errors import ProtocolError

VERSION: Final = 1
MAX_INLINE: Final = 128 * 1024
"""An entry larger than this is announced, not carried."""
MAX_MESSAGE: Final = MAX_INLINE + 1024
"""A received message larger than this is dropped unread (counted ``oversized``)."""
MAX_NAME: Final = 1024  # bytes of a space, collection or document name in an announcement


class OversizedError(ProtocolError):
    """A gossip message over :data:`MAX_MESSAGE` bytes."""


@dataclass(frozen=True, slots=True)
class GossipEntry:
    raw: bytes


@dataclass(frozen=True, slots=True)
class Announcement:
    cid: CID
    space: str
    collection: str
    document: str


Message = GossipEntry | Announcement


def encode_entry(raw: bytes, space: str, collection: str, document: str, cid: CID) -> bytes:
    """The message for an entry: the entry itself, or its announcement when large."""
    if len(raw) <= MAX_INLINE:
        return cbor2.dumps({"v": VERSION, "e": raw})
    return cbor2.dumps({"v": VERSION, "a": [cid.binary, space, collection, document]})


def parse_message(data: bytes) -> Message:
    """A received message, or ``ProtocolError`` (``OversizedError`` when too large)."""
    if len(data) > MAX_MESSAGE:
        raise OversizedError(f"a gossip message of {len(data)} bytes; the limit is {MAX_MESSAGE}")
    try:
        body = cbor2.loads(data, tag_hook=_no_tags)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise ProtocolError(f"not a gossip message: {exc}") from None
    if not isinstance(body, dict) or body.get("v") != VERSION:
        raise ProtocolError("not a gossip message of version 1")
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


def _no_tags(decoder: object, tag: object) -> object:
    raise ValueError("tags are not used")
