"""Replicators: the state machine, the retry schedule (a fake clock and sleep: no
real waiting), the file that keeps them, and pushes between in-memory stores —
backfill, live pushes, direction, scope, delete, outages and refusals."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from loomdb.clock import ManualClock
from loomdb.errors import NotFoundError, StoreCorruptError, UnreachableError, ValidationError
from loomdb.replication.feed import EntryFeed
from loomdb.replication.replicator_state import (
    DEFAULT_RETRY_INTERVALS,
    TRANSITIONS,
    ReplicatorEvent,
    ReplicatorFile,
    ReplicatorRecord,
    ReplicatorState,
    RetrySchedule,
    TransitionError,
)
from loomdb.replication.replicators import Replicators, in_scope
from loomdb.stores import MemoryStore
from loomdb.stores.base import ContentAddressedStore
from loomdb.trust.book import DirectoryBook
from loomdb.trust.guard import GuardedStore
from tests.support import EntryFactory, signing_key

S, E = ReplicatorState, ReplicatorEvent
PEER = "12D3KooWCugzopk9fYBy1pvYVi94Qr2y9PL4CjSpYZUaXir3YWb7"
ADDR = f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"
ME = "12D3KooWme"
SPACE = "space-1"


# --- the state machine and the schedule ------------------------------------------------


def test_the_transition_table_is_the_only_way_states_change() -> None:
    assert TRANSITIONS[(S.INACTIVE, E.START)] is S.BACKFILLING
    assert TRANSITIONS[(S.BACKFILLING, E.CAUGHT_UP)] is S.ACTIVE
    assert TRANSITIONS[(S.ACTIVE, E.FAILED)] is S.FAILING
    assert TRANSITIONS[(S.FAILING, E.RETRY)] is S.BACKFILLING
    assert TRANSITIONS[(S.REFUSED, E.RETRY)] is S.BACKFILLING
    for state in S:
        assert TRANSITIONS[(state, E.STOP)] is S.INACTIVE
        for event in E:
            record = ReplicatorRecord(PEER, ADDR, SPACE, state=state)
            if (state, event) in TRANSITIONS:
                assert record.handle(event, 5.0) is TRANSITIONS[(state, event)]
                assert record.state is TRANSITIONS[(state, event)] and record.updated_at == 5.0
            else:
                with pytest.raises(TransitionError):
                    record.handle(event, 5.0)
                assert record.state is state
    # an active replicator is never started twice, a failing one never "caught up"
    assert (S.ACTIVE, E.START) not in TRANSITIONS
    assert (S.FAILING, E.CAUGHT_UP) not in TRANSITIONS


def test_the_default_schedule_backs_off_from_30_s_to_32_min() -> None:
    schedule = RetrySchedule()
    assert DEFAULT_RETRY_INTERVALS == (30, 60, 120, 240, 480, 960, 1920)
    assert [schedule.delay(n) for n in range(1, 10)] == [
        30, 60, 120, 240, 480, 960, 1920, 1920, 1920
    ]  # fmt: skip
    assert RetrySchedule.parse("1,2,5").intervals == (1.0, 2.0, 5.0)
    assert RetrySchedule.parse("0.5").delay(3) == 0.5
    for bad in ("", "1,,2", "a", "1,-2", "0", "nan"):
        with pytest.raises(ValidationError):
            RetrySchedule.parse(bad)


def test_start_takes_the_retry_intervals(capsys: pytest.CaptureFixture[str]) -> None:
    from loomdb.cli.main import build_parser

    args = build_parser().parse_args(["start", "--replicator-retry-intervals", "1,2,5"])
    assert args.replicator_retry_intervals == RetrySchedule((1.0, 2.0, 5.0))
    assert build_parser().parse_args(["start"]).replicator_retry_intervals is None  # default
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["start", "--replicator-retry-intervals", "1,x"])
    assert exit_.value.code == 2 and "bad retry intervals" in capsys.readouterr().err


def test_failures_set_the_next_retry_and_refusals_give_up_after_the_schedule() -> None:
    schedule = RetrySchedule((1.0, 2.0, 5.0))
    record = ReplicatorRecord(PEER, ADDR, SPACE)
    record.handle(E.START, 0.0)
    assert record.failed(E.FAILED, "transport.unreachable", "gone", 10.0, schedule) == 1.0
    assert (record.state, record.next_retry, record.failures) == (S.FAILING, 11.0, 1)
    assert record.last_error == {"code": "transport.unreachable", "message": "gone", "at": 10.0}
    for n, delay in enumerate([2.0, 5.0, 5.0, 5.0], start=2):  # failures go on being retried
        record.handle(E.RETRY, 20.0)
        assert record.next_retry is None
        assert record.failed(E.FAILED, "transport.unreachable", "gone", 20.0, schedule) == delay
        assert record.failures == n
    record.handle(E.RETRY, 30.0)
    record.caught_up(31.0)
    assert (record.state, record.failures, record.next_retry) == (S.ACTIVE, 0, None)
    delays = []
    for _ in range(4):
        delays.append(record.failed(E.REFUSED, "trust.not_member", "no", 40.0, schedule))
        if delays[-1] is not None:
            record.handle(E.RETRY, 40.0)
            record.handle(E.CAUGHT_UP, 40.0)  # a backfill that got through, then refused
    assert delays == [1.0, 2.0, 5.0, None]  # refused: as many tries as intervals, then left
    assert record.state is S.REFUSED and record.next_retry is None


def test_the_file_keeps_every_record_and_refuses_a_corrupt_one(tmp_path: Path) -> None:
    file = ReplicatorFile(tmp_path)
    assert file.load() == []
    records = [
        ReplicatorRecord(PEER, ADDR, SPACE, ("notes",), (("todos", "t1"),), cursor=7, lag=2),
        ReplicatorRecord(PEER, ADDR, "other", state=S.FAILING, next_retry=12.5),
    ]
    records[1].last_error = {"code": "transport.unreachable", "message": "x", "at": 1.0}
    file.save(records)
    assert file.load() == records
    assert [p.name for p in tmp_path.iterdir()] == ["replicators.json"]  # no temporary left
    file.path.write_text('{"version": 1, "replicators": [{"peer": 1}]}')
    with pytest.raises(StoreCorruptError):
        file.load()
    file.path.write_text("{")
    with pytest.raises(StoreCorruptError):
        file.load()


def test_the_scope_takes_its_collections_documents_and_a_managed_directory() -> None:
    make = EntryFactory()
    whole = ReplicatorRecord(PEER, ADDR, SPACE)
    some = ReplicatorRecord(PEER, ADDR, SPACE, ("notes",), (("todos", "t1"),))
    assert in_scope(whole, make(collection="anything"))
    assert not in_scope(whole, make(space="elsewhere"))
    assert in_scope(some, make(collection="notes", document="x"))
    assert in_scope(some, make(collection="todos", document="t1"))
    assert not in_scope(some, make(collection="todos", document="t2"))
    assert not in_scope(some, make(collection="$directory"))  # an open space has none


# --- replicators between in-memory stores --------------------------------------------------


class FakeTime:
    """The replicators' clock and sleep: a sleep waits until the test moves time on."""

    def __init__(self) -> None:
        self.clock = ManualClock(1_000_000)
        self.sleeps: list[float] = []
        self._wake: anyio.Event | None = None
        self.asleep = anyio.Event()

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self._wake = anyio.Event()
        self.asleep.set()
        await self._wake.wait()
        self.clock.advance(int(delay * 1000))

    def sleeping(self) -> bool:
        return self.asleep.is_set()

    def wake(self) -> None:
        assert self._wake is not None, "nothing sleeps"
        self.asleep = anyio.Event()
        self._wake.set()


