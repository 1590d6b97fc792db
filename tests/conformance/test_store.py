"""The ContentAddressedStore conformance suite.

Every store implementation runs exactly these tests (the ``store`` fixture is
parametrised over them), on asyncio and on trio. A new store joins by adding
a factory to ``FACTORIES``.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from loomdb.entries.cid import CID
from loomdb.entries.entry import DEFAULT_POLICY, Entry, EntryPolicy
from loomdb.errors import (
    CidMismatchError,
    MalformedEntryError,
    SignatureError,
    StoreClosedError,
    UnknownKindError,
    ValidationError,
)
from loomdb.stores import ContentAddressedStore, MemoryStore, PutStatus, SQLiteStore
from loomdb.stores.base import SetKey
from loomdb.stores.caching import CachingStore
from loomdb.stores.remote import RemoteStore
from loomdb.stores.server import StoreServer
from loomdb.sync.replicate import SyncProgress, reconcile
from loomdb.transports.memory import MemoryNetwork
from tests.support import EntryFactory, fake_cid, fields_of, sign_fields

pytestmark = pytest.mark.anyio

Factory = Callable[[Path, EntryPolicy], ContentAddressedStore]


def _remote(backing: ContentAddressedStore, hops: int = 1) -> RemoteStore:
    """A RemoteStore to a StoreServer over the memory network; with hops > 1, each
    server's store is itself a RemoteStore to the next (a passthrough chain)."""
    net = MemoryNetwork(seed=0)
    store = backing
    for hop in range(hops, 0, -1):
        net.serve(f"hop{hop}", StoreServer(store).handle)
        store = RemoteStore(net.channel(f"hop{hop - 1}", f"hop{hop}"), timeout=5)
    assert isinstance(store, RemoteStore)
    return store


FACTORIES: dict[str, Factory] = {
    "memory": lambda _tmp, policy: MemoryStore(policy),
    "sqlite": lambda tmp, policy: SQLiteStore(tmp / "store.db", policy=policy),
    "remote": lambda tmp, policy: _remote(SQLiteStore(tmp / "store.db", policy=policy)),
    "passthrough": lambda _tmp, policy: _remote(MemoryStore(policy), hops=3),
    "caching": lambda tmp, policy: CachingStore(
        SQLiteStore(tmp / "cache.db", policy=policy), _remote(MemoryStore(policy))
    ),
}


@pytest.fixture(params=sorted(FACTORIES))
def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[..., ContentAddressedStore]:
    factory = FACTORIES[request.param]
    return lambda policy=DEFAULT_POLICY: factory(tmp_path, policy)


@pytest.fixture
async def store(
    store_factory: Callable[..., ContentAddressedStore],
) -> AsyncIterator[ContentAddressedStore]:
    s = store_factory()
    yield s
    await s.aclose()


async def test_is_a_content_addressed_store(store: ContentAddressedStore) -> None:
    assert isinstance(store, ContentAddressedStore)
    assert await store.count() == 0
    assert (await store.store_head()).seq == 0


async def test_put_then_get_has_metadata(
    store: ContentAddressedStore, make_entry: EntryFactory
) -> None:
    a = make_entry(b"a")
    b = make_entry(b"b", parents=[a])
    results = await store.put_entries([a, b])
    assert [r.status for r in results] == [PutStatus.ACCEPTED] * 2
    assert [r.cid for r in results] == [a.cid, b.cid]
    missing = fake_cid(1)
    assert await store.get_entries([b.cid, missing, a.cid]) == [b, None, a]
    assert await store.has_entries([a.cid, missing]) == [True, False]
    meta = await store.get_metadata([b.cid, missing])
    assert meta == [b.meta, None]
    assert meta[0] is not None and meta[0].parents == (a.cid,) and meta[0].size == len(b.raw)
    fetched = (await store.get_entries([a.cid]))[0]
    assert fetched is not None and fetched.decrypt(make_entry.key) == b"a"


