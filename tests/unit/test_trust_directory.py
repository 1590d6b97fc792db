"""The trust core's pure parts: managed space ids, key ids, the directory operation
codec, the fold of directory entries into a state, and the checks run on it.

Everything here is synchronous and in memory: directory entries are built by hand
(signed with deterministic identities, at chosen HLC times) and folded directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loomdb.entries.entry import DIRECTORY_KIND, Entry, build_entry
from loomdb.errors import (
    ForbiddenError,
    NotAdminError,
    NotMemberError,
    RevokedError,
    ValidationError,
)
from loomdb.identity.peer_id import peer_id_from_public_key
from loomdb.identity.user import UserIdentity
from loomdb.trust.directory import (
    ADMIN,
    MAX_GRANT_BYTES,
    MAX_OP_BYTES,
    OPS,
    READ,
    RELAY,
    WRITE,
    DirectoryState,
    UserRecord,
    decode_op,
    encode_op,
    fold,
)
from loomdb.trust.spaces import (
    ALL,
    DIRECTORY_COLLECTION,
    DIRECTORY_DOCUMENT,
    is_managed,
    key_name,
    make_key_id,
    make_space_id,
    parse_space_id,
    space_tag,
)
from tests.support import signing_key

BASE = 1_760_000_000_000 << 16


def identity(name: str) -> UserIdentity:
    return UserIdentity(signing_key(name), hashlib.sha256(b"x25519:" + name.encode()).digest())


ROOT, ADMIN_X, ALICE, BOB, STRANGER = (
    identity(n) for n in ("root", "admin-x", "alice", "bob", "stranger")
)
SPACE = make_space_id("team", ROOT.user_id)
MANAGED = parse_space_id(SPACE)
assert MANAGED is not None


def record(user: UserIdentity, label: str = "") -> dict[str, Any]:
    return UserRecord(user.user_id, user.x25519_public_key, (), label).to_wire()


def genesis_op(user: UserIdentity = ROOT) -> dict[str, Any]:
    return {"op": "genesis", "name": "team", "user": record(user)}


def user_op(user: UserIdentity, label: str = "") -> dict[str, Any]:
    return {"op": "user", "user": record(user, label)}


def role_op(user: UserIdentity, coll: str, roles: list[str]) -> dict[str, Any]:
    return {"op": "role", "user": user.user_id, "coll": coll, "roles": sorted(roles)}


def revoke_op(user: UserIdentity, start: int) -> dict[str, Any]:
    return {"op": "revoke", "user": user.user_id, "from": start}


def key_op(
    coll: str, version: int, grants: dict[str, bytes] | None = None, space: str = SPACE
) -> dict[str, Any]:
    name = key_name(coll)
    return {
        "op": "key",
        "kid": make_key_id(space, name, version),
        "name": name,
        "version": version,
        "coll": coll,
        "grants": grants or {},
    }


def directory_entry(
    author: UserIdentity,
    op: dict[str, Any],
    at: int,
    parents: list[Entry] | tuple[Entry, ...] = (),
    space: str = SPACE,
) -> Entry:
    return build_entry(
        author=author.signing_key,
        space=space,
        collection=DIRECTORY_COLLECTION,
        document=DIRECTORY_DOCUMENT,
        kind=DIRECTORY_KIND,
        payload=encode_op(op),
        created_at=at,
        parents=parents,
    )


def content(author: UserIdentity, at: int, collection: str = "notes") -> Entry:
    return build_entry(
        author=author.signing_key,
        space=SPACE,
        collection=collection,
        document="doc-1",
        kind="create",
        payload=b"hello",
        created_at=at,
    )


class Log:
    """A directory being written: each entry follows the previous one unless told."""

    def __init__(self, space: str = SPACE) -> None:
        self.space = space
        self.entries: list[Entry] = []
        self.t = BASE

    def add(
        self,
        author: UserIdentity,
        op: dict[str, Any],
        *,
        at: int | None = None,
        parents: list[Entry] | None = None,
    ) -> Entry:
        self.t += 100
        when = self.t if at is None else at
        chain = self.entries[-1:] if parents is None else parents
        entry = directory_entry(author, op, when, chain, self.space)
        self.entries.append(entry)
        return entry

    def state(self) -> DirectoryState:
        managed = parse_space_id(self.space)
        assert managed is not None
        return fold(managed, self.entries)


def team() -> Log:
    """Root's genesis, ADMIN_X an admin of the space, ALICE read+write on ``notes``."""
    log = Log()
    log.add(ROOT, genesis_op())
    log.add(ROOT, user_op(ADMIN_X))
    log.add(ROOT, role_op(ADMIN_X, ALL, [ADMIN]))
    log.add(ROOT, user_op(ALICE))
    log.add(ROOT, role_op(ALICE, "notes", [READ, WRITE]))
    return log


