"""``NodeTrust`` administration in memory: spaces, users, roles, revocation, key
rotation, invitations and cards; and the HPKE key grants (checked against pyhpke,
an independent RFC 9180 implementation)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey, OpenError

from loomdb.entries.entry import DIRECTORY_KIND, build_entry
from loomdb.errors import (
    ConflictError,
    DecryptionError,
    ForbiddenError,
    InvalidKeyError,
    MissingKeyError,
    NotFoundError,
    NotMemberError,
    ValidationError,
)
from loomdb.identity.keys import NamedKey
from loomdb.identity.user import UserIdentity
from loomdb.node.home import NodeHome
from loomdb.stores import MemoryStore
from loomdb.trust.admin import (
    CARD_PREFIX,
    INVITE_PREFIX,
    NodeTrust,
    decode_card,
    decode_invitation,
    encode_card,
)
from loomdb.trust.book import DirectoryBook
from loomdb.trust.directory import DirectoryState, KeyVersion, UserRecord, encode_op
from loomdb.trust.grants import grant_info, unwrap_key, wrap_key
from loomdb.trust.guard import GuardedStore
from loomdb.trust.spaces import (
    ALL,
    DIRECTORY_COLLECTION,
    DIRECTORY_DOCUMENT,
    key_name,
    make_key_id,
)
from tests.support import signing_key

ANYIO = pytest.mark.anyio

MakeNode = Callable[[str], NodeTrust]


@pytest.fixture
def make_node(tmp_path: Path) -> MakeNode:
    def make(name: str) -> NodeTrust:
        home = NodeHome.open(tmp_path / name, environ={})
        book = DirectoryBook()
        return NodeTrust(home, GuardedStore(MemoryStore(), book), book)

    return make


def state_of(node: NodeTrust, space: str) -> DirectoryState:
    state = node.book.state(space)
    assert state is not None
    return state


def granted_keys(node: NodeTrust) -> set[str]:
    """The named keys of the node's keyring, its own default key aside."""
    return set(node.home.keyring.named_keys) - {node.home.default_key.key_id}


def grants_to(state: DirectoryState, user: str) -> set[str]:
    return {k.kid for k in state.keys.values() if user in k.grants}


def current(state: DirectoryState, collection: str) -> KeyVersion:
    key = state.current_key(collection)
    assert key is not None
    return key


async def deliver(src: NodeTrust, dst: NodeTrust, space: str) -> None:
    """Give ``dst`` every directory entry ``src`` holds (what a sync would do)."""
    results = await dst.store.put_entries(src.book.entries(space))
    assert all(r.ok for r in results), [r.reason for r in results]


def pack_invitation(space: str, raws: list[bytes]) -> str:
    body = cbor2.dumps({"space": space, "entries": raws}, canonical=True)
    return INVITE_PREFIX + base64.urlsafe_b64encode(zlib.compress(body)).rstrip(b"=").decode()


# --- creating a space ---------------------------------------------------------------------------


@ANYIO
async def test_create_space_makes_the_root_an_admin_with_key_v1(make_node: MakeNode) -> None:
    a = make_node("a")
    info = await a.create_space("team")
    space = info["space"]
    assert space == f"team~{a.user_id}"
    assert info["admin"] is True and info["root"] == a.user_id
    assert info["roles"] == {ALL: ["admin", "read", "write"]}
    state = state_of(a, space)
    (key,) = state.keys.values()
    assert key.kid == make_key_id(space, "space", 1) == info["key"]
    assert set(key.grants) == {a.user_id}
    held = a.home.keyring.get_named_key(key.kid)
    assert held is not None
    assert unwrap_key(key.grants[a.user_id], space, key.kid, a.home.user).secret == held.secret
    assert await a.key_for(space, ALL) == held
    assert a.book.spaces() == [space]
    with pytest.raises(ConflictError):
        await a.create_space("team")


@ANYIO
async def test_the_keyring_keeps_new_keys_on_disk(make_node: MakeNode, tmp_path: Path) -> None:
    a = make_node("a")
    space = (await a.create_space("team"))["space"]
    reopened = NodeHome.open(tmp_path / "a", environ={})
    assert set(reopened.keyring.named_keys) == {
        reopened.default_key.key_id,
        make_key_id(space, "space", 1),
    }


# --- adding users and joining -----------------------------------------------------------------


