"""``GuardedStore``: enforcement on receive, over a memory store and an SQLite file.

The directory is written by a real :class:`NodeTrust` (the root's node) through
the guarded store under test; content entries are built by hand and signed by
members, a revoked member and strangers.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from loomdb.entries.entry import DIRECTORY_KIND, Entry, build_entry
from loomdb.identity.user import UserIdentity
from loomdb.node.home import NodeHome
from loomdb.stores import MemoryStore, SQLiteStore
from loomdb.stores.base import ContentAddressedStore, PutResult, PutStatus
from loomdb.trust.admin import NodeTrust, encode_card
from loomdb.trust.book import DirectoryBook
from loomdb.trust.directory import DirectoryState, UserRecord, encode_op
from loomdb.trust.guard import GuardedStore
from loomdb.trust.spaces import DIRECTORY_COLLECTION, DIRECTORY_DOCUMENT, make_space_id
from tests.support import signing_key

pytestmark = pytest.mark.anyio

ACCEPTED, REJECTED = PutStatus.ACCEPTED, PutStatus.REJECTED


def identity(name: str) -> UserIdentity:
    return UserIdentity(signing_key(name), hashlib.sha256(b"x25519:" + name.encode()).digest())


WRITER, READER, GONE, STRANGER = (identity(n) for n in ("writer", "reader", "gone", "stranger"))


def card(user: UserIdentity) -> str:
    return encode_card(UserRecord(user.user_id, user.x25519_public_key, (), ""))


def entry(
    author: UserIdentity,
    space: str,
    at: int,
    *,
    collection: str = "notes",
    document: str = "doc-1",
    parents: list[Entry] | tuple[Entry, ...] = (),
    payload: bytes = b"content",
) -> Entry:
    return build_entry(
        author=author.signing_key,
        space=space,
        collection=collection,
        document=document,
        kind="create" if not parents else "change",
        payload=payload,
        created_at=at,
        parents=parents,
    )


def directory_entry(
    author: UserIdentity, space: str, payload: bytes, at: int, parents: list[Entry]
) -> Entry:
    return build_entry(
        author=author.signing_key,
        space=space,
        collection=DIRECTORY_COLLECTION,
        document=DIRECTORY_DOCUMENT,
        kind=DIRECTORY_KIND,
        payload=payload,
        created_at=at,
        parents=parents,
    )


def codes(results: list[PutResult]) -> list[tuple[PutStatus, str | None]]:
    return [(r.status, None if r.error is None else r.error.code) for r in results]


def snapshot(state: DirectoryState | None) -> object:
    assert state is not None
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


@dataclass
class Node:
    inner: ContentAddressedStore
    book: DirectoryBook
    store: GuardedStore
    trust: NodeTrust


@pytest.fixture(params=["memory", "sqlite"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def open_inner(kind: str, path: Path) -> ContentAddressedStore:
    return MemoryStore() if kind == "memory" else SQLiteStore(path)


@pytest.fixture
async def node(kind: str, tmp_path: Path) -> AsyncIterator[Node]:
    """The root's node: its guarded store is the store under test."""
    inner = open_inner(kind, tmp_path / "root.db")
    book = DirectoryBook()
    store = GuardedStore(inner, book)
    trust = NodeTrust(NodeHome.open(tmp_path / "root", environ={}), store, book)
    yield Node(inner, book, store, trust)
    await store.aclose()


@dataclass
class Team:
    space: str
    revoked_from: int
    now: int  # a time after every directory entry


async def make_team(trust: NodeTrust) -> Team:
    """WRITER writes notes, READER reads notes, GONE wrote notes and was revoked."""
    space = (await trust.create_space("team"))["space"]
    await trust.add_user(space, card(WRITER), ["read", "write"], "notes")
    await trust.add_user(space, card(READER), ["read"], "notes")
    await trust.add_user(space, card(GONE), ["read", "write"], "notes")
    revoked = (await trust.revoke_user(space, GONE.user_id))["revoked_from"]
    now = 1 + max(e.created_at for e in trust.book.entries(space))
    return Team(space, revoked, now)


# --- one batch, one result per entry ---------------------------------------------------------


