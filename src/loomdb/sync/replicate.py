"""Pull, push and sync between any two stores (or databases).

::

    report = await pull_changes_from(local, remote, SyncScope("main"))
    report = await push_changes_to(local, remote, SyncScope("main", collections=("todos",)))
    report = await sync(a, b)                       # every space either side holds

Each side may be any :class:`~loomdb.stores.base.ContentAddressedStore` (memory,
SQLite, a ``RemoteStore`` over a network, a ``CachingStore``) or a
:class:`~loomdb.documents.Database`, whose documents are then updated as
entries land. The first argument starts the reconciliation and does the
fingerprint work for its side; the second answers (for a ``RemoteStore``, on
the remote node: fingerprints never cross the wire, only Negentropy messages).

The steps:

1. **Reconcile** every set of the scope (a space, collections, or documents) at
   once: one round trip per Negentropy round for all sets together, so an idle
   re-sync costs one round trip.
2. **Transfer** what differs in batches of ``batch_size`` entries, in the order
   reconciliation found them (by timestamp; each batch sorted parents first).
   Fetching, verifying and storing are pipelined: while one batch is stored,
   the next is verified and the one after it fetched. A batch's signatures are
   checked on every core (:func:`loomdb.entries.verify.decode_many`: libsodium
   releases the GIL while it verifies). A target with fingerprint trees indexes
   the stored batches (``catch_up_fingerprints``: appends, a few µs per entry)
   while it waits for the next one (at least every ``INDEX_EVERY`` batches, and
   at the end), so the next reconciliation has nothing to build.
3. **Report**: counts, rejections (each with its reason), rounds and bytes.

A pull into a store that keeps cursors (``get_cursor``/``set_cursor``) of one open
space skips steps 1 and 2 when it can: the remote's receipt log, scanned from
where the last complete pull of that scope left it (:func:`pull_appended`).

Invariants:

- Nothing is lost on interruption: each batch lands atomically (a store's
  ``put_entries``), and a new run reconciles again, so it transfers only what
  is still missing. Acknowledged batches are never sent again.
- A bad entry never blocks the rest: it is reported and the batch's healthy
  entries are kept. Entries that were not asked for are ignored.
- Cancellation (any anyio/trio cancel scope, or ``progress`` raising) is safe
  at every await.
- A failure comes out as itself: when a stage of the transfer fails (the
  connection to the remote is lost, a store refuses), the others stop and its
  :class:`~loomdb.errors.LoomError` is raised, never the ``ExceptionGroup`` of
  the task group that ran them (:func:`one_error`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread

from loomdb.documents.model import KeyWait
from loomdb.entries.cid import CID
from loomdb.entries.entry import Entry
from loomdb.entries.verify import decode_many
from loomdb.errors import (
    ForbiddenError,
    LoomError,
    ProtocolError,
    ValidationError,
)
from loomdb.stores.base import ContentAddressedStore, PutStatus, SetKey, StoreHead, fetch_raw
from loomdb.sync.reconcile import ReconcileReply, ReconcileRequest
from loomdb.trust.directory import PULLERS
from loomdb.trust.spaces import ALL, DIRECTORY_COLLECTION, is_managed

if TYPE_CHECKING:
    from loomdb.documents.database import Database

DEFAULT_BATCH: Final = 1000
INDEX_EVERY: Final = 64
"""A pull whose store stage has batches waiting indexes them at least every this many."""
CURSOR_MAX: Final = 5000
"""Entries appended to a remote's log (all spaces) up to which a pull scans them
from its cursor; beyond, it reconciles (see :func:`pull_appended`)."""


@dataclass(frozen=True, slots=True)
class SyncScope:
    """What to sync: one space (``None``: every space either side holds), optionally
    narrowed to some collections and/or some documents ``(collection, document)``."""

    space: str | None = None
    collections: tuple[str, ...] = ()
    documents: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.space is None and (self.collections or self.documents):
            raise ValidationError("name the space of the collections or documents to sync")

    def sets(self, spaces: Iterable[str] = ()) -> list[SetKey]:
        if self.space is None:
            return [SetKey(s) for s in sorted(set(spaces))]
        if not self.collections and not self.documents:
            return [SetKey(self.space)]
        keys = [SetKey(self.space, c) for c in self.collections]
        keys += [SetKey(self.space, c, d) for c, d in self.documents if c not in self.collections]
        return keys


@dataclass(frozen=True, slots=True)
class Rejection:
    cid: CID
    reason: str
    side: str  # the side that refused it: "local" or "remote"


@dataclass(slots=True)
class SyncProgress:
    """Where a sync stands; passed to the ``progress`` callback after each step."""

    phase: str = "reconcile"  # reconcile → transfer → done
    rounds: int = 0
    to_pull: int = 0
    to_push: int = 0
    pulled: int = 0  # entries stored locally (new)
    pushed: int = 0  # entries stored remotely (new)
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    missing: int = 0  # asked for, but the other side no longer had it
    # At the end: entries of the scope the local side holds but cannot read for want
    # of a key (stored, not refused: they are applied once the key arrives), and which.
    waiting_for_key: int = 0
    keys_wanted: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return self.pulled + self.pushed + self.duplicates + len(self.rejected) + self.missing

    @property
    def total(self) -> int:
        return self.to_pull + self.to_push

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "rounds": self.rounds,
            "to_pull": self.to_pull,
            "to_push": self.to_push,
            "pulled": self.pulled,
            "pushed": self.pushed,
            "duplicates": self.duplicates,
            "rejected": [
                {"cid": str(r.cid), "reason": r.reason, "side": r.side} for r in self.rejected
            ],
            "missing": self.missing,
            "waiting_for_key": self.waiting_for_key,
            "keys_wanted": list(self.keys_wanted),
            "seconds": round(time.monotonic() - self.started, 3),
        }


SyncReport = SyncProgress
"""The final progress is the report."""

Progress = Callable[[SyncProgress], None]


# --- databases as stores ----------------------------------------------------------


class DatabaseStore:
    """A database seen as a store: reads from its store, writes through the database
    (so documents are updated as entries land)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.store: ContentAddressedStore = db.store

    async def put_entries(self, entries: Iterable[Any]) -> list[Any]:
        return await self.db.put_entries(list(entries))

    async def reconcile(self, requests: Sequence[ReconcileRequest]) -> list[ReconcileReply]:
        # A sync starts here: first apply anything stored but not yet applied.
        await self.db.catch_up()
        return await self.store.reconcile(requests)

    async def catch_up(self) -> None:
        """What :meth:`reconcile` does first, for a pull that does not reconcile."""
        await self.db.catch_up()

    async def waiting_for_key(self, scope: SyncScope) -> KeyWait:
        if scope.space not in (None, self.db.space):
            return KeyWait(0, ())
        return await self.db.waiting_for_key(scope.collections, scope.documents)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def as_store(target: object) -> ContentAddressedStore:
    from loomdb.documents.database import Database

    if isinstance(target, Database):
        return DatabaseStore(target)
    if isinstance(target, ContentAddressedStore):
        return target
    raise ValidationError(f"cannot sync a {type(target).__name__}: expected a store or a database")