@ANYIO
async def test_add_user_with_read_on_one_collection_grants_only_its_key(
    make_node: MakeNode,
) -> None:
    a, b = make_node("a"), make_node("b")
    space = (await a.create_space("team"))["space"]
    answer = await a.add_user(space, b.card(), ["read"], "notes", label="Bob")
    assert answer["user"] == b.user_id
    state = state_of(a, space)
    assert state.users[b.user_id].label == "Bob"
    assert state.roles_now(b.user_id) == {"notes": frozenset({"read"})}
    notes = current(state, "notes")
    assert notes.kid == make_key_id(space, key_name("notes"), 1)
    assert notes.collection == "notes"
    assert set(notes.grants) == {a.user_id, b.user_id}
    assert b.user_id not in current(state, ALL).grants
    assert grants_to(state, b.user_id) == {notes.kid}
    # the invitation carries exactly the directory
    inv_space, entries = decode_invitation(answer["invitation"])
    assert inv_space == space
    assert {e.cid for e in entries} == {e.cid for e in a.book.entries(space)}


@ANYIO
async def test_join_gives_the_joiner_exactly_the_keys_granted_to_it(make_node: MakeNode) -> None:
    a, b = make_node("a"), make_node("b")
    space = (await a.create_space("team"))["space"]
    inv = (await a.add_user(space, b.card(), ["read", "write"], "notes"))["invitation"]
    info = await b.join(inv)
    assert info["space"] == space and info["admin"] is False
    assert info["roles"] == {"notes": ["read", "write"]}
    state = state_of(b, space)
    assert granted_keys(b) == grants_to(state, b.user_id) == {current(state, "notes").kid}
    assert await b.key_for(space, "notes") == await a.key_for(space, "notes")
    with pytest.raises(MissingKeyError, match="no key"):
        await b.key_for(space, "other")  # the space key was not granted
    assert b.book.spaces() == [space]
    theirs = state_of(a, space)
    assert (state.users, state.roles, state.keys, state.applied) == (
        theirs.users,
        theirs.roles,
        theirs.keys,
        theirs.applied,
    )
    assert await b.join(inv) == info  # joining again changes nothing


@ANYIO
async def test_a_tampered_invitation_is_refused(make_node: MakeNode) -> None:
    a, b = make_node("a"), make_node("b")
    space = (await a.create_space("team"))["space"]
    inv = (await a.add_user(space, b.card(), ["read"], "notes"))["invitation"]
    _, entries = decode_invitation(inv)
    raws = [e.raw for e in entries]
    assert decode_invitation(pack_invitation(space, raws))[1] == entries  # the packing is right
    for i in range(len(raws)):
        for at in (len(raws[i]) // 3, len(raws[i]) // 2, len(raws[i]) - 1):
            bad = bytearray(raws[i])
            bad[at] ^= 0x01
            tampered = pack_invitation(space, [*raws[:i], bytes(bad), *raws[i + 1 :]])
            with pytest.raises(ValidationError):
                await b.join(tampered)
    assert b.book.state(space) is None
    assert granted_keys(b) == set()


@ANYIO
async def test_an_invitation_with_a_forged_directory_entry_is_refused(make_node: MakeNode) -> None:
    a, b = make_node("a"), make_node("b")
    space = (await a.create_space("team"))["space"]
    inv = (await a.add_user(space, b.card(), ["read"], "notes"))["invitation"]
    _, entries = decode_invitation(inv)
    # validly signed by B, but B is no admin: it tries to make itself one
    forged = build_entry(
        author=b.home.user.signing_key,
        space=space,
        collection=DIRECTORY_COLLECTION,
        document=DIRECTORY_DOCUMENT,
        kind=DIRECTORY_KIND,
        payload=encode_op({"op": "role", "user": b.user_id, "coll": ALL, "roles": ["admin"]}),
        created_at=max(e.created_at for e in entries) + 1,
        parents=entries[-1:],
    )
    with pytest.raises(ValidationError, match="does not verify"):
        await b.join(pack_invitation(space, [*(e.raw for e in entries), forged.raw]))
    # an entry of another space, or a content entry, has no place in an invitation
    stray = build_entry(
        author=b.home.user.signing_key,
        space=space,
        collection="notes",
        document="d",
        kind="create",
        payload=b"x",
        created_at=1,
    )
    with pytest.raises(ValidationError, match="only"):
        decode_invitation(pack_invitation(space, [*(e.raw for e in entries), stray.raw]))
    with pytest.raises(ValidationError):
        decode_invitation(pack_invitation("other~" + a.user_id, [e.raw for e in entries]))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        INVITE_PREFIX,
        INVITE_PREFIX + "!!!!",
        INVITE_PREFIX + "é",
        INVITE_PREFIX + base64.urlsafe_b64encode(b"not zlib").decode(),
        INVITE_PREFIX + base64.urlsafe_b64encode(zlib.compress(b"\xff")).decode(),
        INVITE_PREFIX + base64.urlsafe_b64encode(zlib.compress(cbor2.dumps([1]))).decode(),
        INVITE_PREFIX
        + base64.urlsafe_b64encode(
            zlib.compress(cbor2.dumps({"space": "main", "entries": []}))
        ).decode(),
        INVITE_PREFIX
        + base64.urlsafe_b64encode(
            zlib.compress(cbor2.dumps({"space": "a~b", "entries": ["text"]}))
        ).decode(),
    ],
)
def test_junk_invitations_raise_validation_error(text: str) -> None:
    with pytest.raises(ValidationError):
        decode_invitation(text)