async def test_put_accepts_bytes_and_claimed_cid_pairs(
    store: ContentAddressedStore, make_entry: EntryFactory
) -> None:
    a, b = make_entry(b"a"), make_entry(b"b")
    results = await store.put_entries([a.raw, (b.cid, b.raw)])
    assert [r.status for r in results] == [PutStatus.ACCEPTED] * 2
    assert await store.count() == 2


async def test_put_is_idempotent(store: ContentAddressedStore, make_entry: EntryFactory) -> None:
    a = make_entry()
    first = await store.put_entries([a, a.raw])
    assert [r.status for r in first] == [PutStatus.ACCEPTED, PutStatus.DUPLICATE]
    again = await store.put_entries([a.raw, (a.cid, a.raw), a])
    assert [r.status for r in again] == [PutStatus.DUPLICATE] * 3
    assert all(r.ok for r in again)
    assert await store.count() == 1
    assert (await store.store_head()).seq == 1


async def test_bad_entries_are_rejected_and_the_rest_of_the_batch_kept(
    store: ContentAddressedStore, make_entry: EntryFactory
) -> None:
    good1, good2, victim = make_entry(b"1"), make_entry(b"2"), make_entry(b"3")
    flipped = bytearray(victim.raw)
    flipped[-1] ^= 0x01  # in the signature
    other = fields_of(make_entry())
    other["kind"] = "teleport"
    unknown_kind = sign_fields(other, make_entry.author)
    results = await store.put_entries(
        [good1, bytes(flipped), b"\x00garbage", (good1.cid, good2.raw), unknown_kind, good2]
    )
    statuses = [r.status for r in results]
    assert statuses == [
        PutStatus.ACCEPTED,
        PutStatus.REJECTED,
        PutStatus.REJECTED,
        PutStatus.REJECTED,
        PutStatus.REJECTED,
        PutStatus.ACCEPTED,
    ]
    assert isinstance(results[1].error, SignatureError)
    assert isinstance(results[2].error, MalformedEntryError)
    assert isinstance(results[3].error, CidMismatchError)
    assert isinstance(results[4].error, UnknownKindError)
    assert results[1].reason is not None and results[1].reason.startswith("entry.signature")
    assert await store.count() == 2
    assert await store.has_entries([good1.cid, good2.cid, victim.cid]) == [True, True, False]


async def test_store_policy_applies_to_local_entries_too(
    store_factory: Callable[..., ContentAddressedStore], make_entry: EntryFactory
) -> None:
    strict = store_factory(EntryPolicy(kinds=frozenset({"create"})))
    try:
        results = await strict.put_entries([make_entry(kind="change"), make_entry(kind="create")])
        assert [r.status for r in results] == [PutStatus.REJECTED, PutStatus.ACCEPTED]
        assert isinstance(results[0].error, UnknownKindError)
    finally:
        await strict.aclose()


async def test_bad_input_types_raise_validation_errors(store: ContentAddressedStore) -> None:
    with pytest.raises(ValidationError):
        await store.put_entries(["not an entry"])  # type: ignore[list-item]
    with pytest.raises(ValidationError):
        await store.get_entries([b"\x01" * 36])  # type: ignore[list-item]
    with pytest.raises(ValidationError):
        await store.scan(0, 0)


async def test_heads_follow_the_dag(store: ContentAddressedStore, make_entry: EntryFactory) -> None:
    root = make_entry(b"root")
    left = make_entry(b"left", parents=[root])
    right = make_entry(b"right", parents=[root])
    await store.put_entries([root])
    assert await store.heads("space-1", "notes", "doc-1") == [root.cid]
    await store.put_entries([left, right])
    assert await store.heads("space-1", "notes", "doc-1") == sorted([left.cid, right.cid])
    merge = make_entry(b"merge", parents=[left, right])
    await store.put_entries([merge])
    assert await store.heads("space-1", "notes", "doc-1") == [merge.cid]
    assert await store.heads("space-1", "notes", "no-such-doc") == []