# --- space ids -----------------------------------------------------------------------------


def test_a_managed_space_id_names_its_root() -> None:
    space = make_space_id("team", ROOT.user_id)
    assert space == f"team~{ROOT.user_id}"
    managed = parse_space_id(space)
    assert managed is not None
    assert (managed.space, managed.name, managed.root) == (space, "team", ROOT.user_id)
    assert managed.root_key == ROOT.signing_key.public_key
    assert is_managed(space)


@pytest.mark.parametrize("name", ["main", "default", "a.b_c-d", "0"])
def test_an_id_without_a_tilde_is_an_open_space(name: str) -> None:
    assert parse_space_id(name) is None
    assert not is_managed(name)


@pytest.mark.parametrize(
    "name", ["", "Team", "-team", ".team", "a" * 64, "te am", "tëam", "a~b", "a/b", "a\n"]
)
def test_bad_space_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        make_space_id(name, ROOT.user_id)
    if "~" not in name:
        with pytest.raises(ValidationError):
            parse_space_id(f"{name}~{ROOT.user_id}")


def test_the_longest_space_name_is_accepted() -> None:
    assert parse_space_id(make_space_id("a" * 63, ROOT.user_id)) is not None


@pytest.mark.parametrize(
    "root",
    [
        "",
        "not-a-user",
        "z6Mk",
        f"did:key:{ROOT.user_id}",
        f"{ROOT.user_id} ",
        ROOT.user_id[:-1],
        ROOT.user_id + "~x",
    ],
)
def test_a_space_id_with_a_bad_root_is_refused(root: str) -> None:
    with pytest.raises(ValidationError):
        parse_space_id(f"team~{root}")
    with pytest.raises(ValidationError):
        make_space_id("team", root)


def test_key_ids_are_scoped_by_space_name_and_version() -> None:
    other = make_space_id("other", ROOT.user_id)
    kid = make_key_id(SPACE, "space", 1)
    tag = space_tag(SPACE)
    assert kid == f"space.{tag}@1"
    assert len(tag) == 16 and tag == tag.lower() and tag.isalnum()
    assert make_key_id(other, "space", 1) != kid
    assert make_key_id(SPACE, "space", 2) != kid
    assert make_key_id(SPACE, key_name("notes"), 1) != kid


def test_key_names_of_scopes() -> None:
    assert key_name(ALL) == "space"
    notes = key_name("notes")
    assert notes.startswith("c-") and len(notes) == 14
    assert key_name("Notes") != notes
    # any collection name gives a key name make_key_id accepts
    for coll in ("notes", "ÜBER notes/🙂", "x" * 256, "c-123"):
        assert make_key_id(SPACE, key_name(coll), 1).startswith(key_name(coll) + ".")


@pytest.mark.parametrize("name", ["", "Space", "a.b", "a@b", "a" * 33, "-a", "space\n"])
def test_bad_key_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        make_key_id(SPACE, name, 1)


@pytest.mark.parametrize("version", [0, -1, True, 1.0, "1", None])
def test_bad_key_versions_are_refused(version: Any) -> None:
    with pytest.raises(ValidationError):
        make_key_id(SPACE, "space", version)


# --- the operation codec ----------------------------------------------------------------------


ROUND_TRIP_OPS = [
    genesis_op(),
    user_op(ALICE, "Alice"),
    {"op": "user", "user": {**record(ALICE), "devices": [], "label": "phone"}},
    role_op(ALICE, "notes", [READ, WRITE]),
    role_op(ALICE, ALL, []),
    revoke_op(ALICE, BASE),
    key_op("notes", 3, {ALICE.user_id: b"\x01" * 80, ROOT.user_id: b"\x02" * 80}),
]


@pytest.mark.parametrize("op", ROUND_TRIP_OPS, ids=lambda o: o["op"])
def test_ops_round_trip(op: dict[str, Any]) -> None:
    payload = encode_op(op)
    decoded = decode_op(payload)
    if "user" in op and isinstance(op["user"], dict):
        assert isinstance(decoded["user"], UserRecord)
        assert decoded["user"].to_wire() == op["user"]
        decoded = {**decoded, "user": decoded["user"].to_wire()}
    assert decoded == op
    assert encode_op(decoded) == payload


