"""``PassiveReplication`` in one process: two real libp2p hosts on 127.0.0.1, each
node a guarded memory store with its receipt-log feed and a store server on
``/loomdb/sync`` — the daemon's wiring without the daemon. Gossip delivers a local
write to a follower only; a child whose parents are missing makes the receiver
fetch the document's history from the publisher; head exchange on connect pulls
what a node follows and nothing else."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStoreError

from loomdb.entries.entry import Entry, build_entry
from loomdb.errors import UnreachableError
from loomdb.identity.keys import NamedKey, SigningKey
from loomdb.identity.peer_id import peer_id_from_public_key
from loomdb.replication.feed import EntryFeed
from loomdb.replication.message import MAX_INLINE
from loomdb.replication.passive import PassiveReplication
from loomdb.replication.subscriptions import Subscriptions
from loomdb.stores import MemoryStore
from loomdb.stores.origin import written_here
from loomdb.stores.server import StoreServer
from loomdb.transports.libp2p import P2PHost
from loomdb.trust.book import DirectoryBook
from loomdb.trust.devices import PeerPrincipal
from loomdb.trust.guard import GuardedStore

pytestmark = pytest.mark.anyio
WAIT = 20.0
KEY = NamedKey.generate("shared@1")


@pytest.fixture
def anyio_backend() -> str:
    return "trio"  # py-libp2p is trio-only


@dataclass
class Peer:
    user: SigningKey
    store: GuardedStore
    host: P2PHost
    replication: PassiveReplication

    def entry(self, doc: str, *parents: Entry, collection: str = "notes") -> Entry:
        return build_entry(
            author=self.user,
            space="main",
            collection=collection,
            document=doc,
            kind="change" if parents else "create",
            payload=b"{}",
            created_at=1 + sum(p.created_at for p in parents),
            parents=list(parents),
            key=KEY,
        )

    async def write(self, *entries: Entry) -> None:
        with written_here():  # as the node's write path does
            await self.store.put_entries(list(entries))

    async def has(self, entry: Entry) -> bool:
        [held] = await self.store.has_entries([entry.cid])
        return held

    def follow(self, *documents: str, collections: tuple[str, ...] = ()) -> None:
        subs = self.replication.subscriptions
        if documents:
            subs.add_documents("main", documents)
        if collections:
            subs.add_collections("main", collections)
        self.replication.subscriptions_changed()


@asynccontextmanager
async def peer(anti_entropy: float = 3600.0) -> AsyncIterator[Peer]:
    user = SigningKey.generate()
    base = MemoryStore()
    feed = EntryFeed(base, user.public_key)
    await feed.start()
    store = GuardedStore(base, DirectoryBook(), on_stored=feed.stored, on_written=feed.written)
    host = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], connect_timeout=WAIT)
    server = StoreServer(store)
    host.serve_sync(lambda p: server.handler_for(PeerPrincipal(None, peer_id=p)))
    replication = PassiveReplication(
        host, store, feed, Subscriptions(), store.check, anti_entropy=anti_entropy
    )
    async with host.run(), trio.open_nursery() as nursery:
        nursery.start_soon(replication.run)
        yield Peer(user, store, host, replication)
        nursery.cancel_scope.cancel()


async def until(check: Callable[[], object], what: str) -> None:
    with trio.fail_after(WAIT):
        while not await _value(check):
            await trio.sleep(0.02)


async def _value(check: Callable[[], object]) -> object:
    value = check()
    if hasattr(value, "__await__"):
        value = await value  # type: ignore[misc]
    return value


def joined(p: Peer, peers: int = 1) -> bool:
    info = p.host.pubsub_info()
    return bool(info and info["topic_peers"]) and all(
        n >= peers for n in info["topic_peers"].values()
    )


async def test_a_local_write_reaches_a_follower_and_no_one_else() -> None:
    async with peer() as a, peer() as b, peer() as c:
        a.follow("notes/n1")
        b.follow("notes/n1")
        c.follow(collections=("other",))
        await b.host.connect(a.host.listen_addrs()[0])
        await c.host.connect(a.host.listen_addrs()[0])
        await until(lambda: joined(a) and joined(b), "a and b share the topic")
        # the exchanges on connect are done: what arrives from here on is gossip's
        await until(lambda: a.replication.heads["exchanges"] >= 2, "a's exchanges")
        await until(lambda: b.replication.heads["exchanges"] >= 1, "b's exchange")
        first = a.entry("n1")
        unfollowed = a.entry("n2")
        await a.write(first, unfollowed)
        await until(lambda: b.has(first), "b stores a's entry")
        await until(lambda: b.replication.counters["not_subscribed"] >= 1, "b drops n2")
        assert not await b.has(unfollowed)
        assert not await c.has(first) and c.replication.counters["received"] == 0
        # and back: b's own write reaches a; a's own message came back to a, dropped
        reply = b.entry("n1", first)
        await b.write(reply)
        await until(lambda: a.has(reply), "a stores b's entry")
        assert a.replication.counters["own"] >= 1 and a.replication.counters["published"] >= 1
        await until(lambda: a.replication.delays.summary()["count"] == 1, "a's delay recorded")


async def connected_followers(a: Peer, b: Peer) -> None:
    a.follow(collections=("notes",))
    b.follow(collections=("notes",))
    await b.host.connect(a.host.listen_addrs()[0])
    await until(lambda: joined(a) and joined(b), "a and b share the topic")
    # the exchanges on connect are done: what arrives from here on is gossip's
    await until(lambda: b.replication.heads["exchanges"] >= 1, "b's exchange")
    await until(lambda: a.replication.heads["exchanges"] >= 1, "a's exchange")


async def test_entries_written_together_go_in_few_messages_and_one_store_call() -> None:
    async with peer() as a, peer() as b:
        await connected_followers(a, b)
        docs = [a.entry(f"n{i}") for i in range(300)]
        children = [a.entry(f"n{i}", parent) for i, parent in enumerate(docs[:100])]
        await a.write(*docs, *children)  # one put: parents before children
        sent, got = a.replication.counters, b.replication.counters
        await until(lambda: got["stored"] == 400, "b stores all 400 by gossip")
        assert sent["published_entries"] == 400 and 1 <= sent["published"] <= 3
        assert got["batches"] >= 1 and got["received_entries"] == 400
        assert got["store_calls"] <= sent["published"]
        assert got["missing_parents"] == 0 and got["fetches"] == 0
        # separate writes in a burst share messages too (the publish window)
        burst = [a.entry(f"b{i}") for i in range(20)]
        before = sent["published"]
        for e in burst:
            await a.write(e)
        await until(lambda: got["stored"] == 420, "b stores the burst")
        assert sent["published"] - before < len(burst)


async def test_entries_the_node_received_are_not_published_again() -> None:
    async with peer() as a, peer() as b:
        await connected_followers(a, b)
        # a's user wrote these on another device; a received them (sync, gossip)
        from_elsewhere = [a.entry(f"o{i}") for i in range(5)]
        await a.store.put_entries(from_elsewhere)
        await until(lambda: a.replication.counters["not_written_here"] == 5, "a skips them")
        marker = a.entry("marker")
        await a.write(marker)
        await until(lambda: b.has(marker), "b receives a's own write")
        assert a.replication.counters["published_entries"] == 1
        assert b.replication.counters["received_entries"] == 1
        assert not any([await b.has(e) for e in from_elsewhere])


async def test_missing_parents_are_fetched_from_the_publisher() -> None:
    async with peer() as a, peer() as b:
        a.follow("notes/n1")
        history = [a.entry("n1")]
        for _ in range(3):
            history.append(a.entry("n1", history[-1]))
        await a.write(*history)  # nobody listens: gossip goes nowhere
        await until(lambda: a.replication.counters["unheard"] == len(history), "unheard")
        await b.host.connect(a.host.listen_addrs()[0])
        # b follows nothing yet: its head exchange on connect pulls nothing
        await until(lambda: b.replication.heads["exchanges"] >= 1, "b's exchange on connect")
        b.follow("notes/n1")
        await until(lambda: joined(a) and joined(b), "a and b share the topic")
        assert not await b.has(history[0])
        latest = a.entry("n1", history[-1])
        await a.write(latest)
        await until(lambda: b.has(latest), "b stores the new entry")
        for old in history:
            await until(lambda e=old: b.has(e), "b fetches the history")
        # (the pull stores the history before it returns and is counted)
        await until(lambda: b.replication.counters["fetched"] >= 1, "the fetch is counted")
        assert b.replication.counters["missing_parents"] >= 1


async def test_head_exchange_on_connect_pulls_only_what_is_followed() -> None:
    async with peer() as a, peer() as b:
        b.follow(collections=("notes",))
        mine = a.entry("n1")
        theirs = a.entry("x1", collection="other")
        await a.write(mine, theirs)
        a_offline = b.entry("n2")
        await b.write(a_offline)
        await b.host.connect(a.host.listen_addrs()[0])
        await until(lambda: b.has(mine), "b pulls the followed collection on connect")
        await until(lambda: b.replication.heads["runs"] >= 1, "b's exchange done")
        assert not await b.has(theirs)
        assert not await a.has(a_offline)  # a follows nothing: b pushes nothing to it
        a.follow(collections=("notes",))
        # the next exchange is an hour away: a one-off pull names the document
        [report] = await a.replication.sync_documents("main", ["notes/n2"])
        assert report["pulled"] == 1 and await a.has(a_offline)


async def test_a_large_entry_is_announced_and_fetched() -> None:
    async with peer() as a, peer() as b:
        a.follow("notes/big")
        b.follow("notes/big")
        await b.host.connect(a.host.listen_addrs()[0])
        await until(lambda: joined(a) and joined(b), "a and b share the topic")
        # b's head exchange on connect is done: only the announcement can bring it now
        await until(lambda: b.replication.heads["exchanges"] >= 1, "b's exchange on connect")
        big = build_entry(
            author=a.user,
            space="main",
            collection="notes",
            document="big",
            kind="create",
            payload=b"x" * (MAX_INLINE + 1000),
            created_at=5,
            key=KEY,
        )
        await a.write(big)
        await until(lambda: b.replication.counters["fetched"] == 1, "b fetches the document")
        assert await b.has(big) and b.replication.counters["announced"] == 1


async def test_anti_entropy_repairs_what_gossip_never_carried() -> None:
    async with peer() as a, peer(anti_entropy=0.5) as b:
        await b.host.connect(a.host.listen_addrs()[0])
        await until(lambda: b.replication.heads["exchanges"] >= 1, "b's exchange on connect")
        missed = a.entry("n1")
        await a.write(missed)  # nobody follows n1 yet: not sent
        await until(lambda: a.replication.counters["unheard"] == 1, "a's publish finds no one")
        b.follow("notes/n1")  # b follows it now, after the gossip
        await until(lambda: b.has(missed), "b's next periodic exchange pulls it")
        await until(lambda: b.replication.heads["pulled"] == 1, "the exchange is counted")
        assert b.replication.counters["received"] == 0


async def test_a_peer_with_no_known_address_is_unreachable_not_a_crash() -> None:
    async with peer() as a:
        nobody = peer_id_from_public_key(SigningKey.generate().public_key)
        with pytest.raises(UnreachableError):
            await a.host.open_sync_stream(nobody, timeout=WAIT)
        # what head exchange does when a peer left between the look and the pull
        a.follow("notes/n1")
        await a.replication._exchange(nobody)
        assert a.replication.heads["failed"] == 1 and a.replication.heads["exchanges"] == 1
        assert await a.replication.sync_documents("main", ["notes/n1"]) == []  # no peers


async def test_a_peer_that_dialled_in_is_reached_on_its_connection_without_an_address() -> None:
    async with peer() as a, peer() as b:
        b_id = await a.host.connect(b.host.listen_addrs()[0])  # a dials: b has no address of a
        a_id = a.host.peer_id
        peerstore = b.host.host.get_peerstore()
        with contextlib.suppress(PeerStoreError):  # not there yet, or not any more
            peerstore.clear_peerdata(ID.from_base58(a_id))  # as before a's record arrives
        stream = await b.host.open_sync_stream(a_id, timeout=WAIT)
        await stream.close()
        assert b_id == b.host.peer_id