@ANYIO
async def test_a_cut_invitation_raises_validation_error(make_node: MakeNode) -> None:
    a, b = make_node("a"), make_node("b")
    space = (await a.create_space("team"))["space"]
    inv = (await a.add_user(space, b.card(), ["read"], "notes"))["invitation"]
    # (cutting only the last few characters loses just zlib's checksum: the body is
    # whole and its entries are signed, so that decodes, harmlessly)
    for cut in (len(inv) - 12, len(inv) - 40, len(inv) // 2, len(INVITE_PREFIX) + 3):
        with pytest.raises(ValidationError):
            await b.join(inv[:cut])


@ANYIO
async def test_an_invitation_that_does_not_list_the_joiner(make_node: MakeNode) -> None:
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    space = (await a.create_space("team"))["space"]
    inv = (await a.add_user(space, b.card(), ["read"], "notes"))["invitation"]
    with pytest.raises(NotMemberError):
        await c.join(inv)
    assert granted_keys(c) == set()


# --- cards ---------------------------------------------------------------------------------------


def test_a_card_round_trips(make_node: MakeNode) -> None:
    a = make_node("a")
    card = a.card()
    assert card.startswith(CARD_PREFIX)
    record = decode_card(card)
    assert record == a.record()
    assert record.user_id == a.user_id
    assert record.x25519 == a.home.user.x25519_public_key
    assert record.devices == (a.home.peer_id,)
    assert decode_card(f"  {card}\n") == record  # pasted with blanks around
    assert encode_card(record) == card


def _card_of(value: Any) -> str:
    return CARD_PREFIX + base64.urlsafe_b64encode(cbor2.dumps(value)).rstrip(b"=").decode()


_USER = UserIdentity(signing_key("card"), bytes(32))
_GOOD = UserRecord(_USER.user_id, _USER.x25519_public_key).to_wire()


@pytest.mark.parametrize(
    "card",
    [
        "",
        "loomdb-user2:abc",
        CARD_PREFIX,
        CARD_PREFIX + "@@@@",
        CARD_PREFIX + "ü",
        _card_of([1, 2]),
        _card_of({**_GOOD, "id": "z6Mknope"}),
        _card_of({**_GOOD, "x25519": b"short"}),
        _card_of({**_GOOD, "devices": "12D3KooW"}),
        _card_of({**_GOOD, "extra": 1}),
        _card_of({k: v for k, v in _GOOD.items() if k != "label"}),
        _card_of(_GOOD)[:-5],
        123,
        None,
    ],
)
def test_junk_cards_raise_validation_error(card: Any) -> None:
    with pytest.raises(ValidationError):
        decode_card(card)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_card_bodies_raise_only_validation_error(body: bytes) -> None:
    card = CARD_PREFIX + base64.urlsafe_b64encode(body).decode()
    with contextlib.suppress(ValidationError):
        decode_card(card)


# --- who may administer -------------------------------------------------------------------------


@ANYIO
async def test_a_non_admin_cannot_administer(make_node: MakeNode) -> None:
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    space = (await a.create_space("team"))["space"]
    await b.join((await a.add_user(space, b.card(), ["read", "write"], "notes"))["invitation"])
    await a.add_user(space, c.card(), ["read"], "notes")
    await deliver(a, b, space)
    before = {e.cid for e in b.book.entries(space)}
    with pytest.raises(ForbiddenError):
        await b.add_user(space, c.card(), ["read"], "notes")
    with pytest.raises(ForbiddenError):
        await b.grant_role(space, c.user_id, "write", "notes")
    with pytest.raises(ForbiddenError):
        await b.revoke_role(space, c.user_id, "read", "notes")
    with pytest.raises(ForbiddenError):
        await b.revoke_user(space, c.user_id)
    with pytest.raises(ForbiddenError):
        await b.rotate_key(space, "notes")
    assert {e.cid for e in b.book.entries(space)} == before
    with pytest.raises(NotFoundError):  # c's node never saw the space
        await c.add_user(space, b.card(), ["read"])


@ANYIO
async def test_bad_arguments(make_node: MakeNode) -> None:
    a, b = make_node("a"), make_node("b")
    space = (await a.create_space("team"))["space"]
    with pytest.raises(ValidationError):
        await a.add_user(space, b.card(), ["owner"])
    with pytest.raises(ValidationError):
        await a.add_user(space, b.card(), [])
    with pytest.raises(NotFoundError):
        await a.grant_role(space, b.user_id, "read")
    with pytest.raises(ValidationError):
        await a.revoke_user(space, a.user_id)  # the root
    with pytest.raises(ValidationError):
        await a.create_space("Bad Name")


# --- roles and revocation ----------------------------------------------------------------------


@ANYIO
async def test_grant_role(make_node: MakeNode) -> None:
    a, b = make_node("a"), make_node("b")
    space = (await a.create_space("team"))["space"]
    await a.add_user(space, b.card(), ["read"], "notes")
    answer = await a.grant_role(space, b.user_id, "write", "notes")
    assert answer["roles"] == {"notes": ["read", "write"]}
    # read on a new collection: a key of its own, granted to B
    await a.grant_role(space, b.user_id, "read", "todo")
    state = state_of(a, space)
    todo = current(state, "todo")
    assert todo.collection == "todo" and set(todo.grants) == {a.user_id, b.user_id}
    assert state.roles_now(b.user_id) == {
        "notes": frozenset({"read", "write"}),
        "todo": frozenset({"read"}),
    }
    # write only: no key is made or granted
    await a.grant_role(space, b.user_id, "write", "drafts")
    assert current(state_of(a, space), "drafts").collection == ALL
    assert b.user_id not in current(state_of(a, space), "drafts").grants


@ANYIO
async def test_revoke_user_rotates_every_key_it_held(make_node: MakeNode) -> None:
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    space = (await a.create_space("team"))["space"]
    await b.join((await a.add_user(space, b.card(), ["read", "write"]))["invitation"])
    # the notes key is made now, for every reader of notes: C and B (a reader of *)
    await c.join((await a.add_user(space, c.card(), ["read"], "notes"))["invitation"])
    held = grants_to(state_of(a, space), b.user_id)
    assert {k.split(".")[0] for k in held} == {"space", key_name("notes")}
    answer = await a.revoke_user(space, b.user_id)
    assert sorted(answer["rotated"]) == sorted(
        [make_key_id(space, "space", 2), make_key_id(space, key_name("notes"), 2)]
    )
    state = state_of(a, space)
    assert state.revoked[b.user_id] == answer["revoked_from"]
    assert state.roles_now(b.user_id) == {}
    for coll, readers in ((ALL, {a.user_id}), ("notes", {a.user_id, c.user_id})):
        new = current(state, coll)
        assert new.version == 2
        assert set(new.grants) == readers
    assert grants_to(state, b.user_id) == held  # nothing new
    await deliver(a, b, space)
    assert set(b.refresh_keys()) <= held  # old versions only
    with pytest.raises(MissingKeyError):
        await b.key_for(space, "notes")  # B knows of notes v2 and cannot open it
    await deliver(a, c, space)
    assert c.refresh_keys() == [make_key_id(space, key_name("notes"), 2)]
    assert (await c.key_for(space, "notes")).key_id.endswith("@2")


@ANYIO
async def test_revoke_role_read_rotates_the_key(make_node: MakeNode) -> None:
    a, b = make_node("a"), make_node("b")
    space = (await a.create_space("team"))["space"]
    await a.add_user(space, b.card(), ["read", "write"], "notes")
    answer = await a.revoke_role(space, b.user_id, "write", "notes")
    assert answer["rotated"] == [] and answer["roles"] == {"notes": ["read"]}
    answer = await a.revoke_role(space, b.user_id, "read", "notes")
    assert answer["rotated"] == [make_key_id(space, key_name("notes"), 2)]
    assert answer["roles"] == {}
    notes = current(state_of(a, space), "notes")
    assert notes.version == 2 and set(notes.grants) == {a.user_id}


@ANYIO
async def test_revoking_a_role_that_reads_nothing_rotates_nothing(make_node: MakeNode) -> None:
    """Once B lost read on notes (and notes rotated), B stays in the grants of the
    *old* notes version; taking away an unrelated write role must not rotate notes
    again (only keys whose current version B holds matter)."""
    a, b = make_node("a"), make_node("b")
    space = (await a.create_space("team"))["space"]
    await a.add_user(space, b.card(), ["read", "write"], "notes")
    await a.grant_role(space, b.user_id, "write", "todo")
    first = await a.revoke_role(space, b.user_id, "read", "notes")
    assert first["rotated"] == [make_key_id(space, key_name("notes"), 2)]
    second = await a.revoke_role(space, b.user_id, "write", "todo")
    assert second["rotated"] == []
    assert current(state_of(a, space), "notes").version == 2


@ANYIO
async def test_revoke_role_read_on_the_space_rotates_the_collection_keys_it_held(
    make_node: MakeNode,
) -> None:
    """B reads ``*``; when C got read on ``notes``, the notes key was made and
    granted to every reader of notes, B included. Taking B's read on ``*`` away
    rotates only the space key (``revoke_role`` rotates the scopes B can no
    longer read, not the keys B holds), so B still holds the *current* notes key
    and reads every new notes entry. ``revoke_user`` does it right: it rotates
    every key with a grant to the user."""
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    space = (await a.create_space("team"))["space"]
    await a.add_user(space, b.card(), ["read"])
    await a.add_user(space, c.card(), ["read"], "notes")
    assert b.user_id in current(state_of(a, space), "notes").grants
    await a.revoke_role(space, b.user_id, "read")
    state = state_of(a, space)
    assert state.roles_now(b.user_id) == {}
    assert b.user_id not in current(state, ALL).grants
    still_granted = b.user_id in current(state, "notes").grants
    assert not still_granted, "B still holds the current notes key"


@ANYIO
async def test_a_space_reader_added_later_gets_the_collection_keys(make_node: MakeNode) -> None:
    """Read on ``*`` means every collection; a collection with a key of its own
    (made when someone got read on that collection alone) is written with that
    key. ``_grant_keys`` wraps only versions whose scope the user reads *exactly*
    (``*``), so a user given read on ``*`` after the notes key exists never gets
    it and cannot read notes (nor write it: ``key_for`` raises "no key")."""
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    space = (await a.create_space("team"))["space"]
    await a.add_user(space, b.card(), ["read"], "notes")  # makes the notes key
    inv = (await a.add_user(space, c.card(), ["read", "write"]))["invitation"]
    await c.join(inv)
    state = state_of(c, space)
    assert state.readable(c.user_id) == (True, frozenset())
    granted = c.user_id in current(state, "notes").grants
    assert granted, "a reader of * was not granted the notes key"
    assert await c.key_for(space, "notes") == await a.key_for(space, "notes")


@ANYIO
async def test_an_admins_first_write_to_a_collection_makes_its_key(make_node: MakeNode) -> None:
    a = make_node("a")
    space = (await a.create_space("team"))["space"]
    key = await a.key_for(space, "notes")
    state = state_of(a, space)
    assert key.key_id == current(state, "notes").kid == make_key_id(space, key_name("notes"), 1)
    assert set(current(state, "notes").grants) == {a.user_id}
    assert await a.key_for(space, "notes") == key  # made once


@ANYIO
async def test_notes_a_non_admin_wrote_first_stay_under_the_space_key(
    make_node: MakeNode,
) -> None:
    """The documented limit (docs/trust.md, "What the directory cannot prevent"): W
    (read+write on ``*``, not an admin) is the first to write ``notes``; it cannot
    make a notes key, so its entries use the space key. B, later given read on
    ``notes`` only, gets the notes key alone — never the space key — so it cannot
    read what W wrote. An admin's first write makes the collection key instead."""
    a, w, b = make_node("a"), make_node("w"), make_node("b")
    space = (await a.create_space("team"))["space"]
    await w.join((await a.add_user(space, w.card(), ["read", "write"]))["invitation"])
    used = await w.key_for(space, "notes")
    assert used.key_id == make_key_id(space, "space", 1)
    await a.add_user(space, b.card(), ["read"], "notes")
    state = state_of(a, space)
    assert b.user_id not in state.keys[used.key_id].grants  # the space key is not shared
    notes_key = state.current_key("notes")
    assert notes_key is not None and notes_key.collection == "notes"
    assert b.user_id in notes_key.grants


@ANYIO
async def test_key_for_after_rotation_returns_the_new_version(make_node: MakeNode) -> None:
    a, b = make_node("a"), make_node("b")
    space = (await a.create_space("team"))["space"]
    await b.join((await a.add_user(space, b.card(), ["read"]))["invitation"])
    v1 = await a.key_for(space, ALL)
    assert await b.key_for(space, "any") == v1  # no key of its own: the space key
    rotated = (await a.rotate_key(space))["key"]
    assert rotated == make_key_id(space, "space", 2)
    assert (await a.key_for(space, ALL)).key_id == rotated != v1.key_id
    await deliver(a, b, space)
    with pytest.raises(MissingKeyError, match="no key"):
        await b.key_for(space, "any")  # knows v2 is current, has not unwrapped it yet
    assert b.refresh_keys() == [rotated]
    assert await b.key_for(space, "any") == await a.key_for(space, ALL)
    assert b.refresh_keys() == []
    assert b.home.keyring.get_named_key(v1.key_id) == v1  # old entries stay readable


# --- HPKE grants ---------------------------------------------------------------------------------


def _user(name: str) -> UserIdentity:
    return UserIdentity(signing_key(name), hashlib.sha256(name.encode()).digest())


SPACE = "team~" + _user("root").user_id
KID = make_key_id(SPACE, "space", 1)
KEY = NamedKey(KID, hashlib.sha256(b"the key").digest())
SUITE = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES256_GCM)


