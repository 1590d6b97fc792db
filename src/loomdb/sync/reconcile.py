"""One reconciliation step against one set, as a store runs it (sans-IO).

A store answers :class:`ReconcileRequest` s with :class:`ReconcileReply` s by
running the Negentropy engine over a :class:`~loomdb.sync.ranges.RangeIndex`
of the set; it does so where the data is (on the store's own thread, or on the
far side of a ``RemoteStore``), so fingerprints never cross a wire.

Negentropy is stateless between messages, so a request carries all that is
needed: the set, the message (``None`` to start), and which side we are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from loomdb.sync.negentropy import Negentropy
from loomdb.sync.ranges import RangeIndex

if TYPE_CHECKING:
    from loomdb.stores.base import SetKey

DEFAULT_FRAME_LIMIT: Final = 1_000_000
"""Negentropy frame size limit. Well under a transport frame (8 MiB), and large enough
that an empty side learns ~31,000 ids per round (a 60 KB limit needed 54 rounds for
100k ids); a server clamps it to what its frames carry."""


@dataclass(frozen=True, slots=True)
class ReconcileRequest:
    """``message=None`` starts a reconciliation (as initiator); otherwise it is the
    other side's message, which we answer as ``initiator`` or as responder."""

    set: SetKey
    message: bytes | None = None
    initiator: bool = True
    frame_limit: int = DEFAULT_FRAME_LIMIT


@dataclass(frozen=True, slots=True)
class ReconcileReply:
    """The message to send next (``None``: the initiator is done), and for the
    initiator the ids it holds that the other lacks (``have``) and the ids the
    other holds that it lacks (``need``)."""

    message: bytes | None
    have: list[bytes] = field(default_factory=list)
    need: list[bytes] = field(default_factory=list)


def reconcile_on(index: RangeIndex, request: ReconcileRequest) -> ReconcileReply:
    """Run one step of ``request`` over ``index`` (the set's items)."""
    engine = Negentropy(index, request.frame_limit)
    if request.message is None:
        return ReconcileReply(engine.initiate())
    if not request.initiator:
        return ReconcileReply(engine.reconcile(request.message))
    message, have, need = engine.reconcile_initiator(request.message)
    return ReconcileReply(message, have, need)
