"""Replicators: active replication, pushing a scope of this node's entries to a peer.

``client p2p replicator set [-c COLL]… [--document C/D]… PEER_MULTIADDR`` makes one
(:meth:`Replicators.set`); each runs as its own task, through the states of
:mod:`loomdb.replication.replicator_state`:

1. **Backfill**: a push reconciliation of the scope (:func:`push_changes_to`), so
   what existed before the replicator was set — and whatever the peer missed
   while it or this node was down — reaches it. It only pushes: the peer's own
   entries are never pulled.
2. **Follow**: from the cursor the backfill leaves (the receipt-log seq it began
   at), read the node's :class:`~loomdb.replication.feed.EntryFeed` and push each
   new *local* entry of the scope (written by this node's user) at once, over the
   peer's one long-lived stream; whatever landed while a push was in flight goes
   in the next batch. Entries received from other nodes reach the peer at the
   next reconciliation.
3. A push that fails (the peer is unreachable, the stream is lost) moves it to
   ``failing``; after the :class:`RetrySchedule`'s delay it backfills again, so
   nothing is missed. A push the peer *refuses* (its directory does not let this
   node write those entries: for a managed space, the binding of this node's
   Peer ID as a device of a member, see :mod:`loomdb.trust.devices`) is
   ``refused``, retried as many times as the schedule has intervals, then left.
   A failing replicator also tries again at once when its peer, gone when the
   try failed, connects again (``reconnected``: the daemon watches the host).

Records live in ``<home>/replicators.json`` (:class:`ReplicatorFile`), written at
every state change and at most every :data:`SAVE_EVERY` seconds for the cursor
alone (a restart backfills anyway: a cursor a little behind costs a few
duplicates, never a loss). Deleting a replicator cancels its task at once.

Time comes from an injected clock and ``sleep``, so tests of the retry schedule
run instantly; the peer's store comes from an injected ``connect`` (the daemon's
opens a :class:`~loomdb.stores.remote.RemoteStore` on ``P2PHost.peer_channel``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc

from loomdb.clock import Clock, SystemClock
from loomdb.entries.entry import Entry
from loomdb.errors import LoomError, NotFoundError, RemoteError, TrustError, ValidationError
from loomdb.replication.feed import EntryFeed
from loomdb.replication.replicator_state import (
    ReplicatorEvent,
    ReplicatorFile,
    ReplicatorRecord,
    ReplicatorState,
    RetrySchedule,
)
from loomdb.stores.base import ContentAddressedStore, PutStatus, Received, SetKey
from loomdb.sync.replicate import SyncProgress, SyncScope, push_changes_to
from loomdb.trust.spaces import DIRECTORY_COLLECTION, is_managed

log = logging.getLogger("loomdb.replicators")

BATCH: Final = 1000  # receipt-log rows read at a time
SAVE_EVERY: Final = 1.0  # seconds between saves of a cursor that moved

Connect = Callable[[str], AbstractAsyncContextManager[ContentAddressedStore]]
"""Opens the store of the peer a multiaddr names (closed when the block ends)."""
PeerOf = Callable[[str], str]
"""The Peer ID a multiaddr names (``ValidationError`` for a bad one)."""
Reconnected = Callable[[str], Awaitable[None]]
"""Returns once the peer (a Peer ID) is connected again after being away."""


class PushRefused(LoomError):
    """The peer refused every entry of a push (its ``code`` is the peer's reason)."""

    code = "replicator.refused"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.refusal = code


def _is_refusal(exc: LoomError) -> bool:
    return isinstance(exc, TrustError | PushRefused) or (
        isinstance(exc, RemoteError) and exc.remote_code.startswith("trust.")
    )


def _refusal_of(reason: str) -> tuple[str, str]:
    code, sep, message = reason.partition(": ")
    return (code, message) if sep else ("trust.refused", reason)


def in_scope(record: ReplicatorRecord, entry: Entry) -> bool:
    """Whether ``record`` pushes ``entry`` (a managed space's directory goes with it:
    the peer checks the rest against it)."""
    if entry.space != record.space:
        return False
    if not record.collections and not record.documents:
        return True
    if entry.collection in record.collections:
        return True
    if entry.collection == DIRECTORY_COLLECTION and is_managed(entry.space):
        return True
    return (entry.collection, entry.document) in record.documents


class Replicator:
    """Runs one record until cancelled; see the module doc."""

    def __init__(self, record: ReplicatorRecord, owner: Replicators) -> None:
        self.record = record
        self.owner = owner
        self.cancel = anyio.CancelScope()

    @property
    def scope(self) -> SyncScope:
        return SyncScope(self.record.space, self.record.collections, self.record.documents)

    def _now(self) -> float:
        return self.owner.now()

    def _save(self, force: bool = False) -> None:
        self.owner.save(force)

    async def run(self) -> None:
        rec = self.record
        with self.cancel:  # started (backfilling) by Replicators._start
            while True:
                try:
                    await self._backfill()
                    rec.caught_up(self._now())
                    self._save(True)
                    log.info("replicator to %s (%s): caught up", rec.peer, rec.space)
                    await self._follow()
                except LoomError as exc:
                    refused = _is_refusal(exc)
                    code = exc.refusal if isinstance(exc, PushRefused) else exc.code
                    if isinstance(exc, RemoteError):
                        code = exc.remote_code
                    delay = self._failed(refused, code, exc.message)
                except Exception as exc:  # a bug, or a library's error we do not know
                    log.exception("replicator to %s crashed", rec.peer)
                    delay = self._failed(False, "internal", f"{type(exc).__name__}: {exc}")
                if delay is None:  # refused too often: until set again (or a restart)
                    await anyio.sleep_forever()
                else:
                    await self._wait(delay)
                rec.handle(ReplicatorEvent.RETRY, self._now())
                self._save(True)

    def _failed(self, refused: bool, code: str, message: str) -> float | None:
        rec = self.record
        event = ReplicatorEvent.REFUSED if refused else ReplicatorEvent.FAILED
        delay = rec.failed(event, code, message, self._now(), self.owner.schedule)
        self._save(True)
        after = "no more tries" if delay is None else f"again in {delay:g} s"
        log.warning("replicator to %s (%s) %s: %s: %s; %s", rec.peer, rec.space, rec.state,
                    code, message, after)  # fmt: skip
        return delay

    def _wanted(self, row: Received) -> bool:
        return self.owner.feed.is_local(row) and in_scope(self.record, row.entry)

    async def _backfill(self) -> None:
        rec = self.record
        mark = (await self.owner.store.store_head()).seq  # what the reconciliation covers

        def progress(state: SyncProgress) -> None:
            rec.lag = max(0, state.to_push - state.done)

        async with self.owner.connect(rec.addr) as remote:
            report = await push_changes_to(self.owner.store, remote, self.scope, progress=progress)
        refused = [r for r in report.rejected if r.side == "remote"]
        self._pushed(report.pushed, refused[0].reason if refused else None, len(refused))
        if refused and not report.pushed and not report.duplicates:
            raise PushRefused(*_refusal_of(refused[0].reason))
        rec.cursor = max(rec.cursor, mark)

    async def _follow(self) -> None:
        rec, feed = self.record, self.owner.feed
        async with self.owner.connect(rec.addr) as remote:
            while True:
                rows = await feed.read(rec.cursor, BATCH)
                if not rows:
                    rec.lag = 0
                    self._save()
                    await feed.wait(rec.cursor)
                    continue
                batch = [r.entry for r in rows if self._wanted(r)]
                if batch:
                    rec.lag = len(batch)
                    results = await remote.put_entries(batch)
                    refused = [r for r in results if r.status is PutStatus.REJECTED]
                    accepted = sum(r.status is PutStatus.ACCEPTED for r in results)
                    reason = refused[0].reason if refused else None
                    self._pushed(accepted, reason, len(refused))
                    if refused and len(refused) == len(results):
                        raise PushRefused(*_refusal_of(reason or ""))
                rec.cursor = rows[-1].seq
                self._save()

    def _pushed(self, accepted: int, reason: str | None, refused: int) -> None:
        rec = self.record
        now = self._now()
        rec.pushed += accepted
        rec.refused += refused
        if accepted:
            rec.last_push = now
        if refused and reason is not None:
            code, message = _refusal_of(reason)
            rec.last_error = {"code": code, "message": message, "at": now}

    async def _wait(self, delay: float) -> None:
        """Sleep ``delay`` (the injected sleep), counting the lag meanwhile; cut short
        when the peer connects again."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._count_lag)
            if self.owner.reconnected is not None:
                tg.start_soon(self._until_reconnected, tg.cancel_scope)
            await self.owner.sleep(delay)
            tg.cancel_scope.cancel()

    async def _until_reconnected(self, wait: anyio.CancelScope) -> None:
        assert self.owner.reconnected is not None
        await self.owner.reconnected(self.record.peer)
        log.info("replicator to %s: the peer is back, trying now", self.record.peer)
        wait.cancel()

    async def _count_lag(self) -> None:
        feed, counted, lag = self.owner.feed, self.record.cursor, 0
        while True:
            rows = await feed.read(counted, BATCH)
            if not rows:
                await feed.wait(counted)
                continue
            lag += sum(self._wanted(r) for r in rows)
            counted = rows[-1].seq
            self.record.lag = lag


class Replicators:
    """The node's replicators: set, delete, list; their tasks run in :meth:`run`."""

    def __init__(
        self,
        home: Path,
        store: ContentAddressedStore,
        feed: EntryFeed,
        connect: Connect,
        *,
        peer_of: PeerOf,
        own_peer: str,
        default_space: str,
        schedule: RetrySchedule | None = None,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        reconnected: Reconnected | None = None,
    ) -> None:
        self.file = ReplicatorFile(home)
        self.reconnected = reconnected
        self.store = store
        self.feed = feed
        self.connect = connect
        self.peer_of = peer_of
        self.own_peer = own_peer
        self.default_space = default_space
        self.schedule = schedule or RetrySchedule()
        self.clock: Clock = clock or SystemClock()
        self.sleep = sleep
        self._running: dict[tuple[str, str], Replicator] = {}
        self._records: list[ReplicatorRecord] = self.file.load()
        self._tg: anyio.abc.TaskGroup | None = None
        self._saved_at = -SAVE_EVERY

    def now(self) -> float:
        return self.clock.now_ms() / 1000

    def save(self, force: bool = False) -> None:
        now = self.now()
        if force or now - self._saved_at >= SAVE_EVERY:
            self.file.save(self._records)
            self._saved_at = now

    @asynccontextmanager
    async def run(self) -> AsyncIterator[Replicators]:
        """Run every replicator (those loaded from the home first) until the block ends;
        then each is ``inactive`` and saved, with its cursor."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for record in self._records:
                    record.state = ReplicatorState.INACTIVE  # it was not running
                    self._start(record)
                self.save(True)
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self._tg = None
            self._running.clear()
            for record in self._records:
                record.handle(ReplicatorEvent.STOP, self.now())
            self.save(True)

    def _start(self, record: ReplicatorRecord) -> None:
        assert self._tg is not None, "Replicators.run() is not running"
        record.handle(ReplicatorEvent.START, self.now())  # shown backfilling from now on
        replicator = Replicator(record, self)
        self._running[record.key] = replicator
        self._tg.start_soon(replicator.run, name=f"replicator {record.peer} {record.space}")

    def _stop(self, key: tuple[str, str]) -> None:
        replicator = self._running.pop(key, None)
        if replicator is not None:
            replicator.cancel.cancel()

    def set(
        self,
        addr: str,
        space: str | None = None,
        collections: Sequence[str] = (),
        documents: Sequence[tuple[str, str]] = (),
    ) -> dict[str, Any]:
        """Replicate ``space`` (default: the node's) — or its ``collections`` and/or
        ``documents`` — to the peer ``addr`` names. Setting one that exists (same
        peer and space) replaces its scope and backfills again."""
        peer = self.peer_of(addr)
        if peer == self.own_peer:
            raise ValidationError("a node does not replicate to itself")
        space = space or self.default_space
        for c, d in documents:
            SetKey(space, c, d)  # ValidationError for bad names
        for c in collections:
            SetKey(space, c)
        SetKey(space)
        now = self.now()
        record = ReplicatorRecord(
            peer=peer,
            addr=addr,
            space=space,
            collections=tuple(dict.fromkeys(collections)),
            documents=tuple(dict.fromkeys((c, d) for c, d in documents)),
            created_at=now,
            updated_at=now,
        )
        self._stop(record.key)
        self._records = [r for r in self._records if r.key != record.key] + [record]
        self._start(record)
        self.save(True)
        log.info("replicator to %s (%s) set", peer, space)
        return record.as_dict()

    def delete(self, peer: str, space: str | None = None) -> list[dict[str, Any]]:
        """Stop and forget the replicators to ``peer`` (of ``space`` only, if given);
        ``NotFoundError`` if there is none."""
        gone = [r for r in self._records if r.peer == peer and space in (None, r.space)]
        if not gone:
            where = f" for space {space}" if space else ""
            raise NotFoundError(f"no replicator to {peer}{where}")
        for record in gone:
            self._stop(record.key)
        self._records = [r for r in self._records if r not in gone]
        self.save(True)
        log.info("replicator to %s deleted", peer)
        return [r.as_dict() for r in gone]

    def list(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self._records]

    def summary(self) -> dict[str, Any]:
        """For ``p2p info``: how many replicators are in each state, and each one's."""
        counts: dict[str, int] = {}
        for record in self._records:
            counts[record.state.value] = counts.get(record.state.value, 0) + 1
        return {
            "states": counts,
            "replicators": [
                {"peer": r.peer, "space": r.space, "state": r.state.value, "lag": r.lag}
                for r in self._records
            ],
        }
