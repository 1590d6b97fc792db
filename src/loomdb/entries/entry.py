"""Entries: immutable, signed, content-addressed, payload-encrypted changes.

* :func:`build_entry` encrypts a payload under a :class:`NamedKey`, signs the
  entry with the author's key and computes its CID.
* :func:`decode_entry` is what every node runs on bytes it receives: size,
  CID, structure, canonical form and signature — all without a decryption key,
  so a relay that cannot read an entry can still refuse a forged one.
* :meth:`Entry.decrypt` needs the key the entry names.

Invariants of an :class:`Entry` object obtained from these functions:
1. ``raw`` is canonical DAG-CBOR and ``cid == CID.of(raw)``;
2. every other attribute is the decoded value of ``raw``;
3. ``verified`` is true when the signature was checked (or made) in this process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from itertools import pairwise
from typing import Any, Final, Protocol

import nacl.exceptions
from cbor2 import CBORTag
from cryptography.exceptions import InvalidTag
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from loomdb.entries import codec
from loomdb.entries.cid import CID
from loomdb.errors import (
    CidMismatchError,
    DecryptionError,
    EntryError,
    EntryTooLargeError,
    LoomError,
    MalformedEntryError,
    MissingKeyError,
    SignatureError,
    TooManyParentsError,
    UnknownKindError,
    UnsupportedVersionError,
    ValidationError,
)
from loomdb.identity.keys import (
    ED25519_PUBLIC_KEY_SIZE,
    NamedKey,
    RandomSource,
    SigningKey,
    is_key_id,
)

FORMAT_VERSION: Final = 1
NONCE_SIZE: Final = 12
MAX_UINT64: Final = (1 << 64) - 1


class Kind(StrEnum):
    """What an entry does to its document. Nodes accept the kinds their policy lists."""

    CREATE = "create"
    CHANGE = "change"
    DELETE = "delete"
    SCHEMA = "schema"


DIRECTORY_KIND: Final = "directory"
"""Entries of a space's tenant directory (public, admin-signed; see :mod:`loomdb.trust`)."""

DEFAULT_KINDS: Final = frozenset(k.value for k in Kind) | {DIRECTORY_KIND}


@dataclass(frozen=True, slots=True)
class EntryPolicy:
    """Structural limits and accepted kinds; every node checks every entry against it."""

    max_entry_bytes: int = 1 << 20
    max_parents: int = 64
    max_name_chars: int = 256
    kinds: frozenset[str] = DEFAULT_KINDS

    def with_kinds(self, *extra: str) -> EntryPolicy:
        """This policy, accepting ``extra`` kinds too (the extension point for new kinds)."""
        return EntryPolicy(
            self.max_entry_bytes, self.max_parents, self.max_name_chars, self.kinds | set(extra)
        )


DEFAULT_POLICY: Final = EntryPolicy()


class ParentRef(Protocol):
    """Anything that names an entry and its height: an Entry, an EntryMeta."""

    @property
    def cid(self) -> CID: ...

    @property
    def height(self) -> int: ...