def test_a_user_record_with_devices_round_trips() -> None:
    device = peer_id_from_public_key(signing_key("device").public_key)
    op = {"op": "user", "user": {**record(ALICE), "devices": [device]}}
    assert decode_op(encode_op(op))["user"].devices == (device,)


@pytest.mark.parametrize(
    "payload",
    [
        # map keys out of canonical order ("user" before "op")
        cbor2.dumps({"user": ALICE.user_id, "from": 5, "op": "revoke"}),
        # an integer in a longer form than needed (5 as a 4-byte uint)
        encode_op(revoke_op(ALICE, 5)).replace(b"\x64from\x05", b"\x64from\x1a\x00\x00\x00\x05"),
        # an indefinite-length map
        b"\xbf" + encode_op(revoke_op(ALICE, 5))[1:] + b"\xff",
    ],
    ids=["key-order", "long-int", "indefinite-map"],
)
def test_non_canonical_cbor_is_refused(payload: bytes) -> None:
    assert cbor2.loads(payload) == revoke_op(ALICE, 5)  # the same value, other bytes
    with pytest.raises(ValidationError, match="canonical"):
        decode_op(payload)


def _with(op: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = {**op, **changes}
    return {k: v for k, v in out.items() if v is not _DROP}


_DROP = object()

BAD_OPS = {
    "unknown-op": {"op": "grant", "user": ALICE.user_id},
    "no-op-field": {"user": ALICE.user_id, "from": 1},
    "not-a-map": ["revoke", ALICE.user_id, 1],
    "extra-field": _with(revoke_op(ALICE, 1), why="spite"),
    "missing-field": _with(role_op(ALICE, "notes", [READ]), roles=_DROP),
    "bad-role": role_op(ALICE, "notes", ["owner"]),
    "roles-not-a-list": _with(role_op(ALICE, "notes", []), roles="read"),
    "empty-collection": role_op(ALICE, "", [READ]),
    "collection-not-a-string": _with(role_op(ALICE, "notes", [READ]), coll=7),
    "control-char-collection": role_op(ALICE, "no\ntes", [READ]),
    "bad-user-id": _with(role_op(ALICE, "notes", [READ]), user="z6Mkbad"),
    "user-id-not-a-string": _with(revoke_op(ALICE, 1), user=b"alice"),
    "negative-from": revoke_op(ALICE, -1),
    "bool-from": _with(revoke_op(ALICE, 1), **{"from": True}),
    "text-from": _with(revoke_op(ALICE, 1), **{"from": "1"}),
    "short-x25519": {"op": "user", "user": {**record(ALICE), "x25519": b"\x00" * 31}},
    "record-extra-field": {"op": "user", "user": {**record(ALICE), "admin": True}},
    "record-bad-device": {"op": "user", "user": {**record(ALICE), "devices": ["12D3KooWnope"]}},
    "record-control-label": {"op": "user", "user": {**record(ALICE), "label": "a\x00b"}},
    "record-long-label": {"op": "user", "user": {**record(ALICE), "label": "x" * 129}},
    "genesis-bad-user": {"op": "genesis", "name": "team", "user": ROOT.user_id},
    "grant-to-bad-user": key_op("notes", 1, {"nobody": b"\x00" * 80}),
    "grant-too-large": key_op("notes", 1, {ALICE.user_id: b"\x00" * (MAX_GRANT_BYTES + 1)}),
    "grant-not-bytes": _with(key_op("notes", 1), grants={ALICE.user_id: "secret"}),
    "grants-not-a-map": _with(key_op("notes", 1), grants=[]),
}


@pytest.mark.parametrize("op", BAD_OPS.values(), ids=BAD_OPS.keys())
def test_ops_with_wrong_fields_are_refused(op: Any) -> None:
    with pytest.raises(ValidationError):
        decode_op(cbor2.dumps(op, canonical=True))


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xff", b"\x00" * 16, b"\xa1", encode_op(genesis_op())[:-3], b"\x1b" + b"\xff" * 8],
    ids=["empty", "break", "zeros", "truncated-map", "truncated-op", "bare-uint"],
)
def test_junk_payloads_raise_validation_error(payload: bytes) -> None:
    with pytest.raises(ValidationError):
        decode_op(payload)