class Peer:
    """The target: a store behind the checks on receive, that can be down."""

    def __init__(self, *, open_spaces: bool = True) -> None:
        self.inner = MemoryStore()
        self.store = GuardedStore(self.inner, DirectoryBook(), open_spaces=open_spaces)
        self.down = False
        self.connects = 0

    @asynccontextmanager
    async def connect(self, addr: str) -> AsyncIterator[ContentAddressedStore]:
        assert addr == ADDR
        self.connects += 1
        if self.down:
            raise UnreachableError(f"cannot reach {addr}")
        yield self.store

    def documents(self) -> set[str]:
        return {e.document for e in self.inner._log}


class Local:
    def __init__(self) -> None:
        self.me = signing_key("me")
        self.inner = MemoryStore()
        self.feed = EntryFeed(self.inner, self.me.public_key)
        self.store = GuardedStore(self.inner, DirectoryBook(), on_stored=self.feed.stored)
        self.write = EntryFactory(author=self.me)


async def until(check: Callable[[], bool], what: str) -> None:
    """Wait (bounded: 5 s) until ``check`` holds, looking each time every task is blocked."""
    try:
        with anyio.fail_after(5):
            while not check():
                await anyio.wait_all_tasks_blocked()
                await anyio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"{what}: not within 5 s") from None