async def test_a_mixed_batch_gets_one_result_per_entry_and_keeps_the_good_ones(
    node: Node,
) -> None:
    team = await make_team(node.trust)
    space, now = team.space, team.now
    heads = node.book.state(space).heads  # type: ignore[union-attr]
    member = entry(WRITER, space, now)
    stranger = entry(STRANGER, space, now)
    revoked = entry(GONE, space, now)
    before_revoke = entry(GONE, space, team.revoked_from - 1, document="old")
    non_writer = entry(READER, space, now)
    wrong_collection = entry(WRITER, space, now, collection="other")
    malformed = b"\x00 not an entry"
    forged_op = encode_op({"op": "role", "user": WRITER.user_id, "coll": "*", "roles": ["admin"]})
    forged = directory_entry(WRITER, space, forged_op, now, heads)
    state_before = snapshot(node.book.state(space))

    results = await node.store.put_entries(
        [member, stranger, revoked, before_revoke, non_writer, wrong_collection, malformed, forged]
    )

    assert codes(results) == [
        (ACCEPTED, None),
        (REJECTED, "trust.not_member"),
        (REJECTED, "trust.revoked"),
        (ACCEPTED, None),  # made before "from": still counts
        (REJECTED, "trust.forbidden"),
        (REJECTED, "trust.forbidden"),
        (REJECTED, "entry.malformed"),
        (REJECTED, "trust.not_admin"),
    ]
    bad = [stranger, revoked, non_writer, wrong_collection, forged]
    assert await node.inner.has_entries([member.cid, before_revoke.cid]) == [True, True]
    assert await node.inner.has_entries([e.cid for e in bad]) == [False] * len(bad)
    assert snapshot(node.book.state(space)) == state_before
    # the same batch again: the good ones are duplicates, the bad ones still refused
    again = await node.store.put_entries([member, stranger, forged])
    assert codes(again) == [
        (PutStatus.DUPLICATE, None),
        (REJECTED, "trust.not_member"),
        (REJECTED, "trust.not_admin"),
    ]


async def test_a_self_referencing_directory_payload_is_refused_not_a_crash(node: Node) -> None:
    """Any peer can send a directory entry whose payload is CBOR that refers to itself
    (value-sharing tags 28/29). ``decode_op`` lets cbor2's CBOREncodeValueError out
    (it re-encodes to check canonical form, outside its try), the guard catches only
    TrustError and ValidationError, so the whole put_entries call fails and the
    good entries of the batch are lost with it."""
    team = await make_team(node.trust)
    heads = node.book.state(team.space).heads  # type: ignore[union-attr]
    good = entry(WRITER, team.space, team.now)
    cyclic = bytes.fromhex("d81ca2626f7064757365726173d81d00")
    poison = directory_entry(STRANGER, team.space, cyclic, team.now, heads)
    results = await node.store.put_entries([good, poison])
    assert codes(results) == [(ACCEPTED, None), (REJECTED, "entry.malformed")]


async def test_a_junk_directory_payload_is_malformed(node: Node) -> None:
    team = await make_team(node.trust)
    junk = directory_entry(WRITER, team.space, b"\xff\xfe", team.now, [])
    (result,) = await node.store.put_entries([junk])
    assert codes([result]) == [(REJECTED, "entry.malformed")]


async def test_a_directory_entry_outside_directory_log_is_forbidden(node: Node) -> None:
    team = await make_team(node.trust)
    op = encode_op({"op": "role", "user": WRITER.user_id, "coll": "*", "roles": ["admin"]})
    elsewhere = build_entry(
        author=node.trust.home.user.signing_key,
        space=team.space,
        collection="notes",
        document="doc-1",
        kind=DIRECTORY_KIND,
        payload=op,
        created_at=team.now,
    )
    content_in_directory = entry(WRITER, team.space, team.now, collection=DIRECTORY_COLLECTION)
    results = await node.store.put_entries([elsewhere, content_in_directory])
    assert codes(results) == [(REJECTED, "trust.forbidden")] * 2


# --- directory and content in one batch ----------------------------------------------------------


