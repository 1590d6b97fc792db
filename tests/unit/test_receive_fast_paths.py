"""The receive path's shortcuts give what the general code gives: ``decode_hashed``'s
``Entry`` made slot by slot, ``prepare_batch``'s loop for a batch without repeated
CIDs, ``finish_results``'s ``PutResult``, and ``SQLiteStore._insert`` leaving out the
``parent_refs`` rows of parents stored in the same batch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from loomdb.entries.cid import CID
from loomdb.entries.entry import Entry, decode_entry, decode_hashed
from loomdb.errors import CidMismatchError, SignatureError, UnknownKindError
from loomdb.stores.base import PutResult, PutStatus, finish_results, prepare_batch
from loomdb.stores.sqlite import SQLiteStore
from tests.support import EntryFactory, fields_of, sign_fields, signing_key

pytestmark = pytest.mark.anyio


def _all_fields(entry: Entry) -> tuple[object, ...]:
    return tuple(getattr(entry, f.name) for f in dataclasses.fields(Entry))


@pytest.mark.parametrize("check_signature", [True, False])
def test_decoded_entry_is_the_one_the_constructor_makes(
    make_entry: EntryFactory, check_signature: bool
) -> None:
    root = make_entry(public=True)
    for built in (root, make_entry(parents=[root])):
        got = decode_hashed(built.raw, built.cid, check_signature=check_signature)
        want = Entry(*_all_fields(built)[:-1], check_signature)
        assert type(got) is Entry
        assert _all_fields(got) == _all_fields(want)
        assert got == want == built and hash(got.cid) == hash(built.cid)
        with pytest.raises(dataclasses.FrozenInstanceError):
            got.height = 5  # type: ignore[misc]


def test_finish_results_makes_what_the_constructor_makes(make_entry: EntryFactory) -> None:
    entries = make_entry.chain(3)
    batch = prepare_batch([e.raw for e in entries], lambda cids: set())
    got = finish_results(batch, 7)
    assert got == [PutResult(e.cid, PutStatus.ACCEPTED, None, 7 + i) for i, e in enumerate(entries)]
    assert all(type(r) is PutResult and r.ok and r.reason is None for r in got)


def _outcome(result: PutResult) -> tuple[CID, PutStatus, type | None, str | None, int | None]:
    error = None if result.error is None else type(result.error)
    return result.cid, result.status, error, result.reason, result.seq


def test_unique_batch_gives_what_the_general_loop_gives(make_entry: EntryFactory) -> None:
    """Every kind of input in one batch, without a repeated CID (the loop of
    ``_prepare_unique``), then the same batch with a duplicate added (the general
    loop): item for item the same outcomes, in the same order."""
    held, good, late = make_entry(), make_entry(), make_entry()
    other = make_entry()
    fields = fields_of(other)
    fields["payload"] = b"tampered"
    resigned = sign_fields(fields, signing_key("alice"))
    fields = fields_of(other)
    fields["signature"] = bytes(64)
    bad_sig = sign_fields(fields, signing_key("alice"))[:-64] + bytes(64)
    unknown = dataclasses.replace(make_entry(kind="schema"), kind="nope")  # built, verified
    mismatch = (held.cid, good.raw)
    batch = [good.raw, held.raw, bad_sig, mismatch, unknown, late, resigned, other.raw]

    def outcomes(items: list[object]) -> list[tuple[object, ...]]:
        prepared = prepare_batch(items, lambda cids: {held.cid} & set(cids))  # type: ignore[arg-type]
        return [_outcome(r) for r in finish_results(prepared, 1)]

    unique = outcomes(batch)
    general = outcomes([*batch, good.raw])
    assert general[:-1] == unique
    assert general[-1] == (good.cid, PutStatus.DUPLICATE, None, None, None)
    statuses = [(status, error) for _, status, error, _, _ in unique]
    assert statuses == [
        (PutStatus.ACCEPTED, None),
        (PutStatus.DUPLICATE, None),
        (PutStatus.REJECTED, SignatureError),
        (PutStatus.REJECTED, CidMismatchError),
        (PutStatus.REJECTED, UnknownKindError),
        (PutStatus.ACCEPTED, None),
        (PutStatus.ACCEPTED, None),  # signed by its author: a valid (other) entry
        (PutStatus.ACCEPTED, None),
    ]
    assert [seq for *_, seq in unique if seq is not None] == [1, 2, 3, 4]


async def test_parent_refs_only_for_parents_outside_the_batch(
    tmp_path: Path, make_entry: EntryFactory
) -> None:
    a, b, c, d = make_entry.chain(4)
    orphan_child = make_entry(parents=[d], document="doc-1")  # stored before its parent
    async with SQLiteStore(tmp_path / "s.db") as store:
        await store.put_entries([orphan_child.raw])
        await store.put_entries([a.raw, b.raw])
        await store.put_entries([c.raw, d.raw])
        rows = sorted(store._w.execute("SELECT parent FROM parent_refs").fetchall())
        # d (named before it arrived) and b (named by c, from the batch before); not a or c
        assert rows == sorted([(d.cid.binary,), (b.cid.binary,)])
        assert await store.heads("space-1", "notes", "doc-1") == [orphan_child.cid]
        late = make_entry(parents=[c])  # a second child of c, in a later batch
        await store.put_entries([late.raw])
        assert await store.heads("space-1", "notes", "doc-1") == sorted(
            [orphan_child.cid, late.cid]
        )
    assert decode_entry(d.raw) == d
