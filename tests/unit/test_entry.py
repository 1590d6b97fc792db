from __future__ import annotations

import cbor2
import pytest

from loomdb.entries import codec
from loomdb.entries.cid import CID
from loomdb.entries.entry import (
    DEFAULT_POLICY,
    EntryPolicy,
    Kind,
    build_entry,
    decode_entry,
    decode_hashed,
)
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
from loomdb.identity.keys import SigningKey
from tests.support import EntryFactory, fake_cid, fields_of, named_key, sign_fields, signing_key


def test_build_then_decode_gives_the_same_entry(make_entry: EntryFactory) -> None:
    root = make_entry(b"first")
    child = make_entry(b"second", parents=[root])
    decoded = decode_entry(child.raw)
    assert decoded == child
    assert decoded.verified
    assert decoded.cid == CID.of(child.raw)
    assert decoded.parents == (root.cid,)
    assert decoded.height == 2
    assert decoded.author == make_entry.author.public_key
    assert decoded.key_id == "space/default@1"
    assert decoded.decrypt(make_entry.key) == b"second"


def test_payload_is_encrypted_and_plaintext_appears_nowhere(make_entry: EntryFactory) -> None:
    marker = b"MARKER-the-secret-value-1234"
    entry = make_entry(marker)
    assert marker not in entry.raw
    assert len(entry.payload) == len(marker) + 16  # GCM tag


def test_height_is_one_plus_the_highest_parent(make_entry: EntryFactory) -> None:
    a = make_entry()
    b = make_entry(parents=[a])
    c = make_entry(parents=[b])
    d = make_entry(parents=[a, c])
    assert (a.height, b.height, c.height, d.height) == (1, 2, 3, 4)


def test_parents_are_sorted_and_deduplicated(make_entry: EntryFactory) -> None:
    roots = [make_entry(str(i).encode()) for i in range(5)]
    child = make_entry(parents=[*reversed(roots), roots[0]])
    assert list(child.parents) == sorted(r.cid for r in roots)


def test_public_entry_has_no_key_and_no_nonce(make_entry: EntryFactory) -> None:
    entry = make_entry(b"hello world", public=True)
    assert entry.key_id is None and entry.nonce is None
    assert b"hello world" in entry.raw
    assert decode_entry(entry.raw).decrypt({}) == b"hello world"


def test_decrypt_without_the_key_says_no_key(make_entry: EntryFactory) -> None:
    entry = make_entry(b"x")
    with pytest.raises(MissingKeyError, match="no key 'space/default@1'"):
        entry.decrypt({})
    with pytest.raises(MissingKeyError):
        entry.decrypt(named_key("other@1"))


def test_decrypt_with_a_wrong_key_of_the_same_name_fails(make_entry: EntryFactory) -> None:
    entry = make_entry(b"x")
    impostor = type(make_entry.key)("space/default@1", b"\x01" * 32)
    with pytest.raises(DecryptionError):
        entry.decrypt(impostor)


def test_payload_cannot_be_moved_to_another_entry(make_entry: EntryFactory) -> None:
    """The AAD binds the ciphertext to its header: re-signing it elsewhere does not help."""
    victim = make_entry(b"secret", document="doc-victim")
    other = make_entry(b"other", document="doc-attacker")
    fields = fields_of(other)
    fields["payload"] = victim.payload
    fields["nonce"] = victim.nonce
    moved = decode_entry(sign_fields(fields, make_entry.author))
    with pytest.raises(DecryptionError):
        moved.decrypt(make_entry.key)


def test_decrypt_with_a_mapping_of_keys(make_entry: EntryFactory) -> None:
    entry = make_entry(b"x")
    keys = {"a@1": named_key("a@1"), entry.key_id: make_entry.key}
    assert entry.decrypt(keys) == b"x"  # type: ignore[arg-type]


# --- bad input: one error class per failure -----------------------------------