@dataclass(frozen=True, slots=True)
class EntryMeta:
    """What sync and listings read: everything about an entry but its payload."""

    cid: CID
    kind: str
    space: str
    collection: str
    document: str
    parents: tuple[CID, ...]
    height: int
    author: bytes
    created_at: int
    key_id: str | None
    size: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One signed entry. Build with :func:`build_entry`, read with :func:`decode_entry`."""

    cid: CID
    raw: bytes = field(repr=False)
    version: int
    kind: str
    space: str
    collection: str
    document: str
    parents: tuple[CID, ...]
    height: int
    author: bytes = field(repr=False)
    created_at: int
    key_id: str | None
    nonce: bytes | None = field(repr=False)
    payload: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    verified: bool = field(default=False, compare=False, repr=False)

    @property
    def meta(self) -> EntryMeta:
        return EntryMeta(
            self.cid,
            self.kind,
            self.space,
            self.collection,
            self.document,
            self.parents,
            self.height,
            self.author,
            self.created_at,
            self.key_id,
            len(self.raw),
        )

    @property
    def is_encrypted(self) -> bool:
        return self.key_id is not None

    def decrypt(self, keys: NamedKey | Mapping[str, NamedKey]) -> bytes:
        """The plaintext payload.

        ``keys`` is the one key to use, or a mapping from key id to key. A public
        entry (no key id) returns its payload as it is.
        Raises :class:`MissingKeyError` when the entry's key is not given and
        :class:`DecryptionError` when the payload does not authenticate.
        """
        if self.key_id is None:
            return self.payload
        if isinstance(keys, NamedKey):
            key: NamedKey | None = keys if keys.key_id == self.key_id else None
        else:
            key = keys.get(self.key_id)
        if key is None:
            raise MissingKeyError(f"no key {self.key_id!r} to read entry {self.cid}")
        assert self.nonce is not None  # invariant: nonce is set exactly when key_id is
        aad = codec.aad_of(codec.header_of(self.raw, len(self.payload)))
        try:
            plain: bytes = key.aead.decrypt(self.nonce, self.payload, aad)
        except InvalidTag as exc:
            raise DecryptionError(
                f"entry {self.cid}: payload does not authenticate under key {self.key_id!r}"
            ) from exc
        return plain


def _check_name(what: str, value: object, policy: EntryPolicy, error: type[LoomError]) -> str:
    if type(value) is not str or not value or len(value) > policy.max_name_chars:
        raise error(f"{what} must be a non-empty string of at most {policy.max_name_chars} chars")
    if not value.isprintable():
        raise error(f"{what} must not contain control characters")
    return value


def _check_key_id(value: object, error: type[EntryError]) -> str | None:
    if value is None:
        return None
    if type(value) is not str or not is_key_id(value):
        raise error("key id must be null or 1-128 characters of A-Z a-z 0-9 . _ : @ / + -")
    return value


def _uint(what: str, value: object, error: type[LoomError]) -> int:
    if type(value) is not int or not 0 <= value <= MAX_UINT64:
        raise error(f"{what} must be an unsigned 64-bit integer")
    return value


@dataclass(slots=True)  # not frozen: made once per new entry, and frozen costs ~2 µs
class UnsignedEntry:
    """An entry made and encrypted but not signed yet (:func:`prepare_entry`):
    ``signed`` is what its author signs. :func:`build_entries` signs many at once."""

    signed: bytes
    kind: str
    space: str
    collection: str
    document: str
    parents: tuple[CID, ...]
    height: int
    author: bytes
    created_at: int
    key_id: str | None
    nonce: bytes | None
    body: bytes

    def finish(self, signature: bytes) -> Entry:
        """The entry, given the author's signature of :attr:`signed`."""
        raw = codec.entry_bytes(self.signed, signature)
        return Entry(
            CID.of(raw),
            raw,
            FORMAT_VERSION,
            self.kind,
            self.space,
            self.collection,
            self.document,
            self.parents,
            self.height,
            self.author,
            self.created_at,
            self.key_id,
            self.nonce,
            self.body,
            signature,
            True,
        )


def prepare_entry(
    *,
    author: SigningKey,
    space: str,
    collection: str,
    document: str,
    kind: str,
    payload: bytes,
    created_at: int,
    parents: Iterable[ParentRef] = (),
    key: NamedKey | None = None,
    policy: EntryPolicy = DEFAULT_POLICY,
    random: RandomSource = os.urandom,
) -> UnsignedEntry:
    """Everything :func:`build_entry` does but the signature (and the CID, which
    covers it): the checks, the header and the encryption."""
    m = policy.max_name_chars
    if not (  # the usual case in one expression; the checks below name what is wrong
        type(space) is str and 0 < len(space) <= m and space.isprintable()
        and type(collection) is str and 0 < len(collection) <= m and collection.isprintable()
        and type(document) is str and 0 < len(document) <= m and document.isprintable()
    ):  # fmt: skip
        for what, value in (("space", space), ("collection", collection), ("document", document)):
            _check_name(what, value, policy, ValidationError)
    if kind not in policy.kinds:
        raise UnknownKindError(f"unknown entry kind {kind!r}; known: {sorted(policy.kinds)}")
    if type(payload) is not bytes:
        raise ValidationError("payload must be bytes")
    _uint("created_at", created_at, ValidationError)
    by_cid = {p.cid: p.height for p in parents}
    if len(by_cid) > policy.max_parents:
        raise TooManyParentsError(f"{len(by_cid)} parents; at most {policy.max_parents}")
    parent_cids = tuple(sorted(by_cid))
    height = 1 + max(by_cid.values(), default=0)

    nonce = random(NONCE_SIZE) if key is not None else None
    key_id = key.key_id if key is not None else None
    header: dict[str, Any] = {
        "h": height,
        "v": FORMAT_VERSION,
        "ts": created_at,
        "doc": document,
        "kid": key_id,
        "par": [codec.link(c.binary) for c in parent_cids],
        "auth": author.public_key,
        "coll": collection,
        "kind": kind,
        "nonce": nonce,
        "space": space,
    }
    header_bytes = codec.encode_header(header)
    if key is not None:
        assert nonce is not None
        body: bytes = key.aead.encrypt(nonce, payload, codec.aad_of(header_bytes))
    else:
        body = payload
    signed = codec.signed_bytes(header_bytes, body)
    size = codec.entry_size(signed)
    if size > policy.max_entry_bytes:
        raise EntryTooLargeError(
            f"entry would be {size} bytes; the limit is {policy.max_entry_bytes}"
        )
    return UnsignedEntry(
        signed, kind, space, collection, document, parent_cids, height, author.public_key,
        created_at, key_id, nonce, body,
    )  # fmt: skip