# --- the steps ----------------------------------------------------------------------


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@contextmanager
def one_error() -> Iterator[None]:
    """Around a task group: when what failed inside is LoomErrors only, raise the
    first of them, not the group (the other stages were cancelled because of it).

    Anything else (a bug, a cancellation from outside mixed in) leaves the group
    as it is, for the caller's own handling."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if leaves and all(isinstance(e, LoomError) for e in leaves):
            raise leaves[0] from None
        raise


def cid_of_id(item_id: bytes) -> CID:
    return CID.from_digest(item_id)


async def reconcile(
    local: ContentAddressedStore,
    remote: ContentAddressedStore,
    sets: Sequence[SetKey],
    state: SyncProgress,
    progress: Progress | None = None,
) -> tuple[list[CID], list[CID]]:
    """Run Negentropy over every set at once; ``(have, need)`` as CIDs, de-duplicated."""
    have: dict[bytes, None] = {}
    need: dict[bytes, None] = {}
    # Directory entries go first: the receiver checks the rest against them.
    first_have: dict[bytes, None] = {}
    first_need: dict[bytes, None] = {}
    starts = await local.reconcile([ReconcileRequest(s) for s in sets])
    active: list[tuple[SetKey, bytes]] = [
        (s, r.message) for s, r in zip(sets, starts, strict=True) if r.message is not None
    ]
    last: dict[SetKey, bytes] = {}
    while active:
        answers = await remote.reconcile(
            [ReconcileRequest(s, m, initiator=False) for s, m in active]
        )
        state.rounds += 1
        replies: list[ReconcileReply] = await local.reconcile(
            [
                ReconcileRequest(s, a.message, initiator=True)
                for (s, _), a in zip(active, answers, strict=True)
            ]
        )
        next_active = []
        for (s, _), reply in zip(active, replies, strict=True):
            found = len(have) + len(need)
            have.update(dict.fromkeys(reply.have))
            need.update(dict.fromkeys(reply.need))
            if s.collection == DIRECTORY_COLLECTION:
                first_have.update(dict.fromkeys(reply.have))
                first_need.update(dict.fromkeys(reply.need))
            if reply.message is not None:
                # Rounds are bounded by progress, not by a count: a round that
                # learns nothing and sends the same message again never ends.
                if reply.message == last.get(s) and len(have) + len(need) == found:
                    raise ProtocolError(f"reconciliation of {s} makes no progress")
                last[s] = reply.message
                next_active.append((s, reply.message))
        active = next_active
        if progress is not None:
            progress(state)
    have_all = [*first_have, *(i for i in have if i not in first_have)]
    need_all = [*first_need, *(i for i in need if i not in first_need)]
    return [cid_of_id(i) for i in have_all], [cid_of_id(i) for i in need_all]


_by_height = attrgetter("height")  # (a C key function: no Python call per entry)


def _verify(
    wanted: Sequence[CID], raws: Sequence[bytes | None]
) -> tuple[list[Entry], list[Rejection], int]:
    """Check every fetched entry (CID and signature); runs on a worker thread, and
    shares the batch with the verify pool's (one per core)."""
    asked = [(cid, raw) for cid, raw in zip(wanted, raws, strict=True) if raw is not None]
    checked = decode_many([raw for _, raw in asked], [cid for cid, _ in asked])
    good: list[Entry] = []
    bad: list[Rejection] = []
    for (cid, _), result in zip(asked, checked, strict=True):
        if isinstance(result, Entry):
            good.append(result)
        else:
            bad.append(Rejection(cid, f"{result.code}: {result.message}", "local"))
    good.sort(key=_by_height)  # parents before children within the batch
    return good, bad, len(wanted) - len(asked)