async def test_a_batch_with_a_users_grant_and_its_first_entries_is_accepted_in_any_order(
    kind: str, tmp_path: Path
) -> None:
    """What a sync delivers to a node that never saw the space: its whole directory
    and the new member's entries, mixed (as objects and as raw bytes)."""
    book_a = DirectoryBook()
    trust_a = NodeTrust(
        NodeHome.open(tmp_path / "root", environ={}), GuardedStore(MemoryStore(), book_a), book_a
    )
    team = await make_team(trust_a)
    first = entry(WRITER, team.space, team.now)
    second = entry(WRITER, team.space, team.now + 1, parents=[first])
    directory = book_a.entries(team.space)
    batch: list[Entry | bytes] = [*directory, first, second]
    for seed in range(4):
        shuffled = list(batch)
        random.Random(seed).shuffle(shuffled)
        if seed % 2:
            shuffled = [e.raw if isinstance(e, Entry) else e for e in shuffled]
        inner = open_inner(kind, tmp_path / f"fresh-{seed}.db")
        book = DirectoryBook()
        guard = GuardedStore(inner, book)
        try:
            results = await guard.put_entries(shuffled)
            assert [r.status for r in results] == [ACCEPTED] * len(shuffled), codes(results)
            assert snapshot(book.state(team.space)) == snapshot(book_a.state(team.space))
            assert await inner.count() == len(batch)
        finally:
            await guard.aclose()


async def test_content_before_its_grant_in_another_batch_is_refused(node: Node) -> None:
    """Without the grant in the same batch (or before), the entry is refused."""
    book_a = DirectoryBook()
    trust_a = NodeTrust(
        NodeHome.open(node.trust.home.path.parent / "other-root", environ={}),
        GuardedStore(MemoryStore(), book_a),
        book_a,
    )
    team = await make_team(trust_a)
    genesis = [e for e in book_a.entries(team.space) if e.height == 1]
    assert [r.status for r in await node.store.put_entries(genesis)] == [ACCEPTED]
    (result,) = await node.store.put_entries([entry(WRITER, team.space, team.now)])
    assert codes([result]) == [(REJECTED, "trust.not_member")]


async def test_what_a_node_keeps_does_not_depend_on_arrival_order(
    kind: str, tmp_path: Path
) -> None:
    """Admin X adds a user; the root, having seen that, revokes X effective from
    *before* it (``revoke_user(effective_at=...)``). A node that receives the whole
    directory in one batch applies X's op first (lower height: the revoke builds on
    it) and keeps it — the user is a member; a node that gets the revoke first
    refuses X's op (``trust.not_admin``) and never stores it. Two honest nodes then
    disagree on membership for good, and sync cannot fix it (one refuses what the
    other sends). Same cause as test_trust_directory's
    ``test_ops_of_a_revoked_admin_made_after_from_are_ignored_whatever_their_height``."""

    def trust_of(name: str) -> NodeTrust:
        book = DirectoryBook()
        home = NodeHome.open(tmp_path / name, environ={})
        return NodeTrust(home, GuardedStore(MemoryStore(), book), book)

    root, admin = trust_of("root"), trust_of("admin")
    space = (await root.create_space("team"))["space"]
    await admin.join((await root.add_user(space, admin.card(), ["admin"]))["invitation"])
    mark = 1 + max(e.created_at for e in admin.book.entries(space))
    await admin.add_user(space, card(WRITER), ["read", "write"], "notes")
    await root.store.put_entries(admin.book.entries(space))
    await root.revoke_user(space, admin.user_id, effective_at=mark)
    everything = root.book.entries(space)
    by_admin = [e for e in everything if e.author == admin.home.user.signing_key.public_key]
    assert by_admin and all(e.created_at >= mark for e in by_admin)

    states = []
    for i, batches in enumerate(
        [[everything], [[e for e in everything if e not in by_admin], by_admin]]
    ):
        book = DirectoryBook()
        guard = GuardedStore(open_inner(kind, tmp_path / f"n{i}.db"), book)
        try:
            for batch in batches:
                await guard.put_entries(batch)
            states.append((await guard.count(), snapshot(book.state(space))))
        finally:
            await guard.aclose()
    (count_1, state_1), (count_2, state_2) = states
    assert count_1 == count_2, "one node stored entries the other refused"
    assert state_1 == state_2


# --- spaces without a directory ------------------------------------------------------------------


async def test_entries_of_an_unknown_managed_space_are_refused(node: Node) -> None:
    ghost = make_space_id("ghost", STRANGER.user_id)
    results = await node.store.put_entries(
        [entry(STRANGER, ghost, 1 << 40), entry(WRITER, ghost, 1 << 40)]
    )
    assert codes(results) == [(REJECTED, "trust.not_member")] * 2
    assert await node.inner.count() == 0


async def test_open_spaces_pass_unchecked(node: Node) -> None:
    results = await node.store.put_entries(
        [entry(STRANGER, "main", 1 << 40), entry(WRITER, "other-open", 1 << 40)]
    )
    assert [r.status for r in results] == [ACCEPTED, ACCEPTED]


