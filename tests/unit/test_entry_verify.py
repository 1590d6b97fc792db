"""``decode_many``: a batch checked on several threads gives what a loop gives."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from loomdb.entries import verify
from loomdb.entries.cid import CID
from loomdb.entries.entry import Entry, decode_entry
from loomdb.entries.verify import MIN_SLICE, decode_many
from loomdb.errors import CidMismatchError, EntryError, SignatureError
from tests.support import EntryFactory


def _flip(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes((raw[at] ^ 1,)) + raw[at + 1 :]


@pytest.mark.parametrize("count", [0, 1, MIN_SLICE * 2 - 1, MIN_SLICE * 2, MIN_SLICE * 5 + 3])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_decode_many_is_a_loop_of_decode_entry(
    make_entry: EntryFactory, count: int, threads: int
) -> None:
    entries = [make_entry(f"p{i}".encode()) for i in range(count)]
    raws = [e.raw for e in entries]
    expected = [e.cid for e in entries]
    for k in range(0, count, 7):  # a bad signature every 7th entry
        raws[k] = _flip(raws[k], len(raws[k]) - 1)
        expected[k] = None  # named by no CID: the signature is what fails
    if count > 3:
        expected[3] = entries[2].cid  # bytes that are not what was asked for
    got = decode_many(raws, expected, threads=threads)
    assert len(got) == count
    for raw, cid, result in zip(raws, expected, got, strict=True):
        try:
            want: Entry | EntryError = decode_entry(raw, expected_cid=cid)
        except EntryError as exc:
            want = exc
        if isinstance(want, EntryError):
            assert type(result) is type(want) and result.message == want.message
        else:
            assert isinstance(result, Entry) and result == want and result.verified
    if count > 7:
        assert isinstance(got[0], SignatureError) and isinstance(got[3], CidMismatchError)


def test_decode_many_uses_more_than_one_thread(
    make_entry: EntryFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: set[str] = set()
    entries = [make_entry() for _ in range(MIN_SLICE * 4)]

    def spy(raw: bytes, **kw: Any) -> Entry:
        seen.add(threading.current_thread().name)
        return decode_entry(raw, **kw)

    monkeypatch.setattr(verify, "decode_entry", spy)
    got = decode_many([e.raw for e in entries], threads=2)
    assert got == entries
    assert len(seen) == 2


def test_decode_many_wants_one_cid_per_entry(make_entry: EntryFactory) -> None:
    with pytest.raises(ValueError, match="one expected CID per entry"):
        decode_many([make_entry().raw], [])


@pytest.mark.parametrize("threads", [1, 2])
def test_decode_many_of_hashed_bytes_gives_the_same_results(
    make_entry: EntryFactory, threads: int
) -> None:
    """A store's path: CIDs it computed itself are not hashed again; every other
    check still runs and a bad entry gets its own error, the rest their entries."""
    entries = [make_entry(f"h{i}".encode()) for i in range(MIN_SLICE * 3)]
    raws = [e.raw for e in entries]
    raws[5] = _flip(raws[5], len(raws[5]) - 1)  # bad signature
    raws[9] = raws[9][:-1]  # truncated
    cids = [CID.of(r) for r in raws]
    got = decode_many(raws, cids, threads=threads, hashed=True)
    assert isinstance(got[5], SignatureError) and isinstance(got[9], EntryError)
    good = [g for k, g in enumerate(got) if k not in (5, 9)]
    assert good == [e for k, e in enumerate(entries) if k not in (5, 9)]
    assert all(isinstance(g, Entry) and g.verified for g in good)
    with pytest.raises(ValueError, match="hashed"):
        decode_many(raws, None, hashed=True)
