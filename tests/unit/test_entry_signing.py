"""``prepare_entry`` + ``build_entries``: a batch signed on several threads gives,
byte for byte, the entries ``build_entry`` makes one at a time."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest

from loomdb.entries import signing
from loomdb.entries.entry import Entry, build_entry, decode_entry, prepare_entry
from loomdb.entries.signing import build_entries
from loomdb.entries.verify import MIN_SLICE
from loomdb.errors import EntryTooLargeError
from loomdb.identity.keys import NamedKey, SigningKey


def _seeded(seed: int) -> random.Random:
    return random.Random(seed)


def _kwargs(i: int, author: SigningKey, key: NamedKey, rng: random.Random) -> dict[str, Any]:
    return {
        "author": author,
        "space": "main",
        "collection": "items",
        "document": f"doc-{i}",
        "kind": "create",
        "payload": f"payload {i}".encode() * (1 + i % 5),
        "created_at": 1_000 + i,
        "key": key if i % 3 else None,  # some in the clear
        "random": rng.randbytes,
    }


@pytest.mark.parametrize("count", [0, 1, MIN_SLICE * 2 - 1, MIN_SLICE * 2, MIN_SLICE * 5 + 3])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_build_entries_is_a_loop_of_build_entry(count: int, threads: int) -> None:
    author, key = SigningKey(bytes(range(32))), NamedKey("k@1", bytes(32))
    one_rng, many_rng = _seeded(5), _seeded(5)
    one = [build_entry(**_kwargs(i, author, key, one_rng)) for i in range(count)]
    prepared = [prepare_entry(**_kwargs(i, author, key, many_rng)) for i in range(count)]
    many = build_entries(author, prepared, threads=threads)
    assert [e.raw for e in many] == [e.raw for e in one]
    assert many == one
    for entry in many:  # what a receiver checks
        got = decode_entry(entry.raw, expected_cid=entry.cid)
        assert got.raw == entry.raw and entry.verified


def test_build_entries_uses_more_than_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    author, key = SigningKey.generate(), NamedKey.generate("k@1")
    seen: set[str] = set()
    real = signing._sign

    def spy(a: SigningKey, unsigned: list[Any]) -> list[Entry]:
        seen.add(threading.current_thread().name)
        return real(a, unsigned)

    monkeypatch.setattr(signing, "_sign", spy)
    prepared = [prepare_entry(**_kwargs(i, author, key, _seeded(i))) for i in range(MIN_SLICE * 4)]
    assert len(build_entries(author, prepared, threads=2)) == MIN_SLICE * 4
    assert len(seen) == 2


def test_build_entries_refuses_another_authors_entries() -> None:
    author, other = SigningKey.generate(), SigningKey.generate()
    prepared = prepare_entry(**_kwargs(1, other, NamedKey.generate("k@1"), _seeded(1)))
    with pytest.raises(ValueError, match="another author"):
        build_entries(author, [prepared])


def test_an_entry_too_large_is_refused_before_it_is_signed(monkeypatch: pytest.MonkeyPatch) -> None:
    author = SigningKey.generate()
    signed: list[bytes] = []
    monkeypatch.setattr(SigningKey, "sign", lambda self, m: signed.append(m) or b"\0" * 64)
    kwargs = _kwargs(1, author, NamedKey.generate("k@1"), _seeded(1))
    kwargs["payload"] = b"x" * (1 << 21)
    with pytest.raises(EntryTooLargeError, match="limit"):
        build_entry(**kwargs)
    assert signed == []
