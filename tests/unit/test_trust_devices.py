"""A libp2p peer's reach: the user whose devices list its Peer ID, space by space
(:mod:`loomdb.trust.devices`), through a real store server on the memory network."""

from __future__ import annotations

from pathlib import Path

import pytest

from loomdb.errors import RemoteError
from loomdb.identity.keys import SigningKey
from loomdb.identity.peer_id import peer_id_from_public_key
from loomdb.stores.base import SetKey
from loomdb.stores.remote import RemoteStore
from loomdb.stores.server import StoreServer
from loomdb.sync.reconcile import ReconcileRequest
from loomdb.transports.memory import MemoryNetwork
from loomdb.trust.access import Access
from loomdb.trust.devices import DeviceAccess, PeerPrincipal, access_for, device_owner
from loomdb.trust.directory import UserRecord
from loomdb.trust.principal import Principal
from tests.unit.test_trust_access import make_node, write

pytestmark = pytest.mark.anyio


async def test_a_peer_acts_as_the_user_whose_devices_list_it_in_that_space_only(
    tmp_path: Path,
) -> None:
    a, b, m = (make_node(tmp_path / n) for n in "abm")
    team = (await a.create_space("team"))["space"]
    await b.join((await a.add_user(team, b.card(), ["read"], "notes"))["invitation"])
    notes = await write(a, team, "notes", 2)
    # m administers a space of its own and lists b's user there with a device of m's, x
    other = (await m.create_space("other"))["space"]
    x = peer_id_from_public_key(SigningKey.generate().public_key)
    forged = UserRecord(b.user_id, b.home.user.x25519_public_key, (x,), "")
    role = {"op": "role", "user": b.user_id, "coll": "*", "roles": ["read"]}
    await m._append(other, [{"op": "user", "user": forged.to_wire()}, role])
    await a.store.put_entries(m.book.entries(other))  # a holds m's space too
    assert a.book.state(other) is not None

    server = StoreServer(a.store, access=lambda p: access_for(a.book, p))
    net = MemoryNetwork()
    for peer in (b.home.peer_id, x):
        net.serve(peer, server.handler_for(PeerPrincipal(None, peer_id=peer)))

    def remote(peer: str) -> RemoteStore:
        return RemoteStore(net.channel("client", peer), timeout=5.0, retries=0)

    as_b = remote(b.home.peer_id)
    reach = await as_b.access()
    assert reach is not None
    assert reach["user"] == b.user_id and reach["peer_id"] == b.home.peer_id
    assert reach["spaces"] == {team: {"notes": ["read"]}}
    got = await as_b.get_entries([e.cid for e in notes])
    assert [g is not None and g.cid for g in got] == [e.cid for e in notes]

    # x is b's device in m's space only: there it acts as b, in team it is anonymous
    as_x = remote(x)
    assert await as_x.access() == {
        "user": b.user_id,
        "peer_id": x,
        "open_spaces": True,
        "spaces": {other: {"*": ["read"]}},
    }
    assert await as_x.get_entries([notes[0].cid]) == [None]
    with pytest.raises(RemoteError) as caught:
        await as_x.reconcile([ReconcileRequest(SetKey(team, "notes"))])
    assert caught.value.remote_code == "trust.forbidden"

    # revoked: nothing, from the next request on
    await a.revoke_user(team, b.user_id)
    assert await as_b.get_entries([notes[0].cid]) == [None]
    assert (await remote(b.home.peer_id).access() or {})["spaces"] == {}  # asked anew


async def test_a_device_listed_for_two_users_of_a_space_binds_to_neither(
    tmp_path: Path,
) -> None:
    a, b = make_node(tmp_path / "a"), make_node(tmp_path / "b")
    space = (await a.create_space("team"))["space"]
    state = a.book.state(space)
    assert state is not None
    peer = peer_id_from_public_key(SigningKey.generate().public_key)
    one = UserRecord(a.user_id, b"\x01" * 32, (peer,), "")
    two = UserRecord(b.user_id, b"\x02" * 32, (peer,), "")
    state.users = {one.user_id: one}
    assert device_owner(state, peer) == a.user_id
    state.users = {one.user_id: one, two.user_id: two}
    assert device_owner(state, peer) is None


def test_access_for_picks_by_principal(tmp_path: Path) -> None:
    book = make_node(tmp_path / "a").book
    assert isinstance(access_for(book, PeerPrincipal(None, peer_id="12D3KooWx")), DeviceAccess)
    assert type(access_for(book, Principal("z6Mkuser"))) is Access