def test_a_grant_opens_only_for_its_space_key_and_user() -> None:
    bob, eve = _user("bob"), _user("eve")
    blob = wrap_key(KEY, SPACE, bob.user_id, bob.x25519_public_key)
    assert len(blob) == 80
    assert unwrap_key(blob, SPACE, KID, bob) == KEY
    other_space = "other~" + _user("root").user_id
    with pytest.raises(DecryptionError):
        unwrap_key(blob, other_space, KID, bob)
    with pytest.raises(DecryptionError):
        unwrap_key(blob, SPACE, make_key_id(SPACE, "space", 2), bob)
    with pytest.raises(DecryptionError):
        unwrap_key(blob, SPACE, KID, eve)
    # sealed to eve's X25519 key but bound to bob's id: eve cannot open it as herself
    misbound = wrap_key(KEY, SPACE, bob.user_id, eve.x25519_public_key)
    with pytest.raises(DecryptionError):
        unwrap_key(misbound, SPACE, KID, eve)
    for bad in (blob[:-1], blob[:32], b"", bytes([blob[0] ^ 1]) + blob[1:], blob[:-1] + b"\x00"):
        with pytest.raises(DecryptionError):
            unwrap_key(bad, SPACE, KID, bob)
    # two grants of the same key differ (fresh ephemeral key each time)
    assert wrap_key(KEY, SPACE, bob.user_id, bob.x25519_public_key) != blob


