"""``FetchQueue``: documents whose history must be fetched, bounded and de-duplicated.

A received entry whose parents this node lacks, or an announcement of an entry
too large for gossip, asks for its document's history: the driver pulls that
document's set over ``/loomdb/sync``, from the peer that published it first,
then from the other peers of the topic. The queue holds what waits:

1. one request per document: a second one while it waits adds its peers to the
   end of the first's list (a fetch in flight takes new requests as a new one);
2. at most ``limit`` documents wait; beyond that a request is refused (the
   caller counts it) — head exchange will repair it;
3. first in, first out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

DEFAULT_LIMIT: Final = 1000

DocumentKey = tuple[str, str, str]


class FetchQueue:
    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._waiting: OrderedDict[DocumentKey, list[str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, document: DocumentKey, peers: Sequence[str]) -> bool:
        """Ask for ``document`` from ``peers`` (in order); False if refused (full)."""
        waiting = self._waiting.get(document)
        if waiting is not None:
            waiting.extend(p for p in peers if p not in waiting)
            return True
        if len(self._waiting) >= self.limit:
            return False
        self._waiting[document] = list(dict.fromkeys(peers))
        return True

    def pop(self) -> tuple[DocumentKey, list[str]] | None:
        if not self._waiting:
            return None
        return self._waiting.popitem(last=False)
