"""What each principal reaches through a node's store server: ``StoreServer(store,
access=...)`` with one handler per principal (``handler_for``), served on the
memory network and driven by ``RemoteStore`` and ``sync`` as a peer would."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from loomdb.entries.cid import CID
from loomdb.entries.entry import Entry, build_entry
from loomdb.errors import ForbiddenError, RemoteError
from loomdb.node.home import NodeHome
from loomdb.stores import MemoryStore
from loomdb.stores.base import ContentAddressedStore, PutStatus, SetKey
from loomdb.stores.remote import RemoteStore
from loomdb.stores.server import StoreServer
from loomdb.sync.reconcile import ReconcileRequest
from loomdb.sync.replicate import SyncScope, narrow_sets, sync
from loomdb.transports.memory import MemoryNetwork
from loomdb.trust.access import Access
from loomdb.trust.admin import NodeTrust
from loomdb.trust.book import DirectoryBook
from loomdb.trust.guard import GuardedStore
from loomdb.trust.principal import ANONYMOUS, Principal
from loomdb.trust.spaces import ALL, DIRECTORY_COLLECTION

pytestmark = pytest.mark.anyio


def make_node(path: Path, *, relay: bool = False) -> NodeTrust:
    home = NodeHome.open(path, environ={}, relay=relay)
    book = DirectoryBook()
    return NodeTrust(home, GuardedStore(MemoryStore(), book), book)


async def cids_of(store: ContentAddressedStore) -> set[CID]:
    out: set[CID] = set()
    after = 0
    while batch := await store.scan(after, 1000):
        out.update(r.entry.cid for r in batch)
        after = batch[-1].seq
    return out


@dataclass
class World:
    """Node A serves its store; B reads notes, R relays, C was revoked."""

    a: NodeTrust
    b: NodeTrust
    relay: NodeTrust
    c: NodeTrust
    space: str
    notes: list[Entry]
    todo: list[Entry]
    open: list[Entry]
    net: MemoryNetwork

    def remote(self, who: NodeTrust | None) -> RemoteStore:
        name = "anonymous" if who is None else who.user_id
        return RemoteStore(self.net.channel("client", name), timeout=5.0, retries=0)

    def directory(self) -> set[CID]:
        return {e.cid for e in self.a.book.entries(self.space)}


async def write(a: NodeTrust, space: str, collection: str, n: int) -> list[Entry]:
    made: list[Entry] = []
    at = 1 + max(e.created_at for e in a.book.entries(space))
    for i in range(n):
        made.append(
            build_entry(
                author=a.home.user.signing_key,
                space=space,
                collection=collection,
                document=f"{collection}-{i}",
                kind="create",
                payload=b"secret %d" % i,
                created_at=at + i,
                key=await a.key_for(space, collection),
            )
        )
    results = await a.store.put_entries(made)
    assert [r.status for r in results] == [PutStatus.ACCEPTED] * n
    return made


@pytest.fixture
async def world(tmp_path: Path) -> World:
    a, b, c = (make_node(tmp_path / n) for n in "abc")
    relay = make_node(tmp_path / "relay", relay=True)
    space = (await a.create_space("team"))["space"]
    await b.join((await a.add_user(space, b.card(), ["read"], "notes"))["invitation"])
    await relay.join((await a.add_user(space, relay.card(), ["relay"]))["invitation"])
    await c.join((await a.add_user(space, c.card(), ["read"], "notes"))["invitation"])
    notes = await write(a, space, "notes", 3)
    todo = await write(a, space, "todo", 2)
    await a.revoke_user(space, c.user_id)
    open_entries = [
        build_entry(
            author=a.home.user.signing_key,
            space="main",
            collection="notes",
            document="pub",
            kind="create",
            payload=b"open",
            created_at=1,
            key=a.home.default_key,
        )
    ]
    await a.store.put_entries(open_entries)
    server = StoreServer(a.store, access=lambda p: Access(a.book, p))
    net = MemoryNetwork()
    net.serve("anonymous", server.handler_for(ANONYMOUS))
    for who in (b, relay, c):
        net.serve(who.user_id, server.handler_for(Principal(who.user_id)))
    return World(a, b, relay, c, space, notes, todo, open_entries, net)


# --- anonymous -------------------------------------------------------------------------------


async def test_anonymous_reaches_open_spaces_only(world: World) -> None:
    remote = world.remote(None)
    space = world.space
    assert await remote.access() == {"user": None, "open_spaces": True, "spaces": {}}
    assert await remote.list_spaces() == ["main"]
    assert await remote.list_collections(space) == []
    with pytest.raises(RemoteError) as caught:
        await remote.reconcile([ReconcileRequest(SetKey(space))])
    assert caught.value.remote_code == "trust.forbidden"
    for coll in ("notes", DIRECTORY_COLLECTION):
        with pytest.raises(RemoteError, match="anonymous") as caught:
            await remote.reconcile([ReconcileRequest(SetKey(space, coll))])
        assert caught.value.remote_code == "trust.forbidden"
    with pytest.raises(RemoteError) as caught:
        await remote.list_documents(space, "notes")
    assert caught.value.remote_code == "trust.forbidden"
    managed = world.notes[0].cid
    assert await remote.get_entries([managed]) == [None]
    assert await remote.has_entries([managed]) == [False]
    assert await remote.get_metadata([managed]) == [None]
    assert {r.entry.cid for r in await remote.scan(0)} == {e.cid for e in world.open}
    (got,) = await remote.get_entries([world.open[0].cid])
    assert got is not None and got.cid == world.open[0].cid


async def test_anonymous_sync_of_a_managed_space_is_forbidden(world: World) -> None:
    local = GuardedStore(MemoryStore(), DirectoryBook())
    with pytest.raises(ForbiddenError, match="anonymous"):
        await sync(local, world.remote(None), SyncScope(world.space))
    assert await local.count() == 0
    report = await sync(local, world.remote(None), SyncScope("main"))
    assert report.pulled == 1
    assert await cids_of(local) == {world.open[0].cid}


async def test_an_anonymous_push_to_a_managed_space_is_forbidden(world: World) -> None:
    fresh = build_entry(
        author=world.a.home.user.signing_key,  # even the root's own entry
        space=world.space,
        collection="notes",
        document="x",
        kind="create",
        payload=b"x",
        created_at=1 << 60,
    )
    (result,) = await world.remote(None).put_entries([fresh])
    assert result.status is PutStatus.REJECTED
    assert result.error is not None and result.error.code == "trust.forbidden"


# --- a member with read on one collection ------------------------------------------------------


async def test_access_op_describes_the_members_roles(world: World) -> None:
    remote = world.remote(world.b)
    assert await remote.access() == {
        "user": world.b.user_id,
        "open_spaces": True,
        "spaces": {world.space: {"notes": ["read"]}},
    }
    assert sorted(await remote.list_spaces()) == sorted(["main", world.space])
    assert sorted(await remote.list_collections(world.space)) == [DIRECTORY_COLLECTION, "notes"]


async def test_a_member_pulls_its_collection_and_the_directory_only(world: World) -> None:
    local = world.b.store
    assert narrow_sets([SetKey(world.space)], await world.remote(world.b).access()) == [
        SetKey(world.space, "notes")
    ]
    had = await cids_of(local)
    report = await sync(local, world.remote(world.b), SyncScope(world.space))
    assert not report.rejected
    expected = world.directory() | {e.cid for e in world.notes}
    assert await cids_of(local) == expected
    assert report.pulled == len(expected - had) > len(world.notes)
    assert report.pushed == 0
    assert not ({e.cid for e in world.todo} & await cids_of(local))
    # B's book took the directory entries it lacked (C's revocation among them)
    assert world.c.user_id in world.b.book.state(world.space).revoked  # type: ignore[union-attr]
    # and nothing else is reachable directly either
    remote = world.remote(world.b)
    todo = world.todo[0].cid
    assert await remote.get_entries([todo]) == [None]
    with pytest.raises(RemoteError) as caught:
        await remote.reconcile([ReconcileRequest(SetKey(world.space))])
    assert caught.value.remote_code == "trust.forbidden"
    with pytest.raises(RemoteError):
        await remote.reconcile([ReconcileRequest(SetKey(world.space, "todo"))])
    scanned = {r.entry.cid for r in await remote.scan(0)}
    assert scanned == expected | {world.open[0].cid}


async def test_a_member_cannot_sync_a_collection_it_cannot_read(world: World) -> None:
    local = world.b.store
    before = await cids_of(local)
    with pytest.raises(ForbiddenError, match=world.b.user_id):
        await sync(local, world.remote(world.b), SyncScope(world.space, ("todo",)))
    assert await cids_of(local) == before


async def test_a_members_push_outside_its_roles_is_refused_per_entry(world: World) -> None:
    b = world.b
    at = 1 + max(e.created_at for e in world.a.book.entries(world.space))

    def made(collection: str, document: str) -> Entry:
        return build_entry(
            author=b.home.user.signing_key,
            space=world.space,
            collection=collection,
            document=document,
            kind="create",
            payload=b"b",
            created_at=at,
        )

    no_role = made("todo", "t")  # no role on todo at all: refused by the access layer
    read_only = made("notes", "n")  # read on notes, no write: refused by the guard
    forwarded = world.todo[0]  # someone else's entry to a collection B has no role on
    results = await world.remote(b).put_entries([no_role, read_only, forwarded])
    assert [(r.status, r.error.code if r.error else None) for r in results] == [
        (PutStatus.REJECTED, "trust.forbidden"),
        (PutStatus.REJECTED, "trust.forbidden"),
        (PutStatus.REJECTED, "trust.forbidden"),
    ]
    assert await world.a.store.has_entries([no_role.cid, read_only.cid]) == [False, False]


# --- a relay ----------------------------------------------------------------------------------


async def test_a_relay_pulls_everything_and_holds_no_key(world: World) -> None:
    relay = world.relay
    state = world.a.book.state(world.space)
    assert state is not None
    assert state.roles_now(relay.user_id) == {ALL: frozenset({"relay"})}
    assert all(relay.user_id not in k.grants for k in state.keys.values())
    report = await sync(relay.store, world.remote(relay), SyncScope(world.space))
    assert not report.rejected
    expected = world.directory() | {e.cid for e in world.notes + world.todo}
    assert await cids_of(relay.store) == expected
    assert relay.home.keyring.named_keys == {}
    assert relay.refresh_keys() == []
    assert relay.home.keyring.named_keys == {} and relay.home.keyring.default_key is None


# --- a revoked user ---------------------------------------------------------------------------


async def test_a_revoked_user_gets_nothing(world: World) -> None:
    c = world.c
    remote = world.remote(c)
    assert (await remote.access())["spaces"] == {}  # type: ignore[index]
    assert await remote.list_spaces() == ["main"]
    assert await remote.list_collections(world.space) == []
    for key in (SetKey(world.space), SetKey(world.space, "notes")):
        with pytest.raises(RemoteError) as caught:
            await remote.reconcile([ReconcileRequest(key)])
        assert caught.value.remote_code == "trust.forbidden"
    assert await remote.get_entries([e.cid for e in world.notes]) == [None] * len(world.notes)
    before = await cids_of(c.store)
    with pytest.raises(ForbiddenError):
        await sync(c.store, remote, SyncScope(world.space))
    assert await cids_of(c.store) == before