def build_entry(
    *,
    author: SigningKey,
    space: str,
    collection: str,
    document: str,
    kind: str,
    payload: bytes,
    created_at: int,
    parents: Iterable[ParentRef] = (),
    key: NamedKey | None = None,
    policy: EntryPolicy = DEFAULT_POLICY,
    random: RandomSource = os.urandom,
) -> Entry:
    """Encrypt (when ``key`` is given), sign and address a new entry.

    ``parents`` are the entries this one builds on; the height is derived from
    theirs. Caller errors (a bad name, an unknown kind, a payload over the size
    limit) raise before anything is signed.
    """
    unsigned = prepare_entry(
        author=author, space=space, collection=collection, document=document, kind=kind,
        payload=payload, created_at=created_at, parents=parents, key=key, policy=policy,
        random=random,
    )  # fmt: skip
    return unsigned.finish(author.sign(unsigned.signed))


def decode_entry(
    raw: bytes,
    *,
    expected_cid: CID | None = None,
    policy: EntryPolicy = DEFAULT_POLICY,
    check_signature: bool = True,
) -> Entry:
    """Check entry bytes as received and return the entry. Needs no decryption key.

    Checks, cheapest first: size, CID against ``expected_cid`` (when the sender
    named one), CBOR structure, field types and limits, kind, canonical form,
    signature. Each failure raises its own :class:`EntryError` subclass.
    ``check_signature=False`` is for bytes read back from our own store, which
    verified them on the way in.
    """
    if type(raw) is not bytes:
        raise MalformedEntryError("entry must be bytes")
    if len(raw) > policy.max_entry_bytes:
        raise EntryTooLargeError(
            f"entry is {len(raw)} bytes; the limit is {policy.max_entry_bytes}"
        )
    cid = CID.of(raw)
    if expected_cid is not None and cid != expected_cid:
        raise CidMismatchError(f"entry bytes hash to {cid}, not {expected_cid}")
    return decode_hashed(raw, cid, policy=policy, check_signature=check_signature)


def decode_hashed(
    raw: bytes,
    cid: CID,
    *,
    policy: EntryPolicy = DEFAULT_POLICY,
    check_signature: bool = True,
) -> Entry:
    """:func:`decode_entry` of bytes whose CID the caller computed itself, in this
    process, as ``CID.of(raw)`` (a store does, to find duplicates): every check but
    the hash, which is not done twice. A CID that a peer named is no such CID: pass
    it to :func:`decode_entry` as ``expected_cid``."""
    if type(raw) is not bytes:
        raise MalformedEntryError("entry must be bytes")
    if len(raw) > policy.max_entry_bytes:
        raise EntryTooLargeError(
            f"entry is {len(raw)} bytes; the limit is {policy.max_entry_bytes}"
        )
    f = codec.decode_fields(raw)  # 13 fields in ALL_FIELDS order, or raised
    h, v, ts, doc, kid, par, auth, coll, kind, nonce, space, payload, sig = f.values()
    m = policy.max_name_chars
    if not (  # the usual case in one expression; _explain names what is wrong
        v == FORMAT_VERSION and type(v) is int
        and type(h) is int and 0 <= h <= MAX_UINT64
        and type(ts) is int and 0 <= ts <= MAX_UINT64
        and type(doc) is str and 0 < len(doc) <= m and doc.isprintable()
        and type(coll) is str and 0 < len(coll) <= m and coll.isprintable()
        and type(space) is str and 0 < len(space) <= m and space.isprintable()
        and type(kind) is str and 0 < len(kind) <= m and kind.isprintable()
        and (
            (kid is None and nonce is None)
            or (type(kid) is str and is_key_id(kid)
                and type(nonce) is bytes and len(nonce) == NONCE_SIZE)
        )
        and type(auth) is bytes and len(auth) == ED25519_PUBLIC_KEY_SIZE
        and type(payload) is bytes
        and type(sig) is bytes and len(sig) == codec.SIGNATURE_SIZE
        and type(par) is list and len(par) <= policy.max_parents
        and kind in policy.kinds
    ):  # fmt: skip
        _explain(f, policy)
    if not par:
        if h != 1:
            raise MalformedEntryError("height is 1 exactly for an entry without parents")
        parents: tuple[CID, ...] = ()
    elif (  # one parent, the usual case: the link's checks inline (codec.link_bytes)
        len(par) == 1
        and type(link := par[0]) is CBORTag
        and link.tag == codec.CID_TAG
        and type(value := link.value) is bytes
        and len(value) == codec.LINK_SIZE
        and value.startswith(codec.LINK_PREFIX)
    ):
        if h == 1:
            raise MalformedEntryError("height is 1 exactly for an entry without parents")
        parents = (CID.unchecked(value[1:]),)
    else:
        parent_bytes = [codec.link_bytes(x) for x in par]
        if len(parent_bytes) > 1 and any(a >= b for a, b in pairwise(parent_bytes)):
            raise MalformedEntryError("parents must be sorted by CID bytes and distinct")
        if h == 1:
            raise MalformedEntryError("height is 1 exactly for an entry without parents")
        parents = tuple(map(CID.unchecked, parent_bytes))
    # Every type is known now, so the map's one canonical encoding is known: it must
    # be the bytes received (no other encoding of the same values gets a CID).
    if not codec.is_canonical(raw, f):
        raise MalformedEntryError("entry is not in canonical DAG-CBOR form")
    if check_signature:
        try:
            crypto_sign_open(codec.signed_message(raw, sig), auth)
        except (BadSignatureError, nacl.exceptions.ValueError) as exc:
            raise SignatureError("signature does not verify under the author's key") from exc
    # Entry(...) with its 16 fields set by their slots' setters: a frozen dataclass's
    # __init__ goes through object.__setattr__ by name for each (~2x the cost).
    e = _new(Entry)
    (s_cid, s_raw, s_v, s_kind, s_space, s_coll, s_doc, s_par, s_h, s_auth, s_ts, s_kid,
     s_nonce, s_payload, s_sig, s_ok) = _SLOT_SETTERS  # fmt: skip
    s_cid(e, cid)
    s_raw(e, raw)
    s_v(e, v)
    s_kind(e, kind)
    s_space(e, space)
    s_coll(e, coll)
    s_doc(e, doc)
    s_par(e, parents)
    s_h(e, h)
    s_auth(e, auth)
    s_ts(e, ts)
    s_kid(e, kid)
    s_nonce(e, nonce)
    s_payload(e, payload)
    s_sig(e, sig)
    s_ok(e, check_signature)
    return e