def test_wrap_key_refuses_a_bad_public_key() -> None:
    with pytest.raises(InvalidKeyError):
        wrap_key(KEY, SPACE, "z6Mkwhoever", b"\x01" * 31)


def test_our_grant_opens_with_pyhpke() -> None:
    bob = _user("bob")
    blob = wrap_key(KEY, SPACE, bob.user_id, bob.x25519_public_key)
    skr = KEMKey.from_pyca_cryptography_key(bob.x25519_private_key)
    info = grant_info(SPACE, KID, bob.user_id)
    recipient = SUITE.create_recipient_context(blob[:32], skr, info=info)
    assert recipient.open(blob[32:]) == KEY.secret
    wrong = SUITE.create_recipient_context(blob[:32], skr, info=info + b"x")
    with pytest.raises(OpenError):
        wrong.open(blob[32:])


def test_a_pyhpke_grant_opens_with_unwrap_key() -> None:
    bob = _user("bob")
    pkr = KEMKey.from_pyca_cryptography_key(bob.x25519_private_key.public_key())
    enc, sender = SUITE.create_sender_context(pkr, info=grant_info(SPACE, KID, bob.user_id))
    blob = enc + sender.seal(KEY.secret)
    assert len(blob) == 80
    assert unwrap_key(blob, SPACE, KID, bob) == KEY
    with pytest.raises(DecryptionError):
        unwrap_key(blob, SPACE, KID, _user("eve"))
