"""The wire form of an entry: one canonical DAG-CBOR map.

An entry is a CBOR map of exactly these 13 keys, in DAG-CBOR's canonical key
order (shorter keys first, then bytewise)::

    h          uint     height: 1 + the largest height among the parents
    v          uint     entry format version (1)
    ts         uint     created-at, a hybrid logical clock value (see loomdb.clock)
    doc        text     document id
    kid        text|null  id of the named key that encrypts the payload; null = public
    par        [link]   parents: CIDs (tag 42), sorted by their bytes, no duplicates
    auth       bytes    author: 32-byte Ed25519 public key
    coll       text     collection
    kind       text     create / change / delete / … (see loomdb.entries.entry.Kind)
    nonce      bytes|null  12-byte AES-GCM nonce; null exactly when kid is null
    space      text     space (tenant / database) id
    payload    bytes    AES-256-GCM ciphertext + tag (or the plain bytes of a public entry)
    signature  bytes    Ed25519 signature

The names are chosen so that canonical order puts the eleven header fields
first, then ``payload``, then ``signature``. Three byte strings the protocol
needs are then prefixes of one encoding, and each entry is CBOR-encoded once:

* **AAD** of the payload cipher = the header alone, a map of 11;
* **signed bytes** = the map of 12 (header + payload): every field but the signature;
* **entry bytes** = the map of 13; its SHA-256 is the entry's CID.

They differ from each other only in the map's first byte and the tail.
Decoding re-encodes the decoded map and requires the result to equal the bytes
received, so any non-canonical form (key order, integer width, duplicate key,
indefinite length, extra tags) is refused.
"""

from __future__ import annotations

from typing import Any, Final

import cbor2

from loomdb.entries.cid import CID_SIZE, PREFIX
from loomdb.errors import MalformedEntryError

HEADER_FIELDS: Final = (
    "h",
    "v",
    "ts",
    "doc",
    "kid",
    "par",
    "auth",
    "coll",
    "kind",
    "nonce",
    "space",
)
ALL_FIELDS: Final = (*HEADER_FIELDS, "payload", "signature")

CID_TAG: Final = 42
_MAP11: Final = 0xA0 + len(HEADER_FIELDS)
_MAP12: Final = _MAP11 + 1
_MAP13: Final = _MAP11 + 2
_PAYLOAD_KEY: Final = cbor2.dumps("payload")
_SIGNATURE_KEY: Final = cbor2.dumps("signature")
_SIG_HEADER: Final = b"\x58\x40"  # byte string of 64
SIGNATURE_SIZE: Final = 64
_SIG_TAIL_SIZE: Final = len(_SIGNATURE_KEY) + len(_SIG_HEADER) + SIGNATURE_SIZE
_MAP12_BYTE: Final = bytes((_MAP12,))
LINK_PREFIX: Final = b"\x00" + PREFIX  # a link's bytes: identity multibase, then the CID
LINK_SIZE: Final = 1 + CID_SIZE


def bytes_header(length: int) -> bytes:
    """The CBOR head of a byte string (major type 2) of ``length`` bytes."""
    if length < 24:
        return bytes((0x40 + length,))
    if length < 0x100:
        return bytes((0x58, length))
    if length < 0x10000:
        return b"\x59" + length.to_bytes(2, "big")
    if length < 0x100000000:
        return b"\x5a" + length.to_bytes(4, "big")
    return b"\x5b" + length.to_bytes(8, "big")


def link(cid_bytes: bytes) -> cbor2.CBORTag:
    """A DAG-CBOR link: tag 42 over a zero byte (the identity multibase) and the binary CID."""
    return cbor2.CBORTag(CID_TAG, b"\x00" + cid_bytes)


def link_bytes(value: object) -> bytes:
    """The binary CID inside a DAG-CBOR link, or :class:`MalformedEntryError`."""
    if (
        type(value) is cbor2.CBORTag
        and value.tag == CID_TAG
        and type(value.value) is bytes
        and len(value.value) == CID_SIZE + 1
        and value.value[0] == 0
        and value.value[1:5] == PREFIX
    ):
        return value.value[1:]
    raise MalformedEntryError("a parent is not a DAG-CBOR link to a dag-cbor/sha2-256 CID")