def test_malformed_cbor_is_refused(make_entry: EntryFactory) -> None:
    entry = make_entry()
    for raw in (b"", b"\xff", b"\xad", entry.raw[:-1], b"\xa1\x61a\x01", cbor2.dumps([1, 2])):
        with pytest.raises(MalformedEntryError):
            decode_entry(raw)


def test_cid_that_does_not_match_the_bytes(make_entry: EntryFactory) -> None:
    a, b = make_entry(b"a"), make_entry(b"b")
    with pytest.raises(CidMismatchError, match="hash to"):
        decode_entry(a.raw, expected_cid=b.cid)
    assert decode_entry(a.raw, expected_cid=a.cid) == a


def test_wrong_signature(make_entry: EntryFactory) -> None:
    fields = fields_of(make_entry())
    fields["signature"] = bytes(64)
    header = codec.encode_header({k: fields[k] for k in codec.HEADER_FIELDS})
    raw = codec.entry_bytes(codec.signed_bytes(header, fields["payload"]), bytes(64))
    with pytest.raises(SignatureError):
        decode_entry(raw)


def test_signed_by_someone_else_than_the_author(make_entry: EntryFactory) -> None:
    fields = fields_of(make_entry())
    with pytest.raises(SignatureError):
        decode_entry(sign_fields(fields, signing_key("mallory")))


def test_oversized_entry(make_entry: EntryFactory) -> None:
    small = EntryPolicy(max_entry_bytes=1000)
    entry = make_entry(b"x" * 2000)
    with pytest.raises(EntryTooLargeError, match="limit is 1000"):
        decode_entry(entry.raw, policy=small)
    with pytest.raises(EntryTooLargeError):
        build_entry(
            author=make_entry.author,
            space="s",
            collection="c",
            document="d",
            kind="change",
            payload=b"x" * 2000,
            created_at=1,
            policy=small,
        )


def test_unknown_kind(make_entry: EntryFactory) -> None:
    fields = fields_of(make_entry())
    fields["kind"] = "teleport"
    raw = sign_fields(fields, make_entry.author)
    with pytest.raises(UnknownKindError, match="teleport"):
        decode_entry(raw)
    # a node whose policy knows the kind accepts it
    assert decode_entry(raw, policy=DEFAULT_POLICY.with_kinds("teleport")).kind == "teleport"
    with pytest.raises(UnknownKindError):
        make_entry(kind="teleport")


def test_too_many_parents(make_entry: EntryFactory) -> None:
    policy = EntryPolicy(max_parents=3)
    parents = [fake_cid(i) for i in range(4)]
    fields = fields_of(make_entry())
    fields["par"] = [codec.link(c.binary) for c in sorted(parents)]
    fields["h"] = 2
    with pytest.raises(TooManyParentsError):
        decode_entry(sign_fields(fields, make_entry.author), policy=policy)


def test_unsupported_version(make_entry: EntryFactory) -> None:
    fields = fields_of(make_entry())
    fields["v"] = 2
    with pytest.raises(UnsupportedVersionError, match="version 2"):
        decode_entry(sign_fields(fields, make_entry.author))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("h", -1),
        ("h", True),
        ("h", 1.0),
        ("ts", 1 << 64),
        ("doc", ""),
        ("doc", b"bytes"),
        ("doc", "tab\there"),
        ("coll", "x" * 257),
        ("space", None),
        ("kid", "bad key id!"),
        ("kid", "trailing-newline\n"),
        ("kid", "-leading-dash"),
        ("auth", b"short"),
        ("nonce", b"\x00" * 11),
        ("payload", "text"),
        ("par", "not a list"),
        ("par", [cbor2.CBORTag(42, b"\x00" + b"\x01" * 36)]),
        ("par", [cbor2.CBORTag(43, b"\x00" + fake_cid(1).binary)]),
    ],
)
def test_wrong_field_types_and_values(make_entry: EntryFactory, field: str, value: object) -> None:
    fields = fields_of(make_entry())
    fields[field] = value
    with pytest.raises(MalformedEntryError):
        decode_entry(sign_fields(fields, make_entry.author))


