"""Gossip topic names: hashes of what they are about, so routers learn no names.

A topic is ``/loomdb/gossip/1/`` and the base32 of a BLAKE2b-256 digest, keyed by
a domain string (:data:`DOMAIN`) and taken over the length-prefixed parts
(space, collection[, document]) — so no two tuples share a topic, a document's
topic never equals a collection's, and the digest is of no use outside this
protocol. Anyone who knows the names computes the topic; a router relaying the
messages of a space it is not told about sees opaque strings.

Every local write is announced on its document's topic and its collection's
(:func:`topics_of`). A node joins only **collection** topics, also for its
document subscriptions, and keeps or drops each message by its own
subscriptions: 10,000 subscribed documents of one collection cost one topic.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from typing import Final

DOMAIN: Final = b"loomdb/gossip-topic/v1"
PREFIX: Final = "/loomdb/gossip/1/"


def name_digest(domain: bytes, kind: bytes, *parts: str) -> bytes:
    """BLAKE2b-256 keyed by ``domain`` over ``kind`` and the length-prefixed ``parts``:
    names hashed so that no two tuples collide and only those who know the names can
    compute it (gossip topics here, DHT provider keys in :mod:`~loomdb.replication.providers`)."""
    h = hashlib.blake2b(digest_size=32, key=domain)
    h.update(kind)
    for part in parts:
        data = part.encode()
        h.update(len(data).to_bytes(4, "big"))
        h.update(data)
    return h.digest()


def _digest(kind: bytes, *parts: str) -> str:
    return PREFIX + base64.b32encode(name_digest(DOMAIN, kind, *parts)).decode().rstrip("=").lower()


@functools.lru_cache(maxsize=4096)  # asked for every entry published
def collection_topic(space: str, collection: str) -> str:
    return _digest(b"c", space, collection)


@functools.lru_cache(maxsize=16384)  # a document's updates come in runs
def document_topic(space: str, collection: str, document: str) -> str:
    return _digest(b"d", space, collection, document)


def topics_of(space: str, collection: str, document: str) -> tuple[str, str]:
    """Where an entry of this document is announced: its document's topic, its
    collection's."""
    return document_topic(space, collection, document), collection_topic(space, collection)
