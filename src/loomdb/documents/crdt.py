"""Loro, behind one boundary: payloads, writer binding, delta inspection.

Every call into Loro that reads foreign bytes goes through here, because Loro
raises bare ``BaseException`` on bad input; we translate it once into
:class:`ChangeRefusedError`.

Writer binding. Loro op ids (``counter@peer``) are not authenticated, so a
peer id is *derived*: ``peer = H(author key, space, collection, document,
salt)``, with a fresh random ``salt`` per writing session (never reused, so a
restored older state can't reissue op ids). The salt travels in the encrypted
payload; a reader recomputes the peer from the entry's signed author and
refuses a delta holding ops of any other peer.

Payload of a document entry (inside the encryption)::

    {"s": salt (16 bytes), "d": Loro update bytes (may be empty)}
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from typing import Final

import cbor2
import loro

from loomdb.entries.codec import bytes_header
from loomdb.errors import ChangeRefusedError

SALT_SIZE: Final = 16
_u32 = struct.Struct(">I").pack
_FRONTIER = re.compile(r"Frontiers\(\[((?:\d+@\d+)(?:, \d+@\d+)*)?\]\)\Z")


def writer_peer(author: bytes, space: str, collection: str, document: str, salt: bytes) -> int:
    """The Loro peer id an author writes with in one document and session."""
    s, c, d = space.encode(), collection.encode(), document.encode()
    # One update of the length-prefixed parts (as ten updates would hash them), joined
    # without a generator (every document opened for a write makes one).
    data = b"".join(
        (_u32(len(author)), author, _u32(len(s)), s, _u32(len(c)), c, _u32(len(d)), d,
         _u32(len(salt)), salt)
    )  # fmt: skip
    digest = hashlib.blake2b(data, digest_size=8, person=b"loomdb-peer-v1").digest()
    # 63 bits: Loro reserves PeerID::MAX.
    return int.from_bytes(digest, "big") >> 1


_PAYLOAD_HEAD: Final = b"\xa2\x61s"  # a CBOR map of 2, then the text key "s"
_DELTA_KEY: Final = b"\x61d"  # the text key "d"


def encode_payload(salt: bytes, delta: bytes) -> bytes:
    """``cbor2.dumps({"s": salt, "d": delta})``, byte for byte, without the encoder
    (a test holds the two equal)."""
    return b"".join(
        (_PAYLOAD_HEAD, bytes_header(len(salt)), salt, _DELTA_KEY, bytes_header(len(delta)), delta)
    )


def decode_payload(payload: bytes) -> tuple[bytes, bytes]:
    try:
        data = cbor2.loads(payload)
    except Exception as exc:  # cbor2 raises several types on garbage
        raise ChangeRefusedError("payload is not a document change (bad CBOR)") from exc
    if (
        not isinstance(data, dict)
        or set(data) != {"s", "d"}
        or type(data["s"]) is not bytes
        or len(data["s"]) != SALT_SIZE
        or type(data["d"]) is not bytes
    ):
        raise ChangeRefusedError("payload is not a document change ({'s': salt, 'd': delta})")
    return data["s"], data["d"]


@dataclass(frozen=True, slots=True)
class DeltaInfo:
    """What a delta holds, read without importing it."""

    peer: int
    start: int  # first op counter
    end: int  # one past the last op counter
    deps: tuple[tuple[int, int], ...]  # (peer, counter) ids the delta builds on


def inspect_delta(delta: bytes) -> DeltaInfo:
    """Check that ``delta`` is a Loro update of one peer's contiguous ops."""
    try:
        meta = loro.LoroDoc.decode_import_blob_meta(delta, True)
        mode = str(meta.mode)
        starts = meta.partial_start_vv.to_spans().inner()
        ends = meta.partial_end_vv.to_spans().inner()
        frontiers = str(meta.start_frontiers)
    except BaseException as exc:  # Loro raises bare BaseException
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise ChangeRefusedError(f"delta is not a Loro update: {exc}") from None
    if not mode.endswith("Updates"):
        raise ChangeRefusedError(f"delta must be a Loro update, not {mode}")
    if len(ends) != 1:
        raise ChangeRefusedError(f"a delta must hold the ops of one writer, not {len(ends)}")
    ((peer, (_, end)),) = ends.items()
    start = starts.get(peer, (0, 0))[1] if starts else 0
    if set(starts) - {peer} or not 0 <= start < end:
        raise ChangeRefusedError("delta's version range is inconsistent")
    match = _FRONTIER.match(frontiers)
    if match is None:
        raise ChangeRefusedError("cannot read the delta's dependencies")
    deps = tuple(
        (int(p), int(c))
        for c, p in (item.split("@") for item in (match.group(1) or "").split(", ") if item)
    )
    return DeltaInfo(peer, start, end, deps)


def import_delta(doc: loro.LoroDoc, delta: bytes) -> None:
    """Import a causally ready delta; anything Loro would buffer is refused."""
    try:
        status = doc.import_(delta)
        pending = status.pending
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise ChangeRefusedError(f"Loro refused the delta: {exc}") from None
    if pending is not None and pending.inner():
        raise ChangeRefusedError("delta depends on operations that are not applied")


def import_snapshot(doc: loro.LoroDoc, snapshot: bytes) -> None:
    """Import a snapshot this node took (:func:`export_snapshot`) into a new document."""
    try:
        doc.import_(snapshot)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise ChangeRefusedError(f"Loro refused the snapshot: {exc}") from None


def export_snapshot(doc: loro.LoroDoc) -> bytes:
    """The document whole, history included (it continues as the original would)."""
    return doc.export(loro.ExportMode.Snapshot())


def new_doc() -> loro.LoroDoc:
    doc: loro.LoroDoc = loro.LoroDoc()  # type: ignore[no-untyped-call]
    return doc


def export_since(doc: loro.LoroDoc, since: loro.VersionVector) -> bytes:
    return doc.export(loro.ExportMode.Updates(since))


def next_counter(doc: loro.LoroDoc, peer: int) -> int:
    last = doc.oplog_vv.get_last(peer)
    return 0 if last is None else last + 1


def contains(doc: loro.LoroDoc, peer: int, counter: int) -> bool:
    last = doc.oplog_vv.get_last(peer)
    return last is not None and counter <= last
