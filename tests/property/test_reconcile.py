"""Reconciling two random sets finds exactly their difference, from either side.

Sets are drawn as items shared by both, items only in A and items only in B,
with many items per timestamp and some ids sharing long prefixes with others
(so that bounds need long prefixes), under no frame limit, the smallest one and
the default.

Ids must stay random where it counts: a fingerprint is the *sum* of the ids
(little-endian), so ids that all share 30 bytes differ in 16 bits only, and two
different sets of them collide easily (0x9559 + 0x95dc = 0x9572 + 0x95c3); real
ids are SHA-256 digests. So ids share long prefixes in small clusters only, and
the rest of each id is random.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from hashlib import sha256

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from loomdb.sync.negentropy import (
    MODE_FINGERPRINT,
    MODE_ID_LIST,
    Negentropy,
    _parse_ranges,
    fingerprint,
)
from loomdb.sync.ranges import ID_SIZE, MAX_TIMESTAMP, Item, MemoryRangeIndex


@dataclass
class Outcome:
    have: list[bytes]
    need: list[bytes]
    rounds: int
    largest: int


def reconcile(a: list[Item], b: list[Item], limit: int) -> Outcome:
    """A initiates, B responds; every message is checked to describe its sender's set."""
    index_a, index_b = MemoryRangeIndex(a), MemoryRangeIndex(b)
    initiator, responder = Negentropy(index_a, limit), Negentropy(index_b, limit)
    have: list[bytes] = []
    need: list[bytes] = []
    rounds = 0
    largest = 0
    message: bytes | None = initiator.initiate()
    while message is not None:
        rounds += 1
        assert rounds <= 1_000, "no progress"
        describes(message, index_a)
        reply = responder.reconcile(message)
        describes(reply, index_b)
        largest = max(largest, len(message), len(reply))
        message, h, n = initiator.reconcile_initiator(reply)
        have += h
        need += n
    return Outcome(have, need, rounds, largest)


def describes(message: bytes, index: MemoryRangeIndex) -> None:
    """Every Fingerprint and IdList we send is true of our set over exactly its range."""
    for lower, upper, mode, payload in _parse_ranges(message):
        if mode == MODE_FINGERPRINT:
            assert payload == fingerprint(*index.fingerprint_sum(lower, upper))
        elif mode == MODE_ID_LIST:
            assert payload == b"".join(ident for _, ident in index.items(lower, upper))


def check_both_ways(a: list[Item], b: list[Item], limit: int) -> list[Outcome]:
    ids_a = {ident for _, ident in a}
    ids_b = {ident for _, ident in b}
    outcomes = []
    for first, second, ids_first, ids_second in ((a, b, ids_a, ids_b), (b, a, ids_b, ids_a)):
        outcome = reconcile(first, second, limit)
        # exactly the differences, each once
        assert sorted(outcome.have) == sorted(ids_first - ids_second)
        assert sorted(outcome.need) == sorted(ids_second - ids_first)
        if limit:
            assert outcome.largest <= limit
        outcomes.append(outcome)
    return outcomes


@dataclass(frozen=True)
class Population:
    """How to draw A and B: items shared, only in A, only in B (seeded, so that a
    failing example prints short)."""

    seed: int
    shared: int
    only_a: int
    only_b: int
    spread: int  # timestamps are drawn from range(spread)
    clustered: float  # the share of ids that copy a long prefix of an earlier id
    limit: int  # the frame size limit

    def build(self) -> tuple[list[Item], list[Item], list[Item]]:
        rng = random.Random(self.seed)
        seen: set[bytes] = set()  # one item per id: an id is the hash of an entry
        made: list[bytes] = []
        groups: list[list[Item]] = []
        for size in (self.shared, self.only_a, self.only_b):
            group: list[Item] = []
            while len(group) < size:
                if made and rng.random() < self.clustered:
                    keep = rng.choice((8, 16, 24, 28, 29, 30))
                    ident = rng.choice(made)[:keep] + rng.randbytes(ID_SIZE - keep)
                else:
                    ident = rng.randbytes(ID_SIZE)
                if ident not in seen:
                    seen.add(ident)
                    made.append(ident)
                    group.append((rng.randrange(self.spread), ident))
            groups.append(group)
        return groups[0], groups[1], groups[2]


populations = st.builds(
    Population,
    seed=st.integers(0, 2**32 - 1),
    shared=st.integers(0, 3_000),
    only_a=st.integers(0, 400),
    only_b=st.integers(0, 400),
    spread=st.sampled_from([1, 3, 50, 10_000, MAX_TIMESTAMP - 1]),
    clustered=st.sampled_from([0.0, 0.3, 0.9]),
    limit=st.sampled_from([0, 4096, 60_000]),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(populations)
@example(Population(7, shared=32, only_a=44, only_b=382, spread=3, clustered=0.9, limit=4096))
def test_reconcile_finds_exactly_the_difference(population: Population) -> None:
    shared, only_a, only_b = population.build()
    limit = population.limit
    a = shared + only_a
    b = shared + only_b
    outcomes = check_both_ways(a, b, limit)
    n = max(len(a), len(b), 1)
    if limit == 0:
        # one round trip per level of 16-way splitting, and one for the IdLists
        depth = math.ceil(math.log(n, 16)) if n > 1 else 0
        assert all(o.rounds <= depth + 2 for o in outcomes), [o.rounds for o in outcomes]
    else:
        # each difference costs at most a few hundred bytes of frames
        differences = len(only_a) + len(only_b)
        budget = 6 + (differences * 600 + n * 40) // limit
        assert all(o.rounds <= budget for o in outcomes), ([o.rounds for o in outcomes], budget)


# Small sets drawn item by item, so that Hypothesis can shrink a failure to a
# few items: timestamps from a handful, ids sharing prefixes of 1 to 28 bytes
# (the rest of each id is a hash, for the sums' sake).
small_ids = st.builds(
    lambda head, zeros, salt: (
        head + bytes(zeros) + sha256(head + bytes([zeros]) + salt).digest()[: ID_SIZE - 1 - zeros]
    ),
    st.sampled_from([b"\x00", b"\x01", b"\xff"]),
    st.sampled_from([0, 7, 19, 27]),
    st.binary(min_size=1, max_size=1),
)
small_items = st.tuples(st.integers(0, 4), small_ids)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(small_items, max_size=80, unique_by=lambda item: item[1]),
    st.lists(st.booleans(), min_size=80, max_size=80),
    st.lists(st.booleans(), min_size=80, max_size=80),
)
def test_small_sets_reconcile(items: list[Item], in_a: list[bool], in_b: list[bool]) -> None:
    a = [item for item, keep in zip(items, in_a, strict=False) if keep]
    b = [item for item, keep in zip(items, in_b, strict=False) if keep]
    for limit in (0, 4096):
        outcomes = check_both_ways(a, b, limit)
        assert all(o.rounds <= 3 for o in outcomes)