async def transfer(
    source: ContentAddressedStore,
    target: ContentAddressedStore,
    cids: Sequence[CID],
    state: SyncProgress,
    *,
    direction: str,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
) -> None:
    """Copy ``cids`` from ``source`` to ``target`` in batches, in three stages that
    overlap: fetch batch k+2, verify batch k+1 (on worker threads), store batch k."""
    batches = [cids[i : i + batch_size] for i in range(0, len(cids), batch_size)]
    fetched_in, fetched_out = anyio.create_memory_object_stream[
        tuple[Sequence[CID], list[bytes | None]]
    ](1)
    send, receive = anyio.create_memory_object_stream[tuple[list[Entry], list[Rejection], int]](1)
    side = "local" if direction == "pull" else "remote"
    # A store with fingerprint trees indexes the batches as they land (appends, a few
    # µs per entry), not all of them at the next reconciliation: while the store
    # stage would wait for the next batch anyway, and at least every INDEX_EVERY
    # batches, and once at the end.
    index: Callable[[], Awaitable[object]] | None = getattr(target, "catch_up_fingerprints", None)
    unindexed = 0

    async def fetch() -> None:
        async with fetched_in:
            for batch in batches:
                await fetched_in.send((batch, await fetch_raw(source, batch)))

    async def produce() -> None:
        async with send:
            if direction == "pull":
                # Untrusted bytes: verify here, on worker threads, so the target
                # stores them without verifying again (and the loop stays free).
                async with fetched_out:
                    async for batch, raws in fetched_out:
                        await send.send(await anyio.to_thread.run_sync(_verify, batch, raws))
                return
            for batch in batches:
                # Our own entries: the remote verifies what it receives.
                found = await source.get_entries(batch)
                entries = sorted((e for e in found if e is not None), key=lambda e: e.height)
                await send.send((entries, [], len(found) - len(entries)))

    async def store() -> None:
        nonlocal unindexed
        async with receive:
            async for good, bad, missing in receive:
                state.rejected.extend(bad)
                state.missing += missing
                # Shielded: a store write runs on a worker thread and commits even if
                # its caller is cancelled, so a cancel waits for the batch in flight.
                # When the sync returns (or is cancelled), all it stored is counted.
                with anyio.CancelScope(shield=True):
                    results = await target.put_entries(good) if good else []
                for result in results:
                    if result.status is PutStatus.ACCEPTED:
                        if direction == "pull":
                            state.pulled += 1
                        else:
                            state.pushed += 1
                    elif result.status is PutStatus.DUPLICATE:
                        state.duplicates += 1
                    else:
                        state.rejected.append(Rejection(result.cid, result.reason or "", side))
                if index is not None and good:
                    unindexed += 1
                    waiting = receive.statistics().current_buffer_used > 0
                    if not waiting or unindexed >= INDEX_EVERY:
                        await index()
                        unindexed = 0
                if progress is not None:
                    progress(state)
        if index is not None and unindexed:
            await index()

    with one_error():
        async with anyio.create_task_group() as tg:
            if direction == "pull":
                tg.start_soon(fetch)
            else:
                await fetched_in.aclose()
                await fetched_out.aclose()
            tg.start_soon(produce)
            await store()


