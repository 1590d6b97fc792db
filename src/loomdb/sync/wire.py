"""The sync wire format: request and reply frames between a client and a store server.

Sans-IO: functions from values to bytes and back; no sockets, no event loop.
Transports (:mod:`loomdb.transports`) carry the frames unread.

A frame is one flag byte and a CBOR body::

    frame   = flags(1 byte) body
    flags   = 0x00: body is CBOR; 0x01: body is zlib-compressed CBOR
    request = {"v": version, "op": name, "a": {arguments}, "z"?: false}
    reply   = {"v": version, "ok": result}
            | {"v": version, "err": {"code": str, "message": str, "supported": [int]}}

Every request names its protocol version, so no extra round trip is spent on a
handshake: a server that does not speak the version answers with a
``sync.version`` error naming the versions it does (``supported``), and the
client raises :class:`ProtocolVersionError`. ``hello`` is still there for a
client that wants to know the server's limits and features before it starts.

``"z": false`` in a request asks for its reply uncompressed (on loopback and LANs
zlib costs more CPU than the bytes it saves: ~12 µs per entry on the serving
node). It needs no negotiation: a reply may always be sent uncompressed, and a
server that predates the key ignores it and compresses as before.

Invariants:

1. Decoding never raises anything but :class:`ProtocolError` (or
   :class:`FrameTooLargeError` for an over-size frame, before any parsing):
   every field is type-checked here, so handlers get well-typed arguments.
2. A frame is compressed only when that saves at least 1/8 of its size
   (encrypted payloads do not compress; headers and ids of many entries do).
3. Decompression is bounded by the frame limit (no zip bombs).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import cbor2

from loomdb.entries.cid import CID, CID_SIZE
from loomdb.entries.entry import EntryMeta
from loomdb.errors import (
    FrameTooLargeError,
    LoomError,
    ProtocolError,
    ProtocolVersionError,
    RemoteError,
)
from loomdb.stores.base import SetKey

PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = (1,)
FEATURES: Final = ("negentropy-v1", "zlib")

RAW: Final = 0x00
ZLIB: Final = 0x01
COMPRESS_ABOVE: Final = 1024
DEFAULT_MAX_FRAME: Final = 8 * 1024 * 1024

OPS: Final = frozenset(
    {
        "hello",
        "access",
        "put",
        "get",
        "has",
        "meta",
        "heads",
        "spaces",
        "collections",
        "documents",
        "entries",
        "missing",
        "scan",
        "head",
        "count",
        "reconcile",
    }
)


@dataclass(frozen=True, slots=True)
class Request:
    version: int
    op: str
    args: dict[str, Any]
    compress_reply: bool = True  # False when the client sent "z": false


# --- frames ---------------------------------------------------------------------


def pack(body: object, *, compress: bool = True) -> bytes:
    data = cbor2.dumps(body)
    if compress and len(data) > COMPRESS_ABOVE:
        packed = zlib.compress(data, 1)
        if len(packed) <= len(data) - len(data) // 8:
            return bytes((ZLIB,)) + packed
    return bytes((RAW,)) + data


def unpack(frame: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> Any:
    if len(frame) > max_frame:
        raise FrameTooLargeError(f"frame of {len(frame)} bytes; the limit is {max_frame}")
    if not frame:
        raise ProtocolError("empty frame")
    flags, data = frame[0], frame[1:]
    if flags == ZLIB:
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(data, max_frame + 1)
        except zlib.error as exc:
            raise ProtocolError(f"bad compressed frame: {exc}") from None
        if len(data) > max_frame or inflater.unconsumed_tail:
            raise FrameTooLargeError(f"frame inflates past the limit of {max_frame} bytes")
    elif flags != RAW:
        raise ProtocolError(f"unknown frame flags 0x{flags:02x}")
    try:
        return cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several unrelated types on garbage
        raise ProtocolError(f"frame is not valid CBOR: {exc}") from None


def encode_request(
    op: str,
    args: Mapping[str, Any],
    version: int = PROTOCOL_VERSION,
    *,
    compress: bool = True,
) -> bytes:
    """A request frame; ``compress=False`` sends it uncompressed and asks for an
    uncompressed reply (``"z": false``)."""
    body: dict[str, Any] = {"v": version, "op": op, "a": dict(args)}
    if not compress:
        body["z"] = False
    return pack(body, compress=compress)


def decode_request(frame: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> Request:
    body = unpack(frame, max_frame)
    if not isinstance(body, dict):
        raise ProtocolError("a request is a map")
    version, op, args = body.get("v"), body.get("op"), body.get("a", {})
    if type(version) is not int:
        raise ProtocolError("a request names its protocol version")
    if version not in SUPPORTED_VERSIONS:
        raise ProtocolVersionError(
            f"protocol version {version} is not supported; this node speaks "
            + ", ".join(map(str, SUPPORTED_VERSIONS))
        )
    if op not in OPS:
        raise ProtocolError(f"unknown operation {op!r}")
    if not isinstance(args, dict):
        raise ProtocolError("request arguments are a map")
    compress = body.get("z", True)
    if type(compress) is not bool:
        raise ProtocolError("'z' in a request is a boolean")
    return Request(version, op, args, compress)


def encode_reply(result: object, *, compress: bool = True) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "ok": result}, compress=compress)


def encode_error(error: LoomError) -> bytes:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if isinstance(error, ProtocolVersionError):
        body["supported"] = list(SUPPORTED_VERSIONS)
    return pack({"v": PROTOCOL_VERSION, "err": body})


def decode_reply(frame: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> Any:
    """The result of a reply. An error reply raises ``ProtocolVersionError`` or
    ``RemoteError``."""
    body = unpack(frame, max_frame)
    if not isinstance(body, dict) or ("ok" in body) == ("err" in body):
        raise ProtocolError("a reply is a map with either 'ok' or 'err'")
    if "ok" in body:
        return body["ok"]
    err = body["err"]
    if not isinstance(err, dict):
        raise ProtocolError("an error reply holds a map")
    code, message = str(err.get("code", "loom")), str(err.get("message", ""))
    if code == ProtocolVersionError.code:
        supported = err.get("supported")
        raise ProtocolVersionError(
            f"the server refused the protocol version: {message} (it speaks {supported})"
        )
    raise RemoteError(message, code)


# --- typed fields ---------------------------------------------------------------


def uint(args: Mapping[str, Any], name: str, default: int | None = None) -> int:
    value = args.get(name, default)
    if type(value) is not int or value < 0:
        raise ProtocolError(f"argument {name!r} must be a non-negative integer")
    return value


def text(args: Mapping[str, Any], name: str) -> str:
    value = args.get(name)
    if type(value) is not str:
        raise ProtocolError(f"argument {name!r} must be a string")
    return value


def list_of(
    args: Mapping[str, Any], name: str, item: Callable[[Any], Any], max_items: int
) -> list[Any]:
    value = args.get(name)
    if type(value) is not list:
        raise ProtocolError(f"argument {name!r} must be a list")
    if len(value) > max_items:
        raise ProtocolError(f"argument {name!r} has {len(value)} items; at most {max_items}")
    return [item(v) for v in value]


def cid_of(value: object) -> CID:
    if type(value) is not bytes or len(value) != CID_SIZE:
        raise ProtocolError("a CID is sent as its binary form")
    try:
        return CID(value)
    except LoomError as exc:
        raise ProtocolError(f"bad CID: {exc.message}") from None


def cids_to_wire(cids: list[CID]) -> list[bytes]:
    return [c.binary for c in cids]


def bytes_of(value: object) -> bytes:
    if type(value) is not bytes:
        raise ProtocolError("expected a byte string")
    return value


def meta_to_wire(meta: EntryMeta | None) -> list[Any] | None:
    if meta is None:
        return None
    return [
        meta.cid.binary,
        meta.kind,
        meta.space,
        meta.collection,
        meta.document,
        [p.binary for p in meta.parents],
        meta.height,
        meta.author,
        meta.created_at,
        meta.key_id,
        meta.size,
    ]


def meta_from_wire(value: object) -> EntryMeta | None:
    if value is None:
        return None
    if type(value) is not list or len(value) != 11:
        raise ProtocolError("entry metadata is a list of 11 fields")
    cid, kind, space, coll, doc, parents, height, author, ts, key_id, size = value
    strings = (kind, space, coll, doc)
    if not all(type(s) is str for s in strings) or type(parents) is not list:
        raise ProtocolError("bad entry metadata")
    if not all(type(n) is int and n >= 0 for n in (height, ts, size)):
        raise ProtocolError("bad entry metadata numbers")
    if type(author) is not bytes or (key_id is not None and type(key_id) is not str):
        raise ProtocolError("bad entry metadata")
    return EntryMeta(
        cid_of(cid),
        kind,
        space,
        coll,
        doc,
        tuple(cid_of(p) for p in parents),
        height,
        author,
        ts,
        key_id,
        size,
    )


def set_to_wire(key: SetKey) -> list[str | None]:
    return [key.space, key.collection, key.document]


def set_from_wire(value: object) -> SetKey:
    if type(value) is not list or len(value) != 3:
        raise ProtocolError("a set is [space, collection, document]")
    space, coll, doc = value
    if type(space) is not str or not all(v is None or type(v) is str for v in (coll, doc)):
        raise ProtocolError("a set is [space, collection, document] of strings or nulls")
    try:
        return SetKey(space, coll, doc)
    except LoomError as exc:
        raise ProtocolError(f"bad set: {exc.message}") from None