_new: Final = object.__new__
_SLOT_FIELDS: Final = (
    "cid", "raw", "version", "kind", "space", "collection", "document", "parents", "height",
    "author", "created_at", "key_id", "nonce", "payload", "signature", "verified",
)  # fmt: skip
if tuple(f.name for f in fields(Entry)) != _SLOT_FIELDS:  # (a field left unset otherwise)
    raise RuntimeError("decode_hashed sets every field of Entry, in _SLOT_FIELDS order")
_SLOT_SETTERS: Final = tuple(getattr(Entry, name).__set__ for name in _SLOT_FIELDS)


def _explain(f: dict[str, Any], policy: EntryPolicy) -> None:
    """Raise the error for the first field check that ``f`` fails, in a fixed order
    (the slow path of :func:`decode_hashed`'s one-expression check)."""
    bad = MalformedEntryError
    version = _uint("v", f["v"], bad)
    if version != FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"entry format version {version}; this node reads version {FORMAT_VERSION}"
        )
    height = _uint("h", f["h"], bad)
    _uint("ts", f["ts"], bad)
    _check_name("document", f["doc"], policy, bad)
    _check_name("collection", f["coll"], policy, bad)
    _check_name("space", f["space"], policy, bad)
    kind = _check_name("kind", f["kind"], policy, bad)
    key_id = _check_key_id(f["kid"], bad)
    author = f["auth"]
    if type(author) is not bytes or len(author) != ED25519_PUBLIC_KEY_SIZE:
        raise bad("author must be a 32-byte Ed25519 public key")
    nonce = f["nonce"]
    if key_id is None:
        if nonce is not None:
            raise bad("a public entry (no key id) has no nonce")
    elif type(nonce) is not bytes or len(nonce) != NONCE_SIZE:
        raise bad("an encrypted entry has a 12-byte nonce")
    if type(f["payload"]) is not bytes:
        raise bad("payload must be a byte string")
    signature = f["signature"]
    if type(signature) is not bytes or len(signature) != codec.SIGNATURE_SIZE:
        raise bad("signature must be 64 bytes")
    links = f["par"]
    if type(links) is not list:
        raise bad("parents must be a list of links")
    if len(links) > policy.max_parents:
        raise TooManyParentsError(f"{len(links)} parents; at most {policy.max_parents}")
    parent_bytes = [codec.link_bytes(v) for v in links]
    if any(a >= b for a, b in pairwise(parent_bytes)):
        raise bad("parents must be sorted by CID bytes and distinct")
    if (height == 1) != (not parent_bytes):
        raise bad("height is 1 exactly for an entry without parents")
    if kind not in policy.kinds:
        raise UnknownKindError(f"unknown entry kind {kind!r}")
    # The fast check failed, so something above must have: never fall through to accept.
    raise MalformedEntryError("entry fields fail their checks")