async def _scope_sets(
    scope: SyncScope | str | None, a: ContentAddressedStore, b: ContentAddressedStore
) -> list[SetKey]:
    if scope is None or isinstance(scope, str):
        scope = SyncScope(scope)
    if scope.space is not None:
        sets = scope.sets()
    else:
        sets = scope.sets([*await a.list_spaces(), *await b.list_spaces()])
    if any(is_managed(s.space) for s in sets):
        for store in (a, b):
            access = getattr(store, "access", None)
            if access is None:
                continue
            reach = await access()
            sets = narrow_sets(sets, reach)
            if scope.space is not None and not sets:
                who = (reach or {}).get("user") or "an anonymous client (not in its directory)"
                raise ForbiddenError(f"{who} may not sync space {scope.space} with this node")
        directories = [SetKey(s.space, DIRECTORY_COLLECTION) for s in sets if is_managed(s.space)]
        sets = list(dict.fromkeys([*directories, *sets]))
    return sets


def narrow_sets(sets: Sequence[SetKey], access: dict[str, Any] | None) -> list[SetKey]:
    """The parts of ``sets`` a remote's ``access`` reply lets us pull: a whole space
    becomes the collections we may read when we may not read all of it."""
    if access is None:
        return list(sets)
    spaces = access.get("spaces") or {}
    out: list[SetKey] = []
    for key in sets:
        if not is_managed(key.space):
            if access.get("open_spaces", True):
                out.append(key)
            continue
        roles: dict[str, list[str]] = spaces.get(key.space) or {}
        pullable = {c for c, r in roles.items() if PULLERS & set(r)}
        if not roles:
            continue
        if ALL in pullable or key.collection == DIRECTORY_COLLECTION:
            out.append(key)
        elif key.collection is None:
            out += [SetKey(key.space, c) for c in sorted(pullable)]
        elif key.collection in pullable:
            out.append(key)
    return out


async def _run(
    local_target: object,
    remote_target: object,
    scope: SyncScope | str | None,
    *,
    pull: bool,
    push: bool,
    batch_size: int,
    progress: Progress | None,
) -> SyncReport:
    if type(batch_size) is not int or batch_size < 1:
        raise ValidationError("batch_size must be a positive integer")
    local, remote = as_store(local_target), as_store(remote_target)
    state = SyncProgress()
    chosen = scope if isinstance(scope, SyncScope) else SyncScope(scope)
    cursor = await _cursor(local, remote, chosen) if pull and not push else None
    if cursor is not None and await pull_appended(
        local, remote, chosen, cursor, state, batch_size=batch_size, progress=progress
    ):
        return await _finish(local, chosen, state, progress)
    sets = await _scope_sets(scope, local, remote)
    have, need = await reconcile(local, remote, sets, state, progress)
    state.to_pull = len(need) if pull else 0
    state.to_push = len(have) if push else 0
    state.phase = "transfer"
    if progress is not None:
        progress(state)
    if pull and need:
        await transfer(
            remote, local, need, state, direction="pull", batch_size=batch_size, progress=progress
        )
    if push and have:
        await transfer(
            local, remote, have, state, direction="push", batch_size=batch_size, progress=progress
        )
    if cursor is not None and not state.rejected and not state.missing:
        # Everything the remote held in scope when the pull began is here now.
        await cursor.save(cursor.head.seq)
    return await _finish(local, chosen, state, progress)


async def _finish(
    local: ContentAddressedStore, scope: SyncScope, state: SyncProgress, progress: Progress | None
) -> SyncReport:
    waiting = getattr(local, "waiting_for_key", None)  # a database, or a node's databases
    if waiting is not None:
        found = await waiting(scope)
        state.waiting_for_key, state.keys_wanted = found.entries, list(found.keys)
    state.phase = "done"
    if progress is not None:
        progress(state)
    return state