def test_unsorted_or_repeated_parents(make_entry: EntryFactory) -> None:
    a, b = sorted([fake_cid(1), fake_cid(2)])
    for order in ([b, a], [a, a]):
        fields = fields_of(make_entry())
        fields["par"] = [codec.link(c.binary) for c in order]
        fields["h"] = 2
        with pytest.raises(MalformedEntryError, match="sorted"):
            decode_entry(sign_fields(fields, make_entry.author))


def test_height_must_match_having_parents(make_entry: EntryFactory) -> None:
    fields = fields_of(make_entry())
    fields["h"] = 2  # no parents
    with pytest.raises(MalformedEntryError, match="height"):
        decode_entry(sign_fields(fields, make_entry.author))
    for parents in ([fake_cid(1)], sorted([fake_cid(1), fake_cid(2)])):
        fields = fields_of(make_entry())
        fields["par"] = [codec.link(c.binary) for c in parents]
        fields["h"] = 1  # parents, yet the height of a root
        with pytest.raises(MalformedEntryError, match="height"):
            decode_entry(sign_fields(fields, make_entry.author))
        fields["h"] = 2
        assert decode_entry(sign_fields(fields, make_entry.author)).parents == tuple(parents)


def test_public_entry_with_nonce_and_encrypted_entry_without(make_entry: EntryFactory) -> None:
    public = fields_of(make_entry(public=True))
    public["nonce"] = b"\x00" * 12
    encrypted = fields_of(make_entry())
    encrypted["nonce"] = None
    for fields in (public, encrypted):
        with pytest.raises(MalformedEntryError, match="nonce"):
            decode_entry(sign_fields(fields, make_entry.author))


def test_non_canonical_encoding_is_refused(make_entry: EntryFactory) -> None:
    """Same values, another encoding (a wider integer): valid CBOR, wrong bytes."""
    entry = make_entry()
    fields = fields_of(entry)
    # 'h' is the first value: 0x61 'h' 0x01 -> 0x61 'h' 0x18 0x01 (1 in a one-byte argument)
    assert entry.raw[1:4] == b"\x61h\x01"
    wide = entry.raw[:3] + b"\x18\x01" + entry.raw[4:]
    assert cbor2.loads(wide) == fields
    with pytest.raises(MalformedEntryError, match="canonical"):
        decode_entry(wide)


def test_extra_or_missing_field(make_entry: EntryFactory) -> None:
    fields = fields_of(make_entry())
    extra = dict(fields)
    extra["zzz"] = 1
    missing = dict(fields)
    del missing["kid"]
    for variant in (extra, missing):
        with pytest.raises(MalformedEntryError):
            decode_entry(cbor2.dumps(variant))


def test_every_error_is_a_loom_error_with_a_code() -> None:
    for cls in (
        MalformedEntryError,
        CidMismatchError,
        SignatureError,
        EntryTooLargeError,
        UnknownKindError,
        TooManyParentsError,
        UnsupportedVersionError,
    ):
        assert issubclass(cls, EntryError) and issubclass(cls, LoomError)
        assert cls.code.startswith("entry.")
    assert len({c.code for c in EntryError.__subclasses__()}) == len(EntryError.__subclasses__())


def test_bad_arguments_to_build_are_validation_errors(make_entry: EntryFactory) -> None:
    for kw in ({"document": ""}, {"collection": "a\nb"}, {"space": "x" * 300}):
        with pytest.raises(ValidationError):
            make_entry(**kw)  # type: ignore[arg-type]


def test_kinds_are_the_documented_ones() -> None:
    assert {k.value for k in Kind} == {"create", "change", "delete", "schema"}


# --- the canonical-form check: the one encoding of the values, signed or not ----


