"""Properties of the entry codec over generated inputs (Hypothesis)."""

from __future__ import annotations

import contextlib

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loomdb.entries import codec
from loomdb.entries.cid import CID
from loomdb.entries.entry import Entry, build_entry, decode_entry
from loomdb.errors import EntryError
from tests.support import fake_cid, named_key, seeded_random, signing_key

AUTHORS = [signing_key(n) for n in ("alice", "bob", "carol")]
KEY = named_key()

names = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp", "Cf")),
    min_size=1,
    max_size=40,
).filter(str.isprintable)


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    n_parents = draw(st.integers(0, 5))
    parents = [
        _Ref(fake_cid(draw(st.integers(0, 10_000))), draw(st.integers(1, 1000)))
        for _ in range(n_parents)
    ]
    return build_entry(
        author=draw(st.sampled_from(AUTHORS)),
        space=draw(names),
        collection=draw(names),
        document=draw(names),
        kind=draw(st.sampled_from(["create", "change", "delete", "schema"])),
        payload=draw(st.binary(max_size=300)),
        created_at=draw(st.integers(0, (1 << 64) - 1)),
        parents=parents,
        key=draw(st.sampled_from([KEY, None])),
        random=seeded_random(draw(st.integers(0, 1000))),
    )


class _Ref:
    def __init__(self, cid: CID, height: int) -> None:
        self.cid = cid
        self.height = height


@given(entries())
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip_keeps_fields_bytes_and_id(entry: Entry) -> None:
    decoded = decode_entry(entry.raw)
    assert decoded == entry
    assert decoded.raw == entry.raw
    assert decoded.cid == CID.of(entry.raw) == entry.cid
    # the id is stable: encoding the decoded fields again gives the same bytes
    assert cbor2.dumps(codec.decode_fields(entry.raw), canonical=True) == entry.raw
    if entry.key_id is not None:
        assert decoded.decrypt(KEY) == entry.decrypt(KEY)


@given(entries(), st.data())
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_any_single_byte_change_is_refused(entry: Entry, data: st.DataObject) -> None:
    """Header, payload or signature: flipping any one byte makes the entry invalid.

    No expected CID is passed: a receiver that computes the id from the bytes
    must still refuse (structure, canonical form or signature catches it).
    """
    position = data.draw(st.integers(0, len(entry.raw) - 1), label="position")
    old = entry.raw[position]
    new = data.draw(st.integers(0, 255).filter(lambda b: b != old), label="new byte")
    mutated = entry.raw[:position] + bytes((new,)) + entry.raw[position + 1 :]
    try:
        decode_entry(mutated)
    except EntryError:
        pass
    else:
        raise AssertionError(f"byte {position} changed {old:#x}->{new:#x} and was accepted")


@given(st.binary(max_size=2000))
@settings(max_examples=500)
def test_random_bytes_raise_only_entry_errors(raw: bytes) -> None:
    with contextlib.suppress(EntryError):
        decode_entry(raw)


@given(st.binary(max_size=600))
@settings(max_examples=300)
def test_random_bytes_after_a_valid_map_head_raise_only_entry_errors(tail: bytes) -> None:
    with contextlib.suppress(EntryError):
        decode_entry(b"\xad" + tail)


def test_deeply_nested_cbor_is_refused_cleanly() -> None:
    nested = b"\xad\x61h" + b"\x81" * 100_000 + b"\x00"
    try:
        decode_entry(nested)
    except EntryError:
        return
    raise AssertionError("accepted")