# --- pulling what the remote appended since the last pull ---------------------------


@dataclass(frozen=True, slots=True)
class PullCursor:
    """Where a local store's last complete pull of a scope left the remote's receipt
    log: the remote's head now, and the position reached before (None: none yet)."""

    local: Any
    name: str
    head: StoreHead
    last: int | None

    async def save(self, seq: int) -> None:
        await self.local.set_cursor(self.name, seq)


async def _cursor(
    local: ContentAddressedStore, remote: ContentAddressedStore, scope: SyncScope
) -> PullCursor | None:
    """The pull cursor of ``scope`` on ``remote``, when ``local`` keeps cursors and the
    scope is one open space (a managed space's entries need its directory first and
    the remote's access rules: those pulls always reconcile)."""
    if getattr(local, "get_cursor", None) is None or scope.space is None:
        return None
    if is_managed(scope.space):
        return None
    head = await remote.store_head()
    # Per remote store (its epoch: a new store, or a wiped one, starts over) and scope.
    what = [scope.space, list(scope.collections), [list(d) for d in scope.documents]]
    name = f"pull {head.epoch} {json.dumps(what, separators=(',', ':'))}"
    last = await local.get_cursor(name)  # type: ignore[attr-defined]
    return PullCursor(local, name, head, last)


def _in_scope(entry: Entry, scope: SyncScope) -> bool:
    if entry.space != scope.space:
        return False
    if not scope.collections and not scope.documents:
        return True
    return entry.collection in scope.collections or (
        (entry.collection, entry.document) in scope.documents
    )


async def pull_appended(
    local: ContentAddressedStore,
    remote: ContentAddressedStore,
    scope: SyncScope,
    cursor: PullCursor,
    state: SyncProgress,
    *,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
) -> bool:
    """Pull what the remote appended to its receipt log since ``cursor``: its ``scan``
    from there, no reconciliation (one round trip for a few new entries). False
    when the cursor cannot serve: none yet, more than ``CURSOR_MAX`` entries appended
    (in any space: reconciling moves fewer), or a page that does not decode (what
    was stored before it stays; the caller reconciles)."""
    last, head = cursor.last, cursor.head
    if last is None or not 0 <= head.seq - last <= CURSOR_MAX:
        return False
    catch_up = getattr(local, "catch_up", None)  # a database: apply what is stored first
    if catch_up is not None:
        await catch_up()
    state.phase = "transfer"
    if progress is not None:
        progress(state)
    seq = last
    while seq < head.seq:
        try:
            page = await remote.scan(seq, min(batch_size, head.seq - seq))
        except ProtocolError:
            return False  # a damaged entry fails a whole page: reconciling reports it alone
        if not page:
            break
        seq = page[-1].seq
        entries = sorted((r.entry for r in page if _in_scope(r.entry, scope)), key=_height)
        state.to_pull += len(entries)
        # Not verified yet (a scan reads them unchecked): the store verifies each.
        with anyio.CancelScope(shield=True):
            results = await local.put_entries(entries) if entries else []
        for result in results:
            if result.status is PutStatus.ACCEPTED:
                state.pulled += 1
            elif result.status is PutStatus.DUPLICATE:
                state.duplicates += 1
            else:
                state.rejected.append(Rejection(result.cid, result.reason or "", "local"))
        if progress is not None:
            progress(state)
    if not state.rejected:
        await cursor.save(seq)
    return True


def _height(entry: Entry) -> int:
    return entry.height


async def pull_changes_from(
    local: object,
    remote: object,
    scope: SyncScope | str | None = None,
    *,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
) -> SyncReport:
    """Copy into ``local`` what ``remote`` holds in ``scope`` and ``local`` lacks."""
    return await _run(
        local, remote, scope, pull=True, push=False, batch_size=batch_size, progress=progress
    )


async def push_changes_to(
    local: object,
    remote: object,
    scope: SyncScope | str | None = None,
    *,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
) -> SyncReport:
    """Copy into ``remote`` what ``local`` holds in ``scope`` and ``remote`` lacks."""
    return await _run(
        local, remote, scope, pull=False, push=True, batch_size=batch_size, progress=progress
    )


async def sync(
    a: object,
    b: object,
    scope: SyncScope | str | None = None,
    *,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
) -> SyncReport:
    """Make ``a`` and ``b`` hold the same entries in ``scope`` (pull, then push)."""
    return await _run(a, b, scope, pull=True, push=True, batch_size=batch_size, progress=progress)