@pytest.mark.parametrize("seed", range(6))
async def test_heads_do_not_depend_on_arrival_order(
    store: ContentAddressedStore, make_entry: EntryFactory, seed: int
) -> None:
    """Children before parents, in random batches: the heads end the same."""
    rng = random.Random(seed)
    entries = [make_entry(b"r0")]
    for i in range(30):
        parents = rng.sample(entries, k=min(len(entries), rng.randint(1, 3)))
        entries.append(make_entry(f"e{i}".encode(), parents=parents))
    named = {p for e in entries for p in e.parents}
    expected = sorted(e.cid for e in entries if e.cid not in named)
    shuffled = entries[:]
    rng.shuffle(shuffled)
    while shuffled:
        cut = rng.randint(1, 7)
        await store.put_entries(shuffled[:cut])
        shuffled = shuffled[cut:]
    assert await store.heads("space-1", "notes", "doc-1") == expected


async def test_heads_are_per_document(
    store: ContentAddressedStore, make_entry: EntryFactory
) -> None:
    a1 = make_entry(document="a")
    b1 = make_entry(document="b", parents=[a1])  # names an entry of another document
    await store.put_entries([b1, a1])
    assert await store.heads("space-1", "notes", "a") == [a1.cid]
    assert await store.heads("space-1", "notes", "b") == [b1.cid]


async def test_listings(store: ContentAddressedStore, make_entry: EntryFactory) -> None:
    entries = [
        make_entry(space="s1", collection="notes", document="d2"),
        make_entry(space="s1", collection="notes", document="d1"),
        make_entry(space="s1", collection="tasks", document="d1"),
        make_entry(space="s2", collection="notes", document="d9"),
    ]
    await store.put_entries(entries)
    assert await store.list_spaces() == ["s1", "s2"]
    assert await store.list_collections("s1") == ["notes", "tasks"]
    assert await store.list_documents("s1", "notes") == ["d1", "d2"]
    assert await store.list_documents("s1", "none") == []
    assert await store.list_collections("nope") == []


async def test_list_entries_puts_parents_first(
    store: ContentAddressedStore, make_entry: EntryFactory
) -> None:
    chain = make_entry.chain(6)
    await store.put_entries(list(reversed(chain)))
    listed = await store.list_entries("space-1", "notes", "doc-1")
    assert [m.cid for m in listed] == [e.cid for e in chain]
    assert [m.height for m in listed] == [1, 2, 3, 4, 5, 6]
    assert listed[2] == chain[2].meta


async def test_missing_parents(store: ContentAddressedStore, make_entry: EntryFactory) -> None:
    chain = make_entry.chain(4)
    await store.put_entries([chain[0], chain[2], chain[3]])
    assert await store.missing_parents([chain[3].cid, chain[2].cid]) == [chain[1].cid]
    assert await store.missing_parents([chain[3].cid]) == []
    assert await store.missing_parents([fake_cid(7)]) == []  # not held: nothing to say
    await store.put_entries([chain[1]])
    assert await store.missing_parents([e.cid for e in chain]) == []


async def test_scan_in_receipt_order_with_a_cursor(
    store: ContentAddressedStore, make_entry: EntryFactory
) -> None:
    first = [make_entry(str(i).encode()) for i in range(5)]
    await store.put_entries(first)
    second = [make_entry(str(i).encode()) for i in range(5, 8)]
    await store.put_entries([first[0], *second])  # a duplicate takes no sequence number
    seen = []
    cursor = 0
    while page := await store.scan(cursor, limit=3):
        seen.extend(page)
        cursor = page[-1].seq
    assert [r.entry.cid for r in seen] == [e.cid for e in first + second]
    assert [r.seq for r in seen] == list(range(1, 9))
    head = await store.store_head()
    assert head.seq == 8 and head.epoch
    assert await store.scan(8) == []