async def test_open_spaces_false_refuses_open_spaces(kind: str, tmp_path: Path) -> None:
    guard = GuardedStore(open_inner(kind, tmp_path / "s.db"), DirectoryBook(), open_spaces=False)
    try:
        (result,) = await guard.put_entries([entry(STRANGER, "main", 1 << 40)])
        assert codes([result]) == [(REJECTED, "trust.not_member")]
        assert await guard.count() == 0
    finally:
        await guard.aclose()


async def test_a_directory_entry_for_an_open_space_is_refused(node: Node) -> None:
    op = encode_op(
        {
            "op": "genesis",
            "name": "main",
            "user": UserRecord(STRANGER.user_id, STRANGER.x25519_public_key).to_wire(),
        }
    )
    results = await node.store.put_entries(
        [
            directory_entry(STRANGER, "main", op, 1 << 40, []),
            entry(STRANGER, "main", 1 << 40, collection=DIRECTORY_COLLECTION),
        ]
    )
    assert codes(results) == [(REJECTED, "trust.forbidden")] * 2
    assert node.book.state("main") is None


# --- the book is the fold of the store ------------------------------------------------------


async def test_the_book_rebuilt_from_the_store_has_the_same_state(
    node: Node, kind: str, tmp_path: Path
) -> None:
    team = await make_team(node.trust)
    other = (await node.trust.create_space("other"))["space"]
    await node.store.put_entries([entry(WRITER, team.space, team.now), entry(WRITER, "main", 1)])
    expected = {s: snapshot(node.book.state(s)) for s in (team.space, other)}
    store: ContentAddressedStore = node.inner
    if kind == "sqlite":  # from the file, as a restarted node does
        store = SQLiteStore(tmp_path / "root.db")
    try:
        book = DirectoryBook()
        await book.load(store)
        assert book.spaces() == sorted([team.space, other])
        assert {s: snapshot(book.state(s)) for s in (team.space, other)} == expected
        assert book.state("main") is None
    finally:
        if store is not node.inner:
            await store.aclose()


# --- the inline path for this node's own small writes -----------------------------------------


async def test_inline_puts_check_membership_and_run_the_hooks(tmp_path: Path) -> None:
    """``try_put_entries`` stores a member's entries at once (duplicates sorted out by
    the inner store) and calls the same hooks as ``put_entries``; anything the full
    path would have to explain (a stranger, a directory entry, bytes) gets None, and
    the full path then refuses it, so nothing is stored without the checks."""
    from loomdb.stores.origin import written_here

    inner = SQLiteStore(tmp_path / "root.db")
    book = DirectoryBook()
    stored: list[int] = []
    written: list[list[int]] = []
    store = GuardedStore(
        inner,
        book,
        on_stored=stored.append,
        on_written=lambda batch: written.append([seq for seq, _ in batch]),
    )
    trust = NodeTrust(NodeHome.open(tmp_path / "root", environ={}), store, book)
    try:
        team = await make_team(trust)
        stored.clear()
        first = entry(WRITER, team.space, team.now)
        second = entry(WRITER, team.space, team.now + 1, parents=[first])
        with written_here():
            results = store.try_put_entries([first, second])
        assert results is not None
        assert [r.status for r in results] == [ACCEPTED, ACCEPTED]
        seqs = [r.seq for r in results]
        assert written == [seqs]
        assert stored == [max(s for s in seqs if s is not None)]
        again = store.try_put_entries([first])  # not this node's write: no on_written
        assert again is not None
        assert [r.status for r in again] == [PutStatus.DUPLICATE]
        assert written == [seqs]

        stranger = entry(STRANGER, team.space, team.now + 2)
        assert store.try_put_entries([stranger]) is None
        assert store.try_put_entries([first.raw]) is None
        assert store.try_put_entries(trust.book.entries(team.space)[:1]) is None
        (refused,) = await store.put_entries([stranger])
        assert codes([refused]) == [(REJECTED, "trust.not_member")]
        assert not (await inner.has_entries([stranger.cid]))[0]
    finally:
        await store.aclose()


async def test_inline_puts_need_an_inner_store_that_has_them() -> None:
    store = GuardedStore(MemoryStore(), DirectoryBook())
    assert store.try_put_entries([entry(WRITER, "main", 1 << 40)]) is None