def encode_header(header: dict[str, Any]) -> bytes:
    """Encode the 11 header fields; ``header`` must hold them in HEADER_FIELDS order.

    cbor2 keeps a dict's insertion order when not asked for canonical output,
    which is ~2x faster than canonical=True; the order is the canonical one by
    construction.
    """
    return cbor2.dumps(header)


def aad_of(header_bytes: bytes) -> bytes:
    """Additional data that binds a payload to its header."""
    return header_bytes


def signed_bytes(header_bytes: bytes, payload: bytes) -> bytes:
    """Every field but the signature: what the author signs."""
    return bytes((_MAP12,)) + header_bytes[1:] + _PAYLOAD_KEY + bytes_header(len(payload)) + payload


def entry_bytes(signed: bytes, signature: bytes) -> bytes:
    """The full entry from its signed bytes and signature."""
    return bytes((_MAP13,)) + signed[1:] + _SIGNATURE_KEY + _SIG_HEADER + signature


def entry_size(signed: bytes) -> int:
    """The length of ``entry_bytes(signed, signature)``, known before signing."""
    return len(signed) + _SIG_TAIL_SIZE


def decode_fields(raw: bytes) -> dict[str, Any]:
    """Parse entry bytes into their 13 fields, in order, or raise :class:`MalformedEntryError`.

    Only the CBOR layer is checked here (shape, key set and order); field types
    and canonical form are checked by :func:`check_canonical` once the types are known.
    """
    if not raw or raw[0] != _MAP13:
        raise MalformedEntryError("not an entry: expected a CBOR map of 13 fields")
    try:
        fields = cbor2.loads(raw)
    except Exception as exc:  # cbor2 raises several types, all mean "bad bytes"
        raise MalformedEntryError(f"not valid CBOR: {exc}") from exc
    if type(fields) is not dict or tuple(fields) != ALL_FIELDS:
        raise MalformedEntryError("entry fields are missing, unknown, repeated or out of order")
    return fields


def check_canonical(raw: bytes, fields: dict[str, Any]) -> tuple[bytes, bytes]:
    """Re-encode ``fields`` and require the bytes received.

    Call only after the field types are checked. Returns ``(header bytes,
    signed bytes)``, which the signature check and decryption need.
    """
    header = encode_header({name: fields[name] for name in HEADER_FIELDS})
    signed = signed_bytes(header, fields["payload"])
    if entry_bytes(signed, fields["signature"]) != raw:
        raise MalformedEntryError("entry is not in canonical DAG-CBOR form")
    return header, signed


def is_canonical(raw: bytes, fields: dict[str, Any]) -> bool:
    """Whether ``raw`` is the canonical encoding of ``fields`` (as :func:`decode_fields`
    returned them, every type checked): one encode of the whole map and one compare.

    The same test as :func:`check_canonical` without building the header and signed
    bytes: cbor2 encodes a dict in its insertion order (checked to be ALL_FIELDS, the
    canonical order) with the shortest heads, which is exactly what the header,
    ``payload`` and ``signature`` glued together give.
    """
    return bool(cbor2.dumps(fields) == raw)


def signed_message(raw: bytes, signature: bytes) -> bytes:
    """``signature`` followed by the signed bytes of canonical entry bytes ``raw``, as
    libsodium's ``crypto_sign_open`` takes them: the map of 12 is the map of 13 with
    its first byte changed and the signature field cut off, so no re-encode."""
    return signature + _MAP12_BYTE + raw[1 : len(raw) - _SIG_TAIL_SIZE]  # (faster than a join)


def header_of(raw: bytes, payload_size: int) -> bytes:
    """The header bytes (the AAD) of canonical entry bytes, without re-encoding."""
    tail = len(_PAYLOAD_KEY) + len(bytes_header(payload_size)) + payload_size + _SIG_TAIL_SIZE
    return bytes((_MAP11,)) + raw[1 : len(raw) - tail]