async def test_count(store: ContentAddressedStore, make_entry: EntryFactory) -> None:
    await store.put_entries([make_entry() for _ in range(7)])
    assert await store.count() == 7


async def test_closed_store_refuses_work(
    store_factory: Callable[..., ContentAddressedStore], make_entry: EntryFactory
) -> None:
    s = store_factory()
    await s.aclose()
    with pytest.raises(StoreClosedError):
        await s.put_entries([make_entry()])
    with pytest.raises(StoreClosedError):
        await s.count()
    await s.aclose()  # closing twice is fine


async def test_entries_from_other_authors_and_public_entries(
    store: ContentAddressedStore, make_entry: EntryFactory
) -> None:
    from tests.support import signing_key

    bob = EntryFactory(author=signing_key("bob"))
    entries = [make_entry(b"a"), bob(b"b"), make_entry(b"p", public=True)]
    assert all(r.status is PutStatus.ACCEPTED for r in await store.put_entries(entries))
    got = await store.get_entries([e.cid for e in entries])
    assert [g.author if g else None for g in got] == [e.author for e in entries]
    metas = await store.get_metadata([entries[2].cid])
    assert metas[0] is not None and metas[0].key_id is None


async def test_a_large_batch(store: ContentAddressedStore, make_entry: EntryFactory) -> None:
    """More ids than one SQL statement takes: chunking must be invisible."""
    entries = [make_entry(str(i).encode(), document=f"d{i % 13}") for i in range(1_300)]
    results = await store.put_entries(entries)
    assert all(r.status is PutStatus.ACCEPTED for r in results)
    assert await store.has_entries([e.cid for e in entries]) == [True] * 1_300
    got = await store.get_metadata([e.cid for e in entries])
    assert [m.cid if m else None for m in got] == [e.cid for e in entries]
    assert len(await store.list_documents("space-1", "notes")) == 13


def test_cids_are_hashable_keys_across_stores(make_entry: EntryFactory) -> None:
    e = make_entry()
    assert CID(e.cid.binary) == e.cid


async def test_accepted_entries_get_consecutive_seqs_in_receipt_order(
    store: ContentAddressedStore, make_entry: EntryFactory
) -> None:
    first = make_entry(document="a")
    await store.put_entries([first])
    batch = [make_entry(document="b"), first, make_entry(document="c")]
    results = await store.put_entries(batch)
    assert [r.seq for r in results] == [2, None, 3]
    scanned = await store.scan(0, 10)
    assert [(r.seq, r.entry.cid) for r in scanned] == [
        (1, first.cid), (2, batch[0].cid), (3, batch[2].cid)
    ]  # fmt: skip


@pytest.mark.parametrize("side", ["initiator", "responder"])
async def test_reconcile_finds_exactly_the_difference(
    store: ContentAddressedStore, make_entry: EntryFactory, side: str
) -> None:
    rng = random.Random(9)
    entries = []
    for d in range(6):
        entries += make_entry.chain(8, document=f"d{d}", collection=f"c{d % 2}")
    rng.shuffle(entries)
    mine, other_side = entries[:40], entries[8:]
    await store.put_entries(mine)
    other = MemoryStore()
    await other.put_entries(other_side)
    sets = [SetKey("space-1"), SetKey("space-1", "c1"), SetKey("space-1", "c0", "d2")]
    for key in sets:

        def inside(e: Entry, key: SetKey = key) -> bool:
            return (key.collection in (None, e.collection)) and (key.document in (None, e.document))

        a, b = (store, other) if side == "initiator" else (other, store)
        have, need = await reconcile(a, b, [key], SyncProgress())
        set_a = {e.cid for e in (mine if a is store else other_side) if inside(e)}
        set_b = {e.cid for e in (other_side if a is store else mine) if inside(e)}
        assert set(have) == set_a - set_b
        assert set(need) == set_b - set_a
        assert len(have) == len(set(have)) and len(need) == len(set(need))
