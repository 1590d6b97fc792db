"""The Kad-DHT: provider keys, the provide schedule, value validation, provider
de-duplication and the log filter as pure functions; then real libp2p hosts on
127.0.0.1 in this process (provide and find, and a history fetch that falls back
to a provider found on the DHT)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from multiaddr import Multiaddr

from loomdb.cli.main import build_parser, start_nat_settings
from loomdb.entries.entry import Entry, build_entry
from loomdb.errors import UnreachableError
from loomdb.identity.keys import NamedKey, SigningKey
from loomdb.identity.peer_id import peer_id_from_public_key
from loomdb.node.p2p import P2PSettings, p2p_settings
from loomdb.replication.feed import EntryFeed
from loomdb.replication.passive import PassiveReplication
from loomdb.replication.providers import (
    MULTIHASH_BLAKE2B_256,
    Providers,
    ProvideSchedule,
    collection_key,
    space_key,
    wanted_keys,
)
from loomdb.replication.subscriptions import Subscriptions
from loomdb.replication.topics import collection_topic
from loomdb.stores import MemoryStore
from loomdb.stores.server import StoreServer
from loomdb.transports.libp2p import P2PHost
from loomdb.transports.libp2p.dht import (
    DHT_LOGGERS,
    HOST_LOGGER,
    NodeDHT,
    QuietDHTNoise,
    merge_providers,
    quiet_dht_logs,
    refuses_value,
    usable_addrs,
    value_validator,
)
from loomdb.transports.libp2p.host import Backoff
from loomdb.trust.book import DirectoryBook
from loomdb.trust.devices import PeerPrincipal
from loomdb.trust.guard import GuardedStore

WAIT = 30.0
KEY = NamedKey.generate("shared@1")


def peer_id() -> ID:
    return ID.from_base58(peer_id_from_public_key(SigningKey.generate().public_key))


# --- keys ---------------------------------------------------------------------------------


def test_keys_are_multihashes_of_the_names_and_name_nothing() -> None:
    space, coll = space_key("main"), collection_key("main", "notes")
    for key in (space, coll):
        assert len(key) == 36 and key.startswith(MULTIHASH_BLAKE2B_256)
        assert b"main" not in key and b"notes" not in key
    assert space == space_key("main") and coll == collection_key("main", "notes")
    assert len({space, coll, space_key("notes"), collection_key("notes", "main")}) == 4
    # length-prefixed parts: no two tuples share a key
    assert collection_key("a", "bc") != collection_key("ab", "c")
    # a domain of their own: not the gossip topic's digest
    assert coll[4:] not in collection_topic("main", "notes").encode()


def test_wanted_keys_are_spaces_first_each_once_in_name_order() -> None:
    keys = wanted_keys(["z", "main"], [("main", "notes"), ("main", "notes"), ("a", "x")])
    assert keys == [
        ("space", space_key("a")),
        ("space", space_key("main")),
        ("space", space_key("z")),
        ("collection", collection_key("a", "x")),
        ("collection", collection_key("main", "notes")),
    ]


# --- the schedule -----------------------------------------------------------------------


def keys(n: int) -> list[tuple[str, bytes]]:
    return [("collection", collection_key("s", f"c{i:03}")) for i in range(n)]


def test_the_schedule_paces_provides_and_bounds_the_keys() -> None:
    schedule = ProvideSchedule(max_keys=3, interval=1.0, republish=100.0)
    assert schedule.want(keys(5), now=0.0) == 3
    assert schedule.summary() == {
        "keys": 3,
        "keys_provided": 0,
        "keys_pending": 3,
        "keys_skipped": 2,
    }
    first = schedule.next_due(0.0)
    assert first is not None and schedule.next_due(0.5) is None  # one per interval
    schedule.done(first, True, 0.5)
    assert schedule.wakeup(0.5) == pytest.approx(0.5)
    given = [first]
    now = 1.0
    while (key := schedule.next_due(now)) is not None:
        given.append(key)
        schedule.done(key, True, now)
        now += 1.0
    assert sorted(given) == sorted(k for _, k in keys(5)[:3])  # each once
    assert schedule.summary()["keys_provided"] == 3
    # republished after `republish` seconds, not before
    assert schedule.next_due(50.0) is None
    assert schedule.next_due(101.0) == first


def test_a_provide_that_reached_nobody_backs_off_until_peers_appear() -> None:
    schedule = ProvideSchedule(interval=0.0, retry=Backoff(5.0, 2.0, 20.0))
    [(_, key)] = keys(1)
    schedule.want([("collection", key)], 0.0)
    for failures, now in enumerate((0.0, 5.0, 15.0, 35.0), start=1):
        assert schedule.next_due(now) == key
        schedule.done(key, False, now)
        assert schedule.next_due(now + 0.1) is None
        assert schedule.wakeup(now) == min(5.0 * 2 ** (failures - 1), 20.0)
    schedule.peers_appeared(36.0)  # a new peer: try now
    assert schedule.next_due(36.0) == key
    schedule.done(key, True, 36.0)
    schedule.peers_appeared(37.0)  # provided: stays on its republish time
    assert schedule.next_due(37.0) is None


def test_keys_no_longer_held_are_forgotten() -> None:
    schedule = ProvideSchedule(interval=0.0)
    schedule.want(keys(2), 0.0)
    key = schedule.next_due(0.0)
    assert key is not None
    schedule.want(keys(1), 1.0)
    schedule.done(key, True, 1.0)  # a key forgotten meanwhile: no error
    assert schedule.summary()["keys"] == 1
    assert schedule.want([], 2.0) == 0 and schedule.wakeup(2.0) == float("inf")


# --- values -------------------------------------------------------------------------------


def test_the_validator_refuses_every_value_namespace() -> None:
    validator = value_validator()
    assert validator.strict_validation
    for key in ("/pk/x", "/ipns/x", "/loomdb/x", "/stranger/x", "plain"):
        assert refuses_value(validator, key, b"v"), key


def test_the_dht_keeps_its_validator_strict() -> None:
    """py-libp2p's KadDHT resets the validator's strict flag to its own argument."""
    host = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], gossip=False)
    dht = NodeDHT(host.host)
    assert dht.kad.validator is not None and dht.kad.validator.strict_validation
    assert refuses_value(dht.kad.validator, "/stranger/x", b"v")  # type: ignore[arg-type]
    assert dht.info()["mode"] == "server"
    assert NodeDHT(host.host, server=False).info()["mode"] == "client"


# --- providers ------------------------------------------------------------------------------


def test_providers_are_listed_once_with_their_addresses_merged() -> None:
    me, a, b = peer_id(), peer_id(), peer_id()
    found = [
        PeerInfo(a, [Multiaddr(f"/ip4/10.0.0.1/tcp/1/p2p/{a}")]),
        PeerInfo(me, [Multiaddr("/ip4/10.0.0.9/tcp/9")]),
        PeerInfo(b, [Multiaddr("/ip4/0.0.0.0/tcp/2")]),  # listen-anywhere only: dropped
        PeerInfo(a, [Multiaddr("/ip4/10.0.0.1/tcp/1"), Multiaddr("/ip6/::1/tcp/3")]),
    ]
    merged = merge_providers(found, exclude=[me])
    assert [(p.peer_id, [str(x) for x in p.addrs]) for p in merged] == [
        (a, ["/ip4/10.0.0.1/tcp/1", "/ip6/::1/tcp/3"])
    ]
    many = [PeerInfo(peer_id(), [Multiaddr("/ip4/10.0.0.1/tcp/1")]) for _ in range(5)]
    assert len(merge_providers(many, limit=3)) == 3


def test_usable_addresses_drop_other_peers_ids_and_keep_relayed_ones() -> None:
    a, other, relay = peer_id(), peer_id(), peer_id()
    circuit = f"/ip4/10.0.0.5/tcp/4/p2p/{relay}/p2p-circuit"
    info = PeerInfo(
        a,
        [
            Multiaddr(f"/ip4/10.0.0.1/tcp/1/p2p/{other}"),
            Multiaddr(circuit),
            Multiaddr("/ip6/::/tcp/2"),
            Multiaddr("/ip4/10.0.0.2/tcp/2"),
        ],
    )
    assert [str(x) for x in usable_addrs(info)] == [circuit, "/ip4/10.0.0.2/tcp/2"]


# --- logging --------------------------------------------------------------------------------


def record(level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(DHT_LOGGERS[0], level, __file__, 1, msg, args, None)


def test_empty_and_per_peer_warnings_are_demoted_and_real_ones_kept() -> None:
    quiet = QuietDHTNoise()
    logging.getLogger(DHT_LOGGERS[0]).setLevel(logging.NOTSET)
    empty = record(logging.WARNING, "Failed to read DHT message from stream: %s", "")
    assert not quiet.filter(empty) and empty.levelname == "DEBUG"
    peer = record(logging.WARNING, "Error sending ADD_PROVIDER to 12D3KooWX: failed to open")
    assert not quiet.filter(peer)
    assert quiet.filter(record(logging.WARNING, "Failed to read DHT message: %s", "reset"))
    assert quiet.filter(record(logging.WARNING, "DHT message too large (max %s bytes)", 4))
    assert quiet.filter(record(logging.ERROR, "Error handling DHT stream: %s", ""))
    assert quiet.filter(record(logging.INFO, "Stream closed: "))
    refused = (
        "Failed to open stream to peer 12D3KooWX:\n  Error: protocols not supported: tried"
        " ['/ipfs/kad/1.0.0'], timeout=10s. Last error: protocol not supported: /ipfs/kad/1.0.0,"
        " response='na'\n  Protocols: ['/ipfs/kad/1.0.0']\n  Timeout: 30s"
    )
    host = logging.LogRecord(HOST_LOGGER, logging.ERROR, __file__, 1, refused, None, None)
    assert not quiet.filter(host)
    other = refused.replace("['/ipfs/kad/1.0.0']\n", "['/loomdb/sync/1.0.0']\n")
    assert quiet.filter(
        logging.LogRecord(HOST_LOGGER, logging.ERROR, __file__, 1, other, None, None)
    )
    quiet_dht_logs()
    quiet_dht_logs()  # once per logger
    for name in (*DHT_LOGGERS, HOST_LOGGER):
        assert sum(isinstance(f, QuietDHTNoise) for f in logging.getLogger(name).filters) == 1


def test_the_filter_hides_an_empty_warning_from_a_handler(caplog: pytest.LogCaptureFixture) -> None:
    quiet_dht_logs()
    logger = logging.getLogger("libp2p.kad_dht.kad_dht")
    with caplog.at_level(logging.WARNING, logger="libp2p.kad_dht.kad_dht"):
        logger.warning("Failed to read DHT message from stream: %s", "")
        logger.warning("Failed to read DHT message from stream: %s", "connection reset")
    assert [r.getMessage() for r in caplog.records] == [
        "Failed to read DHT message from stream: connection reset"
    ]


# --- real hosts ---------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "trio"  # py-libp2p is trio-only


@asynccontextmanager
async def dht_host() -> AsyncIterator[tuple[P2PHost, NodeDHT]]:
    host = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], gossip=False)
    async with host.run():
        dht = NodeDHT(host.host)
        async with dht.run():
            yield host, dht


async def until(check: Callable[[], object], what: str) -> None:
    with trio.fail_after(WAIT):
        while True:
            value = check()
            if hasattr(value, "__await__"):
                value = await value  # type: ignore[misc]
            if value:
                return
            await trio.sleep(0.05)


@pytest.mark.anyio
async def test_a_provider_is_found_once_through_a_third_host() -> None:
    async with dht_host() as (a, a_dht), dht_host() as (b, b_dht), dht_host() as (c, c_dht):
        await a.connect(b.listen_addrs()[0])
        await c.connect(b.listen_addrs()[0])
        await until(lambda: b_dht.kad.get_routing_table_size() >= 2, "b's routing table")
        key = collection_key("main", "notes")
        assert await a_dht.provide(key)
        assert await c_dht.provide(key)  # c provides it too: it still asks the network
        assert not a_dht.kad.provider_store.providing_keys  # no unpaced 22-hour republish
        found = await c_dht.find_providers(key)
        assert [p.peer_id for p in found] == [a.host.get_id()]  # once; c itself left out
        assert found[0].addrs and all("/p2p/" not in str(x) for x in found[0].addrs)
        assert await c_dht.find_providers(space_key("nothing-here")) == []
        assert c_dht.counters.lookups == 2 and c_dht.counters.lookup_failures == 1
        assert c_dht.counters.bootstraps == 1


@asynccontextmanager
async def client_host() -> AsyncIterator[tuple[P2PHost, NodeDHT]]:
    host = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], gossip=False)
    async with host.run():
        dht = NodeDHT(host.host, server=False)
        async with dht.run():
            yield host, dht


@pytest.mark.anyio
async def test_lookups_ask_dht_servers_only() -> None:
    async with dht_host() as (a, _), client_host() as (b, _), dht_host() as (c, c_dht):
        await c.connect(a.listen_addrs()[0])
        await c.connect(b.listen_addrs()[0])
        store = c.host.get_peerstore()
        a_id, b_id = a.host.get_id(), b.host.get_id()
        await until(lambda: store.get_protocols(a_id) and store.get_protocols(b_id), "identify")
        assert c_dht.kad.may_serve(a_id) and not c_dht.kad.may_serve(b_id)
        closest = await c_dht.kad.peer_routing.find_closest_peers_network(space_key("x"))
        assert a_id in closest and b_id not in closest
        assert await c_dht.provide(space_key("x"))  # to a; b is never asked
        # a peer known only at a listen-anywhere address is not dialled; elsewhere it is
        nowhere, somewhere = peer_id(), peer_id()
        store.add_addrs(nowhere, [Multiaddr("/ip4/0.0.0.0/tcp/4101")], 60)
        store.add_addrs(somewhere, [Multiaddr("/ip4/127.0.0.1/tcp/4101")], 60)
        assert not c_dht.kad.may_serve(nowhere) and c_dht.kad.may_serve(somewhere)
        # a peer disconnected on request is left alone until dialled again
        c_dht.kad.hands_off = c.hands_off
        assert await c.disconnect(a_id.to_base58())
        await until(lambda: a_id not in c.host.get_network().connections, "a gone")
        assert a_id in c.hands_off and not c_dht.kad.may_serve(a_id)
        assert a_id not in await c_dht.kad.peer_routing.find_closest_peers_network(space_key("x"))
        await c.connect(a.listen_addrs()[0])
        assert a_id not in c.hands_off and c_dht.kad.may_serve(a_id)


@dataclass
class Node:
    user: SigningKey
    store: GuardedStore
    host: P2PHost
    dht: NodeDHT
    replication: PassiveReplication
    providers: Providers

    def entry(self, doc: str, *parents: Entry) -> Entry:
        return build_entry(
            author=self.user,
            space="main",
            collection="notes",
            document=doc,
            kind="change" if parents else "create",
            payload=b"{}",
            created_at=1 + sum(p.created_at for p in parents),
            parents=list(parents),
            key=KEY,
        )

    async def has(self, entry: Entry) -> bool:
        [held] = await self.store.has_entries([entry.cid])
        return held


@asynccontextmanager
async def node() -> AsyncIterator[Node]:
    user = SigningKey.generate()
    base = MemoryStore()
    feed = EntryFeed(base, user.public_key)
    await feed.start()
    store = GuardedStore(base, DirectoryBook(), on_stored=feed.stored)
    host = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], connect_timeout=WAIT)
    server = StoreServer(store)
    host.serve_sync(lambda p: server.handler_for(PeerPrincipal(None, peer_id=p)))
    subscriptions = Subscriptions()
    async with host.run():
        dht = NodeDHT(host.host)
        providers = Providers(dht, host, store, feed, subscriptions)
        replication = PassiveReplication(
            host, store, feed, subscriptions, store.check, providers=providers
        )
        async with dht.run(), trio.open_nursery() as nursery:
            nursery.start_soon(replication.run)
            nursery.start_soon(providers.run)
            yield Node(user, store, host, dht, replication, providers)
            nursery.cancel_scope.cancel()


@pytest.mark.anyio
async def test_missing_history_no_peer_at_hand_has_is_fetched_from_a_provider() -> None:
    async with node() as a, node() as b, node() as c:
        history = [a.entry("n1")]
        for _ in range(3):
            history.append(a.entry("n1", history[-1]))
        await a.store.put_entries(history)
        await a.host.connect(b.host.listen_addrs()[0])
        await until(lambda: a.providers.info()["keys_provided"] == 2, "a provides")
        await c.host.connect(b.host.listen_addrs()[0])
        # c holds the latest entry without its parents; b (its one peer) has nothing
        latest = a.entry("n1", history[-1])
        await c.store.put_entries([latest])
        c.replication._fetch(("main", "notes", "n1"), None, "")
        for old in history:
            await until(lambda e=old: c.has(e), "c fetches the history")
        await until(lambda: c.replication.counters["fetched"] == 1, "the fetch is counted")
        assert c.dht.counters.lookups >= 1  # (its FIND_NODE may have dialled a already)
        assert a.host.host.get_id() in c.host.host.get_network().connections
        assert not await b.has(history[0])  # b was asked, had nothing, and stays so


# --- options ----------------------------------------------------------------------------


def test_the_dht_is_on_by_default_and_no_dht_turns_it_off() -> None:
    def settings(*argv: str) -> P2PSettings | None:
        args = build_parser().parse_args(["start", *argv])
        return p2p_settings(
            args.p2p_addr,
            args.no_p2p,
            args.peers,
            None,
            start_nat_settings(args),
            dht=not args.no_dht,
        )

    on = settings()
    assert on is not None and on.dht and on.dht_server
    off = settings("--no-dht")
    assert off is not None and not off.dht
    relayed = settings("--relays", "/ip4/10.0.0.1/tcp/1/p2p/" + str(peer_id()))
    assert relayed is not None and relayed.dht and not relayed.dht_server  # behind a NAT
    assert settings("--no-p2p", "--no-dht") is None


# --- the dial bound (a fake DHT and host: which providers are dialled, in what order) ---------


class FakeNetwork:
    def __init__(self) -> None:
        self.connections: dict[ID, object] = {}


class FakeHost:
    """``P2PHost``'s surface that :class:`Providers` uses: dials succeed except to
    ``down``."""

    def __init__(self, down: set[str]) -> None:
        self.network = FakeNetwork()
        self.host = self
        self.down = down
        self.dialled: list[str] = []

    def get_network(self) -> FakeNetwork:
        return self.network

    async def connect(self, addr: str) -> str:
        peer = addr.rsplit("/", 1)[1]
        self.dialled.append(peer)
        if peer in self.down:
            raise UnreachableError(f"cannot reach {peer}")
        self.network.connections[ID.from_base58(peer)] = object()
        return peer


class FakeDHT:
    def __init__(self, answers: dict[bytes, list[PeerInfo]]) -> None:
        self.answers = answers
        self.asked: list[tuple[bytes, int]] = []

    async def find_providers(self, key: bytes, limit: int) -> list[PeerInfo]:
        self.asked.append((key, limit))
        return self.answers.get(key, [])[:limit]


def provider() -> PeerInfo:
    return PeerInfo(peer_id(), [Multiaddr("/ip4/10.0.0.1/tcp/1")])


@dataclass
class Report:
    pulled: int


@pytest.mark.anyio
async def test_at_most_max_dials_providers_are_dialled_collection_first_then_space() -> None:
    coll = [provider() for _ in range(3)]
    space = [coll[0], *(provider() for _ in range(4))]  # coll[0] provides both: once
    dht = FakeDHT({collection_key("main", "notes"): coll, space_key("main"): space})
    names = [p.peer_id.to_base58() for p in [*coll, *space[1:]]]
    host = FakeHost(down={names[1]})
    providers = Providers(dht, host, None, None, None, max_dials=5)  # type: ignore[arg-type]
    pulled: list[str] = []

    async def pull(peer: str) -> Report:
        pulled.append(peer)
        return Report(0)

    async def never() -> bool:
        return False

    skip = {names[2]}  # tried already (a connected peer)
    out = await providers.pull_from_providers("main", "notes", pull, skip=skip, done=never)
    assert [o["peer_id"] for o in out] == [names[0], names[1], names[3], names[4], names[5]]
    assert all(o["via"] == "dht" for o in out) and "error" in out[1] and "error" not in out[0]
    assert host.dialled == [names[0], names[1], names[3], names[4], names[5]]  # 5, not 6
    assert pulled == [names[0], names[3], names[4], names[5]]
    assert (
        providers.info()["provider_dials"] == 5 and providers.info()["provider_dial_failures"] == 1
    )
    assert [limit for _, limit in dht.asked] == [6, 8]  # max_dials + the peers tried so far

    # a success with nothing more to wait for ends it at the first provider
    host.dialled.clear()
    first = await providers.pull_from_providers("main", "notes", pull)
    assert [o["peer_id"] for o in first] == [names[0]] and host.dialled == []  # connected
