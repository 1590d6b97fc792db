"""Content identifiers: CIDv1, codec dag-cbor (0x71), multihash sha2-256.

Binary form (36 bytes): ``0x01 0x71 0x12 0x20`` + the SHA-256 digest of the
entry's bytes. Text form: multibase base32 lower-case, no padding (``b`` prefix),
the form IPFS tools print (``bafyrei…``). A CID orders by its binary form,
which is the order parents are sorted in.
"""

from __future__ import annotations

import base64
import hashlib
from operator import attrgetter
from typing import TYPE_CHECKING, Final

from loomdb.errors import ValidationError

CID_VERSION: Final = 0x01
DAG_CBOR: Final = 0x71
SHA2_256: Final = 0x12
DIGEST_SIZE: Final = 32
PREFIX: Final = bytes((CID_VERSION, DAG_CBOR, SHA2_256, DIGEST_SIZE))
CID_SIZE: Final = len(PREFIX) + DIGEST_SIZE

# The text form, made from 10-bit groups (two base32 letters each): 36 bytes are 288
# bits, 290 with the two zero bits base32 pads the last letter with, so 29 groups.
# The same letters as ``base64.b32encode`` (a test holds them equal), in a third of its
# time: Python 3.11's is a Python loop, and every head a write answers is printed.
_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz234567"
_PAIRS: Final = tuple(a + b for a in _ALPHABET for b in _ALPHABET)
_SHIFTS: Final = range(CID_SIZE * 8 + 2 - 10, -1, -10)


class CID:
    """The id of an entry: a hash of its bytes. Immutable, hashable, ordered."""

    __slots__ = ("_bytes", "_hash", "_text")

    def __init__(self, binary: bytes) -> None:
        if len(binary) != CID_SIZE or binary[:4] != PREFIX:
            raise ValidationError(
                "not a loomdb CID: expected CIDv1 dag-cbor sha2-256 (36 bytes starting 01711220)"
            )
        self._bytes = bytes(binary)
        self._hash = hash(self._bytes)
        self._text: str | None = None

    @classmethod
    def of(cls, data: bytes) -> CID:
        """The CID of ``data`` (the encoded signed entry)."""
        cid = object.__new__(cls)
        cid._bytes = PREFIX + hashlib.sha256(data).digest()
        cid._hash = hash(cid._bytes)
        cid._text = None
        return cid

    @classmethod
    def from_digest(cls, digest: bytes) -> CID:
        """The CID whose SHA-256 digest is ``digest`` (32 bytes), as reconciliation
        names entries: no copy, no prefix to check (~3x faster than ``CID(PREFIX +
        digest)``, which a pull of 100k entries runs 100k times)."""
        if type(digest) is not bytes or len(digest) != DIGEST_SIZE:
            raise ValidationError("a CID digest is 32 bytes")
        cid = object.__new__(cls)
        cid._bytes = PREFIX + digest
        cid._hash = hash(cid._bytes)
        cid._text = None
        return cid

    @classmethod
    def unchecked(cls, binary: bytes) -> CID:
        """The CID of ``binary``, which the caller has checked is 36 bytes starting with
        PREFIX (the decoder's parent links are): no copy, no check."""
        cid = object.__new__(cls)
        cid._bytes = binary
        cid._hash = hash(binary)
        cid._text = None
        return cid

    @classmethod
    def parse(cls, text: str) -> CID:
        """Parse the base32 text form (``bafyrei…``)."""
        if not isinstance(text, str) or not text.startswith("b") or len(text) != 59:
            raise ValidationError(f"not a CID: {text!r:.80}")
        body = text[1:].upper()
        try:
            binary = base64.b32decode(body + "=" * (-len(body) % 8))
        except (ValueError, TypeError) as exc:
            raise ValidationError(f"not a CID: {text!r:.80}") from exc
        return cls(binary)

    @classmethod
    def coerce(cls, value: CID | bytes | str) -> CID:
        """Accept a CID, its 36 bytes or its text form."""
        if isinstance(value, CID):
            return value
        if isinstance(value, bytes):
            return cls(value)
        if isinstance(value, str):
            return cls.parse(value)
        raise ValidationError(f"not a CID: {type(value).__name__}")

    if TYPE_CHECKING:

        @property
        def binary(self) -> bytes: ...

    else:  # the same property with a C getter: no Python frame per read (receive path)
        binary = property(attrgetter("_bytes"), doc="The 36 bytes of the binary form.")

    @property
    def digest(self) -> bytes:
        """The SHA-256 digest alone (32 bytes)."""
        return self._bytes[4:]

    def __str__(self) -> str:
        if self._text is None:  # computed once: CIDs are printed often (heads, APIs)
            n = int.from_bytes(self._bytes, "big") << 2
            self._text = "b" + "".join([_PAIRS[(n >> s) & 1023] for s in _SHIFTS])
        return self._text

    def __repr__(self) -> str:
        return f"CID({self!s})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CID) and other._bytes == self._bytes

    def __hash__(self) -> int:
        return self._hash

    def __lt__(self, other: CID) -> bool:
        return self._bytes < other._bytes

    def __le__(self, other: CID) -> bool:
        return self._bytes <= other._bytes

    def __gt__(self, other: CID) -> bool:
        return self._bytes > other._bytes

    def __ge__(self, other: CID) -> bool:
        return self._bytes >= other._bytes

    def __reduce__(self) -> tuple[type[CID], tuple[bytes]]:
        return (CID, (self._bytes,))