def _encode(fields: dict[str, object], **raw_values: bytes) -> bytes:
    """The map of 13 field by field; ``raw_values`` gives some values' bytes as they are."""
    parts = [b"\xad"]
    for name, value in fields.items():
        parts += [cbor2.dumps(name), raw_values.get(name) or cbor2.dumps(value)]
    return b"".join(parts)


def _resign(raw: bytes, author: SigningKey) -> bytes:
    """``raw`` with a valid signature of its own signed bytes: what a writer that
    encodes otherwise (or on purpose) would send. Only the form check can refuse it."""
    signed = b"\xac" + raw[1 : len(raw) - 76]
    return raw[:-64] + author.sign(signed)


def test_the_test_encoder_gives_the_entry_back(make_entry: EntryFactory) -> None:
    entry = make_entry()
    assert _resign(_encode(fields_of(entry)), make_entry.author) == entry.raw


@pytest.mark.parametrize(
    "variant",
    [
        "wide height",
        "wide text head",
        "indefinite payload",
        "indefinite parents",
        "bignum created-at",
        "self-describe tag",
        "shared value",
    ],
)
def test_another_encoding_of_the_same_values_is_refused_even_when_signed(
    make_entry: EntryFactory, variant: str
) -> None:
    """CIDs are not malleable: an author who signs a second encoding of an entry's
    values (which decodes to the very same fields) still gets it refused."""
    parent = make_entry(document="same")
    entry = make_entry(b"payload", document="same", parents=[parent])
    fields = fields_of(entry)
    fields["coll"] = "same"  # equal to the document: a shared-value reference could name it
    doc_text = cbor2.dumps("same")
    payload = fields["payload"]
    link = cbor2.dumps(fields["par"][0])
    raw_values = {
        "wide height": {"h": b"\x18" + bytes((fields["h"],))},
        "wide text head": {"doc": b"\x78\x04same"},
        "indefinite payload": {"payload": b"\x5f" + cbor2.dumps(payload) + b"\xff"},
        "indefinite parents": {"par": b"\x9f" + link + b"\xff"},
        "bignum created-at": {
            "ts": b"\xc2" + cbor2.dumps(fields["ts"].to_bytes(8, "big").lstrip(b"\x00"))
        },
        "self-describe tag": {"space": b"\xd9\xd9\xf7" + cbor2.dumps(fields["space"])},
        "shared value": {"doc": b"\xd8\x1c" + doc_text, "coll": b"\xd8\x1d\x00"},
    }[variant]
    raw = _resign(_encode(fields, **raw_values), make_entry.author)
    canonical = _resign(_encode(fields), make_entry.author)
    assert raw != canonical
    values, canonical_values = cbor2.loads(raw), cbor2.loads(canonical)
    assert values.pop("signature") != canonical_values.pop("signature")
    assert values == canonical_values  # the same values, each signature valid for its bytes
    assert decode_entry(canonical).collection == "same"  # and those values are valid
    with pytest.raises(MalformedEntryError, match="canonical"):
        decode_entry(raw)


def test_fields_out_of_order_are_refused_even_when_signed(make_entry: EntryFactory) -> None:
    fields = fields_of(make_entry())
    swapped = {"v": fields["v"], "h": fields["h"]} | fields
    raw = _resign(_encode(swapped), make_entry.author)
    assert list(cbor2.loads(raw))[:2] == ["v", "h"]
    with pytest.raises(MalformedEntryError, match="order"):
        decode_entry(raw)


def test_decode_hashed_is_decode_entry_without_the_hash(make_entry: EntryFactory) -> None:
    entry = make_entry()
    assert decode_hashed(entry.raw, entry.cid) == entry
    for bad in (b"\xad", _resign(_encode(fields_of(entry), h=b"\x18\x01"), make_entry.author)):
        with pytest.raises(MalformedEntryError):
            decode_hashed(bad, CID.of(bad))