def replicators(tmp_path: Path, local: Local, peer: Peer, time: FakeTime) -> Replicators:
    return Replicators(
        tmp_path,
        local.inner,
        local.feed,
        peer.connect,
        peer_of=lambda addr: addr.rsplit("/", 1)[1],
        own_peer=ME,
        default_space=SPACE,
        schedule=RetrySchedule((1.0, 2.0, 5.0)),
        clock=time.clock,
        sleep=time.sleep,
    )


def state_of(reps: Replicators) -> str:
    [record] = reps.list()
    return str(record["state"])


@pytest.mark.anyio
async def test_backfill_then_live_pushes_of_the_scope_only_one_way(tmp_path: Path) -> None:
    local, peer, time = Local(), Peer(), FakeTime()
    await local.feed.start()
    await local.store.put_entries([local.write(document="old1"), local.write(document="old2")])
    await local.store.put_entries([local.write(collection="other", document="o1")])
    await peer.store.put_entries([EntryFactory(signing_key("b"))(document="peer-own")])
    reps = replicators(tmp_path, local, peer, time)
    async with reps.run():
        with pytest.raises(ValidationError):
            reps.set(f"/ip4/127.0.0.1/tcp/1/p2p/{ME}")  # itself
        shown = reps.set(ADDR, collections=["notes"])
        assert shown["peer"] == PEER and shown["space"] == SPACE
        assert shown["collections"] == ["notes"] and shown["state"] == "backfilling"
        await until(lambda: state_of(reps) == "active", "caught up")
        assert peer.documents() == {"old1", "old2", "peer-own"}  # what existed before
        # each new local entry of the scope is pushed as it lands, over one connection
        await local.store.put_entries([local.write(document="new1")])
        await until(lambda: "new1" in peer.documents(), "live push")
        await local.store.put_entries([local.write(collection="other", document="o2")])
        await local.store.put_entries([local.write(document="new2")])
        await until(lambda: "new2" in peer.documents(), "live push")
        assert not {"o1", "o2"} & peer.documents()  # other collections stay
        assert peer.connects == 2  # the backfill's, then the follower's
        assert await local.inner.count() == 6  # nothing was pulled from the peer
        [record] = reps.list()
        assert record["pushed"] == 4 and record["lag"] == 0 and record["refused"] == 0
        assert record["cursor"] == 6
        # entries another node wrote wait for the next reconciliation
        await local.store.put_entries([EntryFactory(signing_key("c"))(document="from-c")])
        await local.store.put_entries([local.write(document="new3")])
        await until(lambda: "new3" in peer.documents(), "live push")
        assert "from-c" not in peer.documents()

        assert [r["peer"] for r in reps.delete(PEER)] == [PEER]
        with pytest.raises(NotFoundError):
            reps.delete(PEER)
        await local.store.put_entries([local.write(document="after-delete")])
        await anyio.wait_all_tasks_blocked()  # everything that would run has run
        assert "after-delete" not in peer.documents()
        assert reps.list() == []
    assert json.loads((tmp_path / "replicators.json").read_text())["replicators"] == []


@pytest.mark.anyio
async def test_an_outage_backs_off_counts_the_lag_then_reconciles_everything(
    tmp_path: Path,
) -> None:
    local, peer, time = Local(), Peer(), FakeTime()
    await local.feed.start()
    await local.store.put_entries([local.write(document="before")])
    peer.down = True
    reps = replicators(tmp_path, local, peer, time)
    async with reps.run():
        reps.set(ADDR)
        await until(time.sleeping, "waits to retry")
        [record] = reps.list()
        assert record["state"] == "failing" and time.sleeps == [1.0]
        assert record["next_retry"] == time.clock.now_ms() / 1000 + 1.0
        assert record["last_error"]["code"] == "transport.unreachable"
        # it keeps writing while the peer is away: the lag counts what waits
        await local.store.put_entries([local.write(document=f"away{i}") for i in range(3)])
        await until(lambda: reps.list()[0]["lag"] == 4, "lag counted")
        for delay in (2.0, 5.0, 5.0):  # still down: the next intervals, the last one repeated
            time.wake()
            await until(time.sleeping, "waits to retry")
            assert time.sleeps[-1] == delay
        assert reps.list()[0]["failures"] == 4
        peer.down = False
        time.wake()
        await until(lambda: state_of(reps) == "active", "back")
        assert peer.documents() == {"before", "away0", "away1", "away2"}
        [record] = reps.list()
        assert (record["failures"], record["next_retry"], record["lag"]) == (0, None, 0)
        assert record["history"][-2:] == ["backfilling", "active"]
        await local.store.put_entries([local.write(document="live")])
        await until(lambda: "live" in peer.documents(), "live again")


