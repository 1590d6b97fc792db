"""The ordered sets that reconciliation works on, and the interface to their indexes.

An *item* is ``(created_at, id)``: the entry's 64-bit HLC timestamp and the
32-byte SHA-256 digest of its CID. Items are ordered by timestamp, then id
(bytewise), as in the Negentropy protocol. A *bound* is an item too: a bound
sent on the wire as a short id prefix is padded with zero bytes to 32, and the
bound at infinity is :data:`INFINITY`. A range ``[lo, hi)`` holds the items
``lo <= item < hi``.

A :class:`RangeIndex` answers the three questions reconciliation asks about a
set: the count and id-sum of a range (from which the Negentropy fingerprint is
made), the items of a range, and the item at a given rank. Implementations:
``MemoryRangeIndex`` (a sorted list, for memory stores and tests) and the
persistent tree in ``loomdb.stores.fingerprints`` (for ``SQLiteStore``). Both
pass ``tests/conformance/test_range_index.py``.

Methods are synchronous: a store calls them on its own thread.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import accumulate, islice, repeat
from operator import eq, itemgetter
from typing import Final, Literal, Protocol, runtime_checkable

ID_SIZE: Final = 32
MAX_TIMESTAMP: Final = (1 << 64) - 1
SUM_MODULUS: Final = 1 << 256

Item = tuple[int, bytes]
"""``(created_at, id)``: a uint64 timestamp and a 32-byte id."""

ZERO: Final[Item] = (0, bytes(ID_SIZE))
"""The least bound: every item is >= it."""

INFINITY: Final[Item] = (MAX_TIMESTAMP, b"\xff" * ID_SIZE)
"""The bound at infinity: every item is < it (no item may carry MAX_TIMESTAMP)."""


@runtime_checkable
class RangeIndex(Protocol):
    """Read access to one ordered set of items."""

    def fingerprint_sum(self, lo: Item, hi: Item) -> tuple[int, int]:
        """``(count, sum)`` of the items in ``[lo, hi)``; ``sum`` is the sum of
        their ids read as little-endian 256-bit integers, modulo 2**256."""
        ...

    def items(self, lo: Item, hi: Item, limit: int | None = None) -> list[Item]:
        """The items in ``[lo, hi)`` in ascending order, at most ``limit``."""
        ...

    def nth(self, lo: Item, k: int) -> Item | None:
        """The item of rank ``k`` (0-based) among the items ``>= lo``; ``None``
        if there are not that many."""
        ...


class MemoryRangeIndex:
    """An in-memory :class:`RangeIndex`: a sorted list of items.

    Ranges are found by bisection. ``fingerprint_sum`` reads a list of prefix
    sums of the ids (little-endian integers, kept unreduced). A change marks
    the sums invalid from the lowest position it touched, and the first query
    after it recomputes them from there on: O(n) after a change at the start,
    next to nothing after the usual one (new items carry the newest timestamps
    and land at the end), and O(log n) per query in between.
    """

    __slots__ = ("_dirty", "_items", "_prefix")

    def __init__(self, items: Iterable[Item] = ()) -> None:
        self._items: list[Item] = _sorted_unique(list(items))
        # _prefix[i] is the sum of the first i ids, valid for i <= _dirty
        self._prefix: list[int] = [0]
        self._dirty = 0

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self._items)

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, tuple):
            return False
        items = self._items
        i = bisect_left(items, item)
        return i < len(items) and items[i] == item

    def add(self, items: Iterable[Item]) -> None:
        """Add items; those already held are ignored."""
        new = list(items)
        if not new:
            return
        current = self._items
        if len(new) <= 64:
            for item in new:
                i = bisect_left(current, item)
                if i == len(current) or current[i] != item:
                    current.insert(i, item)
                    self._dirty = min(self._dirty, i)
        else:
            self._dirty = min(self._dirty, bisect_left(current, min(new)))
            current.extend(new)
            self._items = _sorted_unique(current)

    def remove(self, items: Iterable[Item]) -> None:
        """Remove items; those not held are ignored."""
        gone = set(items)
        if not gone:
            return
        current = self._items
        if len(gone) <= 64:
            for item in gone:
                i = bisect_left(current, item)
                if i < len(current) and current[i] == item:
                    del current[i]
                    self._dirty = min(self._dirty, i)
        else:
            self._dirty = min(self._dirty, bisect_left(current, min(gone)))
            self._items = [item for item in current if item not in gone]

    def _prefix_sums(self) -> list[int]:
        prefix = self._prefix
        items = self._items
        start = self._dirty
        if start < len(items) or len(prefix) != len(items) + 1:
            del prefix[start + 1 :]
            little: Final[Literal["little"]] = "little"
            ids = map(itemgetter(1), islice(items, start, None))
            sums = accumulate(map(int.from_bytes, ids, repeat(little)), initial=prefix[start])
            next(sums)  # the initial value, already in place
            prefix.extend(sums)
            self._dirty = len(items)
        return prefix

    def fingerprint_sum(self, lo: Item, hi: Item) -> tuple[int, int]:
        items = self._items
        i = bisect_left(items, lo)
        j = bisect_left(items, hi, i)
        if j <= i:
            return 0, 0
        prefix = self._prefix_sums()
        return j - i, (prefix[j] - prefix[i]) % SUM_MODULUS

    def items(self, lo: Item, hi: Item, limit: int | None = None) -> list[Item]:
        items = self._items
        i = bisect_left(items, lo)
        j = bisect_left(items, hi, i)
        if limit is not None and j - i > limit:
            j = i + max(limit, 0)
        return items[i:j]

    def nth(self, lo: Item, k: int) -> Item | None:
        items = self._items
        i = bisect_left(items, lo) + k
        if k < 0 or i >= len(items):
            return None
        return items[i]


def _sorted_unique(items: list[Item]) -> list[Item]:
    """``items`` sorted in place, without duplicates (sorting a list and then
    checking neighbours is about twice as fast as sorting a set)."""
    items.sort()
    if any(map(eq, items, islice(items, 1, None))):
        items = [
            item for item, after in zip(items, [*items[1:], None], strict=True) if item != after
        ]
    return items
