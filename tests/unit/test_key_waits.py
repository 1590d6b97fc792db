"""``Views.key_waits``: the count of entries waiting for a key, against a plain walk.

The count is what a sync report and ``doc get`` show; it is computed without a
recursive walk from every waiting entry, so here it is checked against one, on
random graphs of entry states and parent waits, for every kind of scope."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from loomdb.documents.views import APPLIED, PENDING, REFUSED, StateRow, Views
from loomdb.entries.cid import CID


def _cid() -> CID:
    return CID.of(os.urandom(16))


def _reference(
    rows: list[StateRow], waits: list[tuple[CID, CID]], docs: set[int] | None
) -> tuple[int, tuple[str, ...]]:
    """Roots (pending, lacking their key, in scope) and all that waits on them."""
    roots = {
        r.cid
        for r in rows
        if r.state == PENDING and r.wants_key is not None and (docs is None or r.doc in docs)
    }
    keys = sorted({r.wants_key for r in rows if r.cid in roots and r.wants_key is not None})
    blocked, frontier = set(roots), list(roots)
    while frontier:
        parent = frontier.pop()
        for p, child in waits:
            if p == parent and child not in blocked:
                blocked.add(child)
                frontier.append(child)
    return len(blocked), tuple(keys)


@pytest.mark.parametrize("seed", range(8))
def test_key_waits_matches_a_plain_walk(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    views = Views(tmp_path / "views.db")
    with views.lock:
        colls = [c for c in (views.coll_id(f"c{i}") for i in range(3)) if c is not None]
        coll_of: dict[int, int] = {}
        for i in range(12):
            coll = rng.choice(colls)
            doc = views.doc_id(coll, f"d{i}")
            assert coll is not None and doc is not None
            coll_of[doc] = coll
        docs = list(coll_of)
        rows: list[StateRow] = []
        waits: list[tuple[CID, CID]] = []
        for i in range(120):
            state = rng.choice((PENDING, PENDING, APPLIED, REFUSED))
            key = rng.choice((None, "k@1", "k@2")) if state == PENDING else None
            rows.append(
                StateRow(
                    _cid(), rng.choice(docs), state, "change", 1, (), i,
                    None, None, None, False, "why" if key else None, key,
                )
            )  # fmt: skip
        pending = [r for r in rows if r.state == PENDING]
        for child in rng.sample(pending, min(40, len(pending))):
            for parent in rng.sample(pending, 2):
                if parent.cid != child.cid:
                    waits.append((parent.cid, child.cid))
        with views.tx():
            views.put_states(rows)
            for parent, child in waits:
                views.add_waits(child, [parent])
        got = views.key_waits()
        assert (got.entries, got.keys) == _reference(rows, waits, None)
        one = rng.choice(docs)
        got = views.key_waits(doc=one)
        assert (got.entries, got.keys) == _reference(rows, waits, {one})
        chosen_colls, chosen_docs = rng.sample(colls, 1), rng.sample(docs, 2)
        scope = {d for d in docs if coll_of[d] in chosen_colls} | set(chosen_docs)
        got = views.key_waits(colls=chosen_colls, docs=chosen_docs)
        assert (got.entries, got.keys) == _reference(rows, waits, scope)
        if got.entries == 0:
            assert got.reason is None
