"""The RangeIndex conformance suite.

Every :class:`~loomdb.sync.ranges.RangeIndex` implementation runs exactly these
tests, checked against a brute-force model (a sorted Python list). A new index
joins by adding a factory to ``FACTORIES``: it gets the items the index must
hold (in no particular order, without duplicates) and a temporary directory.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from collections.abc import Callable
from pathlib import Path

import pytest

from loomdb.stores.fingerprints import standalone_index
from loomdb.sync.ranges import (
    ID_SIZE,
    INFINITY,
    MAX_TIMESTAMP,
    SUM_MODULUS,
    ZERO,
    Item,
    MemoryRangeIndex,
    RangeIndex,
)

Factory = Callable[[list[Item], Path], RangeIndex]
FACTORIES: dict[str, Factory] = {
    "memory": lambda items, _tmp: MemoryRangeIndex(items),
    "sqlite": lambda items, tmp: standalone_index(tmp, items),
}


@pytest.fixture(params=sorted(FACTORIES))
def make_index(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[list[Item]], RangeIndex]:
    factory = FACTORIES[request.param]
    counter = iter(range(1_000_000))

    def make(items: list[Item]) -> RangeIndex:
        directory = tmp_path / f"index-{next(counter)}"
        directory.mkdir()
        return factory(list(items), directory)

    return make


# --- the model ----------------------------------------------------------------


class Model:
    """The obvious, slow implementation every index is compared with."""

    def __init__(self, items: list[Item]) -> None:
        self.items_ = sorted(set(items))

    def fingerprint_sum(self, lo: Item, hi: Item) -> tuple[int, int]:
        chosen = [item for item in self.items_ if lo <= item < hi]
        total = sum(int.from_bytes(item[1], "little") for item in chosen) % SUM_MODULUS
        return len(chosen), total

    def items(self, lo: Item, hi: Item, limit: int | None = None) -> list[Item]:
        chosen = [item for item in self.items_ if lo <= item < hi]
        return chosen if limit is None else chosen[:limit]

    def nth(self, lo: Item, k: int) -> Item | None:
        i = bisect_left(self.items_, lo) + k
        return self.items_[i] if i < len(self.items_) else None


def random_id(rng: random.Random) -> bytes:
    return rng.randbytes(ID_SIZE)


def random_items(rng: random.Random, n: int, timestamps: int = 50) -> list[Item]:
    """``n`` distinct items over few timestamps, so that many share one."""
    items: set[Item] = set()
    while len(items) < n:
        items.add((rng.randrange(1, timestamps + 1), random_id(rng)))
    return list(items)


def padded(prefix: bytes) -> bytes:
    return prefix + bytes(ID_SIZE - len(prefix))


def interesting_bounds(rng: random.Random, items: list[Item], count: int) -> list[Item]:
    """Bounds equal to items, just around them, zero-padded prefixes of them,
    between timestamps, and the two ends."""
    bounds: list[Item] = [ZERO, INFINITY, (0, padded(b"")), (1, padded(b""))]
    for _ in range(count):
        choice = rng.randrange(6)
        if not items or choice == 0:
            bounds.append((rng.randrange(0, 60), random_id(rng)))
            continue
        ts, ident = rng.choice(items)
        if choice == 1:
            bounds.append((ts, ident))
        elif choice == 2:
            bounds.append((ts, padded(ident[: rng.randrange(0, ID_SIZE)])))
        elif choice == 3:
            bounds.append((ts + rng.choice((-1, 1)) if ts > 0 else ts, padded(b"")))
        elif choice == 4:
            # one more / one less in the last byte: the neighbour of an item
            last = ident[-1]
            bounds.append((ts, ident[:-1] + bytes([(last + rng.choice((-1, 1))) % 256])))
        else:
            bounds.append((ts, b"\xff" * ID_SIZE))
    return bounds


def check_against_model(
    index: RangeIndex, model: Model, bounds: list[Item], rng: random.Random
) -> None:
    n = len(model.items_)
    for lo in bounds:
        for hi in [*rng.sample(bounds, min(len(bounds), 8)), INFINITY, lo]:
            assert index.fingerprint_sum(lo, hi) == model.fingerprint_sum(lo, hi), (lo, hi)
            assert index.items(lo, hi) == model.items(lo, hi), (lo, hi)
            limit = rng.choice((0, 1, 2, 7, n, n + 5))
            assert index.items(lo, hi, limit) == model.items(lo, hi, limit), (lo, hi, limit)
        for k in {0, 1, 2, rng.randrange(0, n + 2), n - 1, n, n + 1}:
            if k >= 0:
                assert index.nth(lo, k) == model.nth(lo, k), (lo, k)


# --- the tests ----------------------------------------------------------------


def test_is_a_range_index(make_index: Callable[[list[Item]], RangeIndex]) -> None:
    assert isinstance(make_index([]), RangeIndex)


def test_empty_set(make_index: Callable[[list[Item]], RangeIndex]) -> None:
    index = make_index([])
    assert index.fingerprint_sum(ZERO, INFINITY) == (0, 0)
    assert index.items(ZERO, INFINITY) == []
    assert index.items(ZERO, INFINITY, 10) == []
    assert index.nth(ZERO, 0) is None
    assert index.nth(INFINITY, 0) is None


def test_single_item(make_index: Callable[[list[Item]], RangeIndex]) -> None:
    item = (1000, bytes(range(32)))
    index = make_index([item])
    assert index.fingerprint_sum(ZERO, INFINITY) == (1, int.from_bytes(item[1], "little"))
    assert index.fingerprint_sum(item, INFINITY) == (1, int.from_bytes(item[1], "little"))
    assert index.fingerprint_sum(ZERO, item) == (0, 0)
    assert index.items(ZERO, INFINITY) == [item]
    assert index.items(item, item) == []
    assert index.nth(ZERO, 0) == item
    assert index.nth(item, 0) == item
    assert index.nth(ZERO, 1) is None
    assert index.nth((1000, bytes(range(32))[:-1] + b"\x20"), 0) is None


@pytest.mark.parametrize("seed", range(6))
def test_random_sets_match_the_model(
    make_index: Callable[[list[Item]], RangeIndex], seed: int
) -> None:
    rng = random.Random(seed)
    n = rng.choice((1, 2, 3, 17, 100, 600))
    items = random_items(rng, n, timestamps=rng.choice((1, 3, 50, 10_000)))
    index = make_index(items)
    model = Model(items)
    check_against_model(index, model, interesting_bounds(rng, items, 40), rng)


def test_whole_range_count_and_sum(make_index: Callable[[list[Item]], RangeIndex]) -> None:
    rng = random.Random(99)
    items = random_items(rng, 2000, timestamps=100_000)
    index = make_index(items)
    model = Model(items)
    assert index.fingerprint_sum(ZERO, INFINITY) == model.fingerprint_sum(ZERO, INFINITY)
    assert index.items(ZERO, INFINITY) == model.items_
    for k in (0, 1, 999, 1998, 1999):
        assert index.nth(ZERO, k) == model.items_[k]
    assert index.nth(ZERO, 2000) is None


def test_equal_timestamps_ids_differing_in_late_bytes(
    make_index: Callable[[list[Item]], RangeIndex],
) -> None:
    base = bytes(range(1, 31))
    items = [(7, base + bytes([a, b])) for a in (0, 1, 255) for b in (0, 1, 128, 255)]
    items += [(6, b"\xff" * 32), (8, bytes(32))]
    rng = random.Random(5)
    index = make_index(items)
    model = Model(items)
    bounds = [*items, (7, padded(base)), (7, padded(base + b"\x01")), (7, base + b"\x00\x02")]
    bounds += [(7, padded(b"")), (8, padded(b"")), ZERO, INFINITY]
    check_against_model(index, model, bounds, rng)
    # ordering is bytewise (unsigned), not by signed bytes nor by integer value of the id
    assert index.items((7, padded(base + b"\x01")), (7, padded(base + b"\xff"))) == [
        (7, base + b"\x01\x00"),
        (7, base + b"\x01\x01"),
        (7, base + b"\x01\x80"),
        (7, base + b"\x01\xff"),
    ]


def test_zero_padded_prefix_bounds(make_index: Callable[[list[Item]], RangeIndex]) -> None:
    # A bound sent as a prefix is padded with zeros: an item equal to the
    # padded bound is in [bound, ...), and one just below it is not.
    at_bound = (5, padded(b"\xab\xcd"))
    below = (5, b"\xab\xcc" + b"\xff" * 30)
    above = (5, b"\xab\xcd" + bytes(29) + b"\x01")
    index = make_index([below, at_bound, above])
    lo = (5, padded(b"\xab\xcd"))
    assert index.items(lo, INFINITY) == [at_bound, above]
    assert index.items(ZERO, lo) == [below]
    assert index.fingerprint_sum(lo, INFINITY)[0] == 2
    assert index.nth(lo, 0) == at_bound
    assert index.nth(lo, 1) == above
    assert index.nth((5, padded(b"\xab")), 0) == below


def test_zero_and_infinity(make_index: Callable[[list[Item]], RangeIndex]) -> None:
    lowest = ZERO  # an item may equal ZERO: it is the least item, and included
    highest = (MAX_TIMESTAMP - 1, b"\xff" * 32)
    middle = (1 << 63, bytes([0x80]) * 32)  # above the signed 64-bit range
    index = make_index([highest, lowest, middle])
    assert index.items(ZERO, INFINITY) == [lowest, middle, highest]
    assert index.fingerprint_sum(ZERO, INFINITY)[0] == 3
    assert index.nth(ZERO, 2) == highest
    assert index.nth(INFINITY, 0) is None
    assert index.items(INFINITY, INFINITY) == []
    assert index.fingerprint_sum(INFINITY, INFINITY) == (0, 0)
    assert index.items((1 << 63, padded(b"")), INFINITY) == [middle, highest]
    assert index.items(ZERO, (1 << 63, padded(b""))) == [lowest]


def test_sum_wraps_modulo_2_256(make_index: Callable[[list[Item]], RangeIndex]) -> None:
    items = [(ts, b"\xff" * 31 + bytes([ts])) for ts in range(1, 40)]
    items += [(100, b"\xff" * 32), (101, b"\xff" * 32)]
    index = make_index(items)
    count, total = index.fingerprint_sum(ZERO, INFINITY)
    assert count == len(items)
    assert total == sum(int.from_bytes(i, "little") for _, i in items) % SUM_MODULUS
    assert 0 <= total < SUM_MODULUS
    assert index.fingerprint_sum((100, padded(b"")), INFINITY) == (
        2,
        (2 * ((1 << 256) - 1)) % SUM_MODULUS,
    )


def test_empty_and_inverted_ranges(make_index: Callable[[list[Item]], RangeIndex]) -> None:
    rng = random.Random(3)
    items = random_items(rng, 50)
    index = make_index(items)
    ordered = sorted(items)
    a, b = ordered[10], ordered[30]
    assert index.fingerprint_sum(a, a) == (0, 0)
    assert index.items(a, a) == []
    assert index.fingerprint_sum(b, a) == (0, 0)
    assert index.items(b, a) == []
    assert index.items(a, b, 0) == []
    assert index.items(a, b, 3) == ordered[10:13]
    assert index.items(a, b) == ordered[10:30]
    assert index.fingerprint_sum(a, b)[0] == 20


def test_nth_walks_every_rank(make_index: Callable[[list[Item]], RangeIndex]) -> None:
    rng = random.Random(11)
    items = random_items(rng, 300, timestamps=20)
    index = make_index(items)
    ordered = sorted(items)
    lo = ordered[37]
    for k in range(len(ordered) - 37 + 2):
        expected = ordered[37 + k] if 37 + k < len(ordered) else None
        assert index.nth(lo, k) == expected
    between = (ordered[37][0], ordered[37][1][:-1] + bytes([(ordered[37][1][-1] + 1) % 256]))
    if between not in items and between > ordered[37]:
        assert index.nth(between, 0) == ordered[38]


# --- MemoryRangeIndex's own editing methods -------------------------------------


def test_memory_index_add_and_remove_keep_the_model() -> None:
    rng = random.Random(21)
    items = random_items(rng, 500, timestamps=30)
    index = MemoryRangeIndex(items[:200])
    model = set(items[:200])
    assert len(index) == 200
    assert index.fingerprint_sum(ZERO, INFINITY) == Model(list(model)).fingerprint_sum(
        ZERO, INFINITY
    )
    steps: list[tuple[str, list[Item]]] = [
        ("add", items[200:210]),  # a few: inserted one by one
        ("add", items[150:400]),  # many, with duplicates: rebuilt
        ("remove", items[0:5]),
        ("remove", [*items[100:300], (1, bytes(32))]),  # many, one not held
        ("add", items[0:5]),
        ("add", []),
        ("remove", []),
    ]
    for op, batch in steps:
        if op == "add":
            index.add(batch)
            model |= set(batch)
        else:
            index.remove(batch)
            model -= set(batch)
        expected = Model(list(model))
        assert len(index) == len(model)
        assert list(index) == expected.items_
        assert index.fingerprint_sum(ZERO, INFINITY) == expected.fingerprint_sum(ZERO, INFINITY)
        check_against_model(index, expected, interesting_bounds(rng, items, 10), rng)
    assert items[0] in index
    assert items[100] not in index
    assert "not an item" not in index


def test_memory_index_builds_a_large_set_quickly() -> None:
    import time

    rng = random.Random(1)
    items = [(rng.getrandbits(40), rng.randbytes(32)) for _ in range(200_000)]
    start = time.perf_counter()
    index = MemoryRangeIndex(items)
    index.fingerprint_sum(ZERO, INFINITY)
    assert time.perf_counter() - start < 5
    assert len(index) == 200_000