@pytest.mark.anyio
async def test_a_refusing_peer_is_reported_and_not_retried_forever(tmp_path: Path) -> None:
    local, time = Local(), FakeTime()
    peer = Peer(open_spaces=False)  # takes managed spaces only: refuses every entry here
    await local.feed.start()
    await local.store.put_entries([local.write(document="d1")])
    reps = replicators(tmp_path, local, peer, time)
    async with reps.run():
        reps.set(ADDR)
        for _ in range(3):  # as many tries as the schedule has intervals
            await until(time.sleeping, "waits to retry")
            [record] = reps.list()
            assert record["state"] == "refused" and record["next_retry"] is not None
            time.wake()
        await until(lambda: reps.list()[0]["failures"] == 4, "the last try")
        await anyio.wait_all_tasks_blocked()
        [record] = reps.list()
        assert record["state"] == "refused" and record["next_retry"] is None
        assert record["last_error"]["code"] == "trust.not_member"
        assert record["refused"] == 4 and record["pushed"] == 0
        assert time.sleeps == [1.0, 2.0, 5.0] and not time.asleep.is_set()
        assert peer.documents() == set()
        # set again: it tries again at once
        reps.set(ADDR)
        await until(lambda: reps.list()[0]["refused"] == 1, "tried again")


@pytest.mark.anyio
async def test_replicators_and_their_cursor_survive_a_restart(tmp_path: Path) -> None:
    local, peer, time = Local(), Peer(), FakeTime()
    await local.feed.start()
    await local.store.put_entries([local.write(document="d1")])
    reps = replicators(tmp_path, local, peer, time)
    async with reps.run():
        reps.set(ADDR, collections=["notes"], documents=[("todos", "t1")])
        await until(lambda: state_of(reps) == "active", "caught up")
        await local.store.put_entries([local.write(document="d2")])
        await until(lambda: "d2" in peer.documents(), "pushed")
        await until(lambda: reps.list()[0]["cursor"] == 2, "cursor")
    [saved] = ReplicatorFile(tmp_path).load()
    assert (saved.state, saved.cursor, saved.collections) == (S.INACTIVE, 2, ("notes",))
    assert saved.documents == (("todos", "t1"),)

    # the node is down: it writes nothing, but other writes land (e.g. a local import)
    await local.inner.put_entries([local.write(document="while-down")])
    again = replicators(tmp_path, local, peer, time)
    assert again.list()[0]["cursor"] == 2
    async with again.run():
        await until(lambda: state_of(again) == "active", "caught up after the restart")
        assert "while-down" in peer.documents()  # the restart reconciled
        assert again.list()[0]["history"][-3:] == ["inactive", "backfilling", "active"]


@pytest.mark.anyio
async def test_a_failing_replicator_tries_again_at_once_when_its_peer_is_back(
    tmp_path: Path,
) -> None:
    local, peer, time = Local(), Peer(), FakeTime()
    await local.feed.start()
    await local.store.put_entries([local.write(document="d1")])
    back = anyio.Event()
    watched: list[str] = []

    async def reconnected(peer_id: str) -> None:
        watched.append(peer_id)
        await back.wait()

    peer.down = True
    reps = replicators(tmp_path, local, peer, time)
    reps.reconnected = reconnected
    async with reps.run():
        reps.set(ADDR)
        await until(time.sleeping, "waits to retry")
        assert state_of(reps) == "failing" and watched == [PEER]
        peer.down = False
        back.set()  # the peer connected: no need to wait out the back-off
        await until(lambda: state_of(reps) == "active", "tried again at once")
        assert "d1" in peer.documents() and time.sleeps == [1.0]