def test_an_oversized_op_is_refused_before_decoding() -> None:
    op = {"op": "user", "user": {**record(ALICE), "label": "x" * MAX_OP_BYTES}}
    with pytest.raises(ValidationError, match="at most"):
        decode_op(encode_op(op))


def test_a_self_referencing_op_raises_validation_error() -> None:
    """CBOR value sharing (tags 28/29) makes a map that contains itself:
    ``28({"op": "user", "s": 29(0)})``. cbor2 decodes it; re-encoding it to check
    canonical form then fails inside cbor2 — that error must not escape as anything
    but a ValidationError (a stranger can put this payload in a directory entry)."""
    payload = bytes.fromhex("d81ca2626f7064757365726173d81d00")
    value = cbor2.loads(payload)
    assert value["s"] is value
    with pytest.raises(ValidationError):
        decode_op(payload)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_validation_error(payload: bytes) -> None:
    with contextlib.suppress(ValidationError):
        decode_op(payload)


_cbor_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.text(max_size=20)
    | st.binary(max_size=40)
    | st.sampled_from([ALICE.user_id, READ, ADMIN, "notes", ALL, "*", "space"])
)
_cbor = st.recursive(
    _cbor_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_fields = st.sampled_from(
    ["user", "name", "coll", "roles", "from", "kid", "version", "grants", "id", "x25519"]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(OPS), st.dictionaries(_fields, _cbor, max_size=6))
def test_op_shaped_maps_raise_only_validation_error(kind: str, fields: dict[str, Any]) -> None:
    with contextlib.suppress(ValidationError):
        decode_op(encode_op({"op": kind, **fields}))


# --- fold: genesis --------------------------------------------------------------------------------


def test_the_genesis_by_the_root_makes_it_a_member_with_every_role_but_relay() -> None:
    log = Log()
    g = log.add(ROOT, genesis_op())
    state = log.state()
    assert state.genesis == g.cid
    assert set(state.users) == {ROOT.user_id}
    assert state.roles_now(ROOT.user_id) == {ALL: frozenset({READ, WRITE, ADMIN})}
    assert state.is_admin(ROOT.user_id)
    assert state.applied == [g.cid] and not state.ignored


def test_a_genesis_signed_by_anyone_but_the_root_is_ignored() -> None:
    log = Log()
    # signed by the stranger, claiming the root's record or its own
    fake1 = log.add(STRANGER, genesis_op(ROOT), parents=[])
    fake2 = log.add(STRANGER, genesis_op(STRANGER), parents=[])
    state = log.state()
    assert state.genesis is None and not state.users
    assert set(state.ignored) == {fake1.cid, fake2.cid}
    # the root's genesis signed with the root key but naming someone else
    fake3 = log.add(ROOT, genesis_op(STRANGER), parents=[])
    assert log.state().genesis is None and fake3.cid in log.state().ignored
    # the real one still counts, whatever came before it
    real = log.add(ROOT, genesis_op(), parents=[])
    state = log.state()
    assert state.genesis == real.cid
    assert set(state.users) == {ROOT.user_id}


def test_a_second_genesis_is_ignored() -> None:
    log = Log()
    first = log.add(ROOT, genesis_op(), parents=[])
    second = log.add(ROOT, {**genesis_op(), "name": "again"}, parents=[])
    state = log.state()
    assert state.genesis == first.cid
    assert "already" in state.ignored[second.cid]


def test_a_genesis_with_parents_is_ignored() -> None:
    log = Log()
    stray = log.add(ROOT, user_op(ALICE), parents=[])  # before any genesis: ignored
    late = log.add(ROOT, genesis_op(), parents=[stray])
    state = log.state()
    assert state.genesis is None
    assert "no genesis" in state.ignored[stray.cid]
    assert "no parents" in state.ignored[late.cid]


def test_entries_of_other_spaces_are_not_folded() -> None:
    log = team()
    other = Log(make_space_id("other", ROOT.user_id))
    other.add(ROOT, genesis_op())
    other.add(ROOT, user_op(BOB))
    state = fold(MANAGED, log.entries + other.entries)
    assert BOB.user_id not in state.users
    assert state == log.state()


# --- fold: who may change the directory ----------------------------------------------------------


def test_an_op_by_a_member_who_is_not_an_admin_is_ignored() -> None:
    log = team()
    bad = log.add(ALICE, user_op(BOB))
    bad2 = log.add(ALICE, role_op(ALICE, ALL, [ADMIN]))
    state = log.state()
    assert BOB.user_id not in state.users
    assert not state.is_admin(ALICE.user_id)
    assert "not an admin" in state.ignored[bad.cid]
    assert "not an admin" in state.ignored[bad2.cid]


def test_an_op_by_a_stranger_is_ignored() -> None:
    log = team()
    bad = log.add(STRANGER, user_op(STRANGER))
    state = log.state()
    assert STRANGER.user_id not in state.users and bad.cid in state.ignored


def test_an_admin_appointed_by_the_root_can_add_users_and_roles() -> None:
    log = team()
    log.add(ADMIN_X, user_op(BOB))
    grant = log.add(ADMIN_X, role_op(BOB, "notes", [READ]))
    state = log.state()
    assert BOB.user_id in state.users
    assert state.roles_at(BOB.user_id, "notes", grant.created_at) == {READ}
    assert not state.ignored


def test_a_collection_admin_changes_roles_on_its_collection_only() -> None:
    log = team()
    log.add(ROOT, user_op(BOB))
    log.add(ROOT, role_op(ALICE, "notes", [ADMIN]))
    ok = log.add(ALICE, role_op(BOB, "notes", [READ]))
    ok_key = log.add(ALICE, key_op("notes", 1))
    not_ok = log.add(ALICE, role_op(BOB, "other", [READ]))
    not_space = log.add(ALICE, role_op(BOB, ALL, [READ]))
    not_user = log.add(ALICE, user_op(STRANGER))
    state = log.state()
    assert {ok.cid, ok_key.cid} <= set(state.applied)
    assert {not_ok.cid, not_space.cid, not_user.cid} <= set(state.ignored)
    assert state.roles_now(BOB.user_id) == {"notes": frozenset({READ})}


def test_ops_of_a_revoked_admin_count_before_from_and_not_after() -> None:
    log = team()
    before = log.add(ADMIN_X, user_op(BOB))  # made before "from"
    start = log.t + 50
    log.add(ROOT, revoke_op(ADMIN_X, start))
    after = log.add(ADMIN_X, user_op(STRANGER))  # made after "from" (and after the revoke)
    state = log.state()
    assert after.created_at > start > before.created_at
    assert BOB.user_id in state.users
    assert STRANGER.user_id not in state.users
    assert "not an admin" in state.ignored[after.cid]
    assert state.revoked == {ADMIN_X.user_id: start}


def test_ops_of_a_revoked_admin_made_after_from_are_ignored_whatever_their_height() -> None:
    """The root revokes the admin effective from an earlier time (``revoke_user(...,
    effective_at=...)``), after having seen the admin's later op: the revoke entry is
    a child of that op, so it comes later in fold order (greater height). The op was
    made after ``from`` and so must not count — the module doc: "each operation
    counts only when its author was, at the entry's time, an admin ... and not
    revoked". Today it counts, because the fold is a single pass in height order."""
    log = team()
    start = log.t + 50
    late = log.add(ADMIN_X, user_op(BOB), at=start + 10)
    log.add(ADMIN_X, role_op(BOB, "notes", [READ, WRITE]))
    log.add(ROOT, revoke_op(ADMIN_X, start))
    state = log.state()
    assert late.created_at > start
    counted = BOB.user_id in state.users
    assert not counted, "an op made after 'from' counted"
    assert late.cid in state.ignored


def test_a_revoked_user_cannot_be_added_back() -> None:
    log = team()
    log.add(ROOT, revoke_op(ALICE, log.t))
    again = log.add(ROOT, user_op(ALICE, "new label"))
    state = log.state()
    assert "revoked" in state.ignored[again.cid]
    assert state.users[ALICE.user_id].label == ""


def test_the_root_cannot_be_revoked_nor_its_roles_changed() -> None:
    log = team()
    r1 = log.add(ADMIN_X, revoke_op(ROOT, 0))
    r2 = log.add(ADMIN_X, role_op(ROOT, ALL, []))
    r3 = log.add(ROOT, role_op(ROOT, ALL, [READ]))  # not even by itself
    r4 = log.add(ROOT, revoke_op(ROOT, 0))
    state = log.state()
    for bad in (r1, r2, r3, r4):
        assert "root" in state.ignored[bad.cid]
    assert ROOT.user_id not in state.revoked
    assert state.roles_now(ROOT.user_id) == {ALL: frozenset({READ, WRITE, ADMIN})}
    assert state.is_admin(ROOT.user_id)


def test_roles_and_revokes_need_the_user_in_the_directory() -> None:
    log = team()
    r1 = log.add(ROOT, role_op(BOB, "notes", [READ]))
    r2 = log.add(ROOT, revoke_op(BOB, 0))
    state = log.state()
    assert "not in the directory" in state.ignored[r1.cid]
    assert "not in the directory" in state.ignored[r2.cid]


# --- roles over time ------------------------------------------------------------------------


def test_roles_at_follows_the_timeline() -> None:
    log = team()
    log.add(ROOT, user_op(BOB))
    grant = log.add(ROOT, role_op(BOB, "notes", [READ, WRITE]))
    space_grant = log.add(ROOT, role_op(BOB, ALL, [READ]))
    narrowed = log.add(ROOT, role_op(BOB, "notes", [READ]))
    removed = log.add(ROOT, role_op(BOB, "notes", []))
    state = log.state()
    bob = BOB.user_id
    assert state.roles_at(bob, "notes", grant.created_at - 1) == frozenset()
    assert state.roles_at(bob, "notes", grant.created_at) == {READ, WRITE}
    assert state.roles_at(bob, "other", grant.created_at) == frozenset()
    # a role on "*" counts on every collection, from its own time
    assert state.roles_at(bob, "other", space_grant.created_at) == {READ}
    assert state.roles_at(bob, ALL, space_grant.created_at) == {READ}
    assert state.roles_at(bob, "notes", narrowed.created_at) == {READ}
    assert state.roles_at(bob, "notes", removed.created_at) == {READ}  # from "*" only
    assert state.roles_now(bob) == {ALL: frozenset({READ})}
    assert state.roles_at(STRANGER.user_id, "notes", removed.created_at) == frozenset()


def test_a_role_op_folded_late_lands_at_its_own_time() -> None:
    """Role timelines are ordered by entry time, not by fold order."""
    log = team()
    log.add(ROOT, user_op(BOB))
    base = log.entries[-1]
    later = log.add(ROOT, role_op(BOB, "notes", []), at=log.t + 1000)
    # a concurrent branch: an earlier grant deeper in the DAG (greater height)
    x = log.add(ROOT, user_op(STRANGER), parents=[base], at=base.created_at + 1)
    earlier = log.add(ROOT, role_op(BOB, "notes", [WRITE]), parents=[x], at=base.created_at + 2)
    assert earlier.height > later.height
    state = log.state()
    assert state.roles_at(BOB.user_id, "notes", earlier.created_at) == {WRITE}
    assert state.roles_now(BOB.user_id) == {}


def test_a_revoked_user_has_no_roles_from_its_revocation_on() -> None:
    log = team()
    start = log.t + 1
    log.add(ROOT, revoke_op(ALICE, start))
    state = log.state()
    assert state.roles_at(ALICE.user_id, "notes", start - 1) == {READ, WRITE}
    assert state.roles_at(ALICE.user_id, "notes", start) == frozenset()
    assert state.roles_now(ALICE.user_id) == {}
    assert state.readable(ALICE.user_id) == (False, frozenset())
    with pytest.raises(RevokedError):
        state.check_member(ALICE.user_id)


def test_two_revokes_keep_the_earliest_from() -> None:
    log = team()
    log.add(ROOT, revoke_op(ALICE, BASE + 5000))
    log.add(ADMIN_X, revoke_op(ALICE, BASE + 3000))
    log.add(ROOT, revoke_op(ALICE, BASE + 9000))
    assert log.state().revoked[ALICE.user_id] == BASE + 3000


# --- checks on content entries ----------------------------------------------------------------


def test_check_author_accepts_a_writer_and_refuses_the_rest() -> None:
    log = team()
    log.add(ROOT, user_op(BOB))
    log.add(ROOT, role_op(BOB, "notes", [READ]))
    state = log.state()
    now = log.t + 1
    state.check_author(content(ALICE, now))  # write on notes
    state.check_author(content(ROOT, now, "anything"))  # root writes everywhere
    with pytest.raises(ForbiddenError):
        state.check_author(content(ALICE, now, "other"))  # no role there
    with pytest.raises(ForbiddenError):
        state.check_author(content(BOB, now))  # read only
    with pytest.raises(NotMemberError):
        state.check_author(content(STRANGER, now))
    with pytest.raises(ForbiddenError):  # before its role was granted
        state.check_author(content(ALICE, BASE + 1))


def test_check_author_refuses_directory_shaped_entries() -> None:
    state = team().state()
    entry = directory_entry(ROOT, user_op(BOB), BASE + 10_000)
    with pytest.raises(ForbiddenError):
        state.check_author(entry)


def test_check_author_refuses_entries_made_at_or_after_from() -> None:
    log = team()
    start = log.t + 1000
    log.add(ROOT, revoke_op(ALICE, start))
    state = log.state()
    state.check_author(content(ALICE, start - 1))
    with pytest.raises(RevokedError):
        state.check_author(content(ALICE, start))
    with pytest.raises(RevokedError):
        state.check_author(content(ALICE, start + 1))


def test_a_revoked_author_can_backdate_entries_to_before_from_known_limit() -> None:
    """Known limit (docs/trust.md, "What the directory cannot prevent"): an entry's
    time is chosen by its author, so an entry signed *after* the revocation but
    dated before ``from`` passes every node's check. This test pins the limit."""
    log = team()
    start = log.t + 1000
    revoke = log.add(ROOT, revoke_op(ALICE, start), at=start + 5000)
    state = log.state()
    # built after the revoke entry exists, dated before "from"
    backdated = content(ALICE, start - 10)
    assert backdated.created_at < start < revoke.created_at
    state.check_author(backdated)  # accepted: the limit


def test_check_writer_is_what_check_author_asks() -> None:
    state = team().state()
    now = BASE + 10_000
    state.check_writer(ALICE.user_id, "notes", now)
    with pytest.raises(NotMemberError):
        state.check_writer(STRANGER.user_id, "notes", now)
    with pytest.raises(ForbiddenError):
        state.check_writer(ALICE.user_id, ALL, now)


# --- checks on directory entries ------------------------------------------------------------


def test_check_directory_entry() -> None:
    log = team()
    state = log.state()
    good = directory_entry(ADMIN_X, user_op(BOB), log.t + 1, log.entries[-1:])
    assert state.check_directory_entry(good)["user"].user_id == BOB.user_id
    with pytest.raises(NotAdminError):
        state.check_directory_entry(directory_entry(ALICE, user_op(BOB), log.t + 1))
    with pytest.raises(NotAdminError):
        state.check_directory_entry(directory_entry(ROOT, genesis_op(), log.t + 1))
    wrong_doc = build_entry(
        author=ROOT.signing_key,
        space=SPACE,
        collection=DIRECTORY_COLLECTION,
        document="other",
        kind=DIRECTORY_KIND,
        payload=encode_op(user_op(BOB)),
        created_at=log.t + 1,
    )
    with pytest.raises(ForbiddenError):
        state.check_directory_entry(wrong_doc)
    wrong_kind = build_entry(
        author=ROOT.signing_key,
        space=SPACE,
        collection=DIRECTORY_COLLECTION,
        document=DIRECTORY_DOCUMENT,
        kind="change",
        payload=encode_op(user_op(BOB)),
        created_at=log.t + 1,
    )
    with pytest.raises(ForbiddenError):
        state.check_directory_entry(wrong_kind)
    junk = build_entry(
        author=ROOT.signing_key,
        space=SPACE,
        collection=DIRECTORY_COLLECTION,
        document=DIRECTORY_DOCUMENT,
        kind=DIRECTORY_KIND,
        payload=b"\xff\x00",
        created_at=log.t + 1,
    )
    with pytest.raises(ValidationError):
        state.check_directory_entry(junk)


def test_a_key_op_with_a_name_of_the_wrong_type_is_ignored_not_a_crash() -> None:
    """``decode_op`` does not check a key op's ``name``/``version`` types; the fold's
    admin-side check then calls ``make_key_id`` whose regex raises TypeError on a
    non-string name. An admin-signed (or replayed) entry like this must be ignored
    by the fold and refused by ``check_directory_entry`` with a LoomError, not crash
    every node that folds the directory."""
    log = team()
    bad = {**key_op("notes", 1), "name": 5}
    entry = directory_entry(ROOT, bad, log.t + 1, log.entries[-1:])
    with pytest.raises((ValidationError, NotAdminError)):
        log.state().check_directory_entry(entry)
    log.entries.append(entry)
    state = log.state()
    assert entry.cid in state.ignored


def test_a_key_op_whose_kid_does_not_match_is_ignored() -> None:
    log = team()
    bad = log.add(ROOT, {**key_op("notes", 1), "kid": make_key_id(SPACE, "space", 1)})
    other_space = log.add(ROOT, key_op("notes", 1, space=make_space_id("other", ROOT.user_id)))
    state = log.state()
    assert "key id" in state.ignored[bad.cid]
    assert "key id" in state.ignored[other_space.cid]
    assert not state.keys


# --- keys ------------------------------------------------------------------------------------


def test_key_grants_of_one_version_accumulate() -> None:
    log = team()
    log.add(ROOT, key_op(ALL, 1, {ROOT.user_id: b"r" * 80}))
    log.add(ROOT, key_op(ALL, 1, {ADMIN_X.user_id: b"x" * 80}))
    (version,) = log.state().keys.values()
    assert dict(version.grants) == {ROOT.user_id: b"r" * 80, ADMIN_X.user_id: b"x" * 80}
    assert version.version == 1 and version.collection == ALL


def test_current_key_prefers_the_collection_key() -> None:
    log = team()
    assert log.state().current_key("notes") is None
    log.add(ROOT, key_op(ALL, 1))
    assert log.state().current_key("notes").kid == make_key_id(SPACE, "space", 1)  # type: ignore[union-attr]
    log.add(ROOT, key_op(ALL, 2))
    log.add(ROOT, key_op("notes", 1))
    state = log.state()
    notes = state.current_key("notes")
    assert notes is not None and notes.kid == make_key_id(SPACE, key_name("notes"), 1)
    assert notes.collection == "notes"
    other = state.current_key("other")
    space_key = state.current_key(ALL)
    assert other is not None and space_key is not None
    assert other.kid == space_key.kid == make_key_id(SPACE, "space", 2)
    log.add(ROOT, key_op("notes", 2))
    assert log.state().current_key("notes").version == 2  # type: ignore[union-attr]
    assert [k.version for k in log.state().key_versions("notes")] == [1, 2]


def test_readers_and_readable() -> None:
    log = team()
    log.add(ROOT, user_op(BOB))
    log.add(ROOT, role_op(BOB, ALL, [RELAY]))
    state = log.state()
    readers_notes = {u.user_id for u in state.readers("notes")}
    assert readers_notes == {ROOT.user_id, ADMIN_X.user_id, ALICE.user_id}
    assert {u.user_id for u in state.readers(ALL)} == {ROOT.user_id, ADMIN_X.user_id}
    assert state.readable(BOB.user_id) == (True, frozenset())  # a relay pulls everything
    assert state.readable(ALICE.user_id) == (False, frozenset({"notes"}))
    assert state.readable(STRANGER.user_id) == (False, frozenset())


# --- fold is a function of the set of entries ----------------------------------------------------


def _rich_log() -> Log:
    log = team()
    log.add(ADMIN_X, user_op(BOB))
    log.add(ADMIN_X, role_op(BOB, ALL, [READ]))
    log.add(ROOT, key_op(ALL, 1, {ROOT.user_id: b"r" * 80}))
    log.add(ROOT, key_op("notes", 1, {ALICE.user_id: b"a" * 80}))
    base = log.entries[-1]
    # two concurrent branches
    log.add(ALICE, user_op(STRANGER), parents=[base])  # ignored: not an admin
    log.add(ROOT, role_op(ALICE, "notes", [READ]), parents=[base])
    log.add(ADMIN_X, key_op("notes", 1, {BOB.user_id: b"b" * 80}), parents=[base])
    log.add(ROOT, revoke_op(BOB, log.t + 10))
    log.add(STRANGER, genesis_op(STRANGER), parents=[])
    return log


def _snapshot(state: DirectoryState) -> tuple[Any, ...]:
    return (
        state.users,
        state.roles,
        state.revoked,
        state.keys,
        state.genesis,
        state.applied,
        state.ignored,
        {e.cid for e in state.heads},
    )


def test_fold_is_order_independent_and_duplicates_are_harmless() -> None:
    log = _rich_log()
    expected = _snapshot(log.state())
    assert len(expected[5]) > 10 and len(expected[6]) >= 2  # both kinds present
    rng = random.Random(7)
    for _ in range(30):
        entries = log.entries * rng.randint(1, 3)
        rng.shuffle(entries)
        assert _snapshot(fold(MANAGED, entries)) == expected


def test_fold_heads_are_the_entries_nobody_builds_on() -> None:
    log = team()
    base = log.entries[-1]
    a = log.add(ROOT, user_op(BOB), parents=[base])
    b = log.add(ADMIN_X, user_op(STRANGER), parents=[base])
    assert {e.cid for e in log.state().heads} == {a.cid, b.cid}
