"""Gossip's decisions without IO: topic names, the message format, what a node does
with each message, subscriptions (all or nothing, persisted), the fetch queue and
the head-exchange schedule (a fake clock: timers are outputs)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loomdb.clock import pack_hlc
from loomdb.entries.entry import Entry, build_entry
from loomdb.errors import NotMemberError, ProtocolError, StoreCorruptError, ValidationError
from loomdb.identity.keys import NamedKey, SigningKey
from loomdb.replication.fetches import FetchQueue
from loomdb.replication.gossip import (
    ENTRY_COUNTERS,
    MESSAGE_COUNTERS,
    RECEIVE_COUNTERS,
    Delays,
    GossipCounters,
    PublishWindow,
    decide,
)
from loomdb.replication.heads import HeadSchedule
from loomdb.replication.message import (
    MAX_BATCH_ENTRIES,
    MAX_INLINE,
    MAX_MESSAGE,
    Announcement,
    GossipBatch,
    GossipEntry,
    OversizedError,
    encode_batch,
    encode_entry,
    pack,
    parse_message,
)
from loomdb.replication.subscriptions import Subscriptions, parse_document_name
from loomdb.replication.topics import PREFIX, collection_topic, document_topic, topics_of
from loomdb.sync.replicate import SyncScope

AUTHOR = SigningKey.generate()
KEY = NamedKey.generate("k@1")


def entry(doc: str = "d1", payload: bytes = b"{}", parents: tuple[Entry, ...] = ()) -> Entry:
    return build_entry(
        author=AUTHOR,
        space="main",
        collection="notes",
        document=doc,
        kind="create" if not parents else "change",
        payload=payload,
        created_at=1,
        parents=list(parents),
        key=KEY,
    )


def message(e: Entry) -> bytes:
    return encode_entry(e.raw, e.space, e.collection, e.document, e.cid)


def wants_all(space: str, collection: str, document: str) -> bool:
    return True


def no_check(e: Entry) -> None:
    return None


# --- topics -------------------------------------------------------------------------------


def test_topics_are_hashes_that_name_nothing_and_never_collide() -> None:
    doc, coll = topics_of("main", "notes", "d1")
    assert doc == document_topic("main", "notes", "d1")
    assert coll == collection_topic("main", "notes")
    for topic in (doc, coll):
        assert topic.startswith(PREFIX) and "notes" not in topic and "main" not in topic
    # length-prefixed parts: moving a character between names changes the topic
    assert collection_topic("ab", "c") != collection_topic("a", "bc")
    assert document_topic("a", "b", "c") != document_topic("a", "bc", "")
    # a document's topic is never its collection's, nor another document's
    assert len({doc, coll, document_topic("main", "notes", "d2")}) == 3
    assert collection_topic("main", "notes") == coll  # stable


# --- the message ---------------------------------------------------------------------------


def test_an_entry_is_carried_and_a_large_one_announced() -> None:
    small = entry()
    assert parse_message(message(small)) == GossipEntry(small.raw)
    big = entry(payload=b"x" * (MAX_INLINE + 10))
    assert isinstance(parse_message(message(big)), Announcement)
    assert parse_message(message(big)) == Announcement(big.cid, "main", "notes", "d1")
    assert len(message(big)) < 200


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xff",
        cbor2.dumps([1, 2]),
        cbor2.dumps({"v": 2, "e": b""}),
        cbor2.dumps({"v": 1, "e": "text"}),
        cbor2.dumps({"v": 1, "e": b"", "x": 1}),
        cbor2.dumps({"v": 1, "a": [b"\x01" * 36, "s", "c", "d"]}),
        cbor2.dumps({"v": 1, "a": [entry().cid.binary, "s", "", "d"]}),
        cbor2.dumps({"v": 1, "a": [entry().cid.binary, "s", "c"]}),
        cbor2.dumps(cbor2.CBORTag(42, b"x")),
        cbor2.dumps({"v": 3, "b": [b"x", b"y"]}),
        cbor2.dumps({"v": 2, "b": []}),
        cbor2.dumps({"v": 2, "b": [b"x"]}),  # one entry goes in the version-1 form
        cbor2.dumps({"v": 2, "b": b"xy"}),
        cbor2.dumps({"v": 2, "b": [b"x", "y"]}),
        cbor2.dumps({"v": 2, "b": [b"x", b""]}),
        cbor2.dumps({"v": 2, "b": [b"x", b"y"], "e": b"z"}),
        cbor2.dumps({"v": 2, "b": [b"x"] * (MAX_BATCH_ENTRIES + 1)}),
        cbor2.dumps({"v": 2, "b": [b"x", [b"y"]]}),
    ],
)
def test_garbage_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_message(data)


def test_an_oversized_message_is_refused_before_it_is_decoded() -> None:
    with pytest.raises(OversizedError):
        parse_message(b"\x00" * (MAX_MESSAGE + 1))


@given(st.binary(max_size=300))
def test_random_bytes_end_in_a_decision(data: bytes) -> None:
    decision = decide(data, from_self=False, wants=wants_all, check=no_check)
    assert decision.counter in MESSAGE_COUNTERS and not decision.entries


# --- batches --------------------------------------------------------------------------------


def many(n: int, payload: int = 10) -> list[Entry]:
    return [entry(f"d{i}", payload=bytes(payload)) for i in range(n)]


def carried(data: bytes) -> list[bytes]:
    parsed = parse_message(data)
    if isinstance(parsed, GossipBatch):
        return list(parsed.raws)
    assert isinstance(parsed, GossipEntry)
    return [parsed.raw]


def test_a_lone_entry_is_packed_in_the_version_1_form() -> None:
    [(data, n)] = pack([only := entry()])
    assert n == 1 and data == message(only) and parse_message(data) == GossipEntry(only.raw)


def test_entries_stored_together_go_in_one_batch_in_order() -> None:
    entries = many(50)
    [(data, n)] = pack(entries)
    assert n == 50 and cbor2.loads(data)["v"] == 2
    assert parse_message(data) == GossipBatch(tuple(e.raw for e in entries))


def test_batches_are_split_at_the_size_limit() -> None:
    entries = many(40, payload=10_000)  # ~400 KB: more than three messages' worth
    messages = list(pack(entries))
    assert len(messages) == 4  # 12 or 13 entries of ~10 KB in each 129 KiB
    assert all(len(data) <= MAX_MESSAGE for data, _ in messages)
    assert [r for data, _ in messages for r in carried(data)] == [e.raw for e in entries]
    assert [n for _, n in messages] == [len(carried(d)) for d, _ in messages]


def test_batches_are_split_at_the_entry_limit() -> None:
    entries = many(MAX_BATCH_ENTRIES + 5, payload=0)
    messages = list(pack(entries))
    assert [n for _, n in messages] == [MAX_BATCH_ENTRIES, 5]
    assert [r for data, _ in messages for r in carried(data)] == [e.raw for e in entries]


def test_a_large_entry_is_announced_where_it_stands() -> None:
    small, big = many(3), entry("big", payload=b"x" * (MAX_INLINE + 1))
    messages = list(pack([small[0], small[1], big, small[2]]))
    assert [n for _, n in messages] == [2, 1, 1]
    assert carried(messages[0][0]) == [small[0].raw, small[1].raw]
    assert parse_message(messages[1][0]) == Announcement(big.cid, "main", "notes", "big")
    assert parse_message(messages[2][0]) == GossipEntry(small[2].raw)  # alone: version 1


@given(st.lists(st.integers(0, 40_000), min_size=1, max_size=30))
def test_packing_keeps_every_entry_in_order_within_the_limits(sizes: list[int]) -> None:
    entries = [entry(f"d{i}", payload=bytes(n)) for i, n in enumerate(sizes)]
    messages = list(pack(entries))
    assert all(len(data) <= MAX_MESSAGE for data, _ in messages)
    assert [r for data, _ in messages for r in carried(data)] == [e.raw for e in entries]
    # greedy: no two neighbouring messages would have fitted in one
    for (a, _), (b, _) in itertools.pairwise(messages):
        assert len(a) + len(b) > MAX_MESSAGE - 16


def test_a_batch_at_the_limit_is_read_and_one_byte_over_is_oversized() -> None:
    entries = many(30, payload=4000)
    data, n = next(iter(pack(entries)))
    assert (
        len(data) <= MAX_MESSAGE
        and decide(data, from_self=False, wants=wants_all, check=no_check).counts["to_store"] == n
    )
    raws = [e.raw for e in entries]
    while len(encode_batch(raws)) <= MAX_MESSAGE:
        raws.append(raws[0])
    over = decide(encode_batch(raws), from_self=False, wants=wants_all, check=no_check)
    assert over.counter == "oversized" and not over.entries


def test_a_batch_decides_each_entry_and_keeps_the_good_ones_in_order() -> None:
    good = many(4)
    flipped = bytearray(good[1].raw)
    flipped[-1] ^= 1  # the signature
    stranger = entry("by-stranger")
    other = entry("d2-not-followed")
    raws = [good[0].raw, bytes(flipped), stranger.raw, other.raw, good[2].raw, good[3].raw]

    def wants(space: str, collection: str, document: str) -> bool:
        return document != "d2-not-followed"

    def check(e: Entry) -> None:
        if e.document == "by-stranger":
            raise NotMemberError("not a member")

    decision = decide(encode_batch(raws), from_self=False, wants=wants, check=check)
    assert decision.counter == "read" and decision.batch and decision.carried == 6
    assert decision.entries == (good[0], good[2], good[3])
    assert dict(decision.counts) == {
        "to_store": 3,
        "unverifiable": 1,
        "refused": 1,
        "not_subscribed": 1,
    }
    assert len(decision.reasons) == 2 and set(decision.counts) <= set(ENTRY_COUNTERS)
    own = decide(encode_batch(raws), from_self=True, wants=wants, check=check)
    assert own.counter == "own" and not own.entries and own.carried == 0


def test_the_publish_window_never_delays_a_lone_update() -> None:
    window = PublishWindow(0.005)
    assert window.pause(100.0) == 0.0  # nothing sent yet
    window.sent(100.0)
    assert window.pause(100.001) == pytest.approx(0.004)  # in a burst: wait for the rest
    assert window.pause(100.005) == 0.0
    assert window.pause(101.0) == 0.0  # after a quiet spell: at once


# --- decisions ------------------------------------------------------------------------------


def test_each_message_gets_its_decision() -> None:
    good = entry()
    data = message(good)
    stored = decide(data, from_self=False, wants=wants_all, check=no_check)
    assert (stored.counter, stored.entries, stored.batch) == ("read", (good,), False)
    assert dict(stored.counts) == {"to_store": 1}
    assert decide(data, from_self=True, wants=wants_all, check=no_check).counter == "own"

    def only_d2(space: str, collection: str, document: str) -> bool:
        return document == "d2"

    ignored = decide(data, from_self=False, wants=only_d2, check=no_check)
    assert ignored.counts["not_subscribed"] == 1 and not ignored.entries

    flipped = bytearray(good.raw)
    flipped[-1] ^= 1  # the signature
    bad = encode_entry(bytes(flipped), "main", "notes", "d1", good.cid)
    verdict = decide(bad, from_self=False, wants=wants_all, check=no_check)
    assert verdict.counts["unverifiable"] == 1 and "entry." in verdict.reasons[0]

    def stranger(e: Entry) -> None:
        raise NotMemberError("not a member")

    refused = decide(data, from_self=False, wants=wants_all, check=stranger)
    assert refused.counts["refused"] == 1 and not refused.entries

    big = entry(payload=b"x" * (MAX_INLINE + 1))
    fetch = decide(message(big), from_self=False, wants=wants_all, check=no_check)
    assert fetch.documents == (("main", "notes", "d1"),) and fetch.counts["announced"] == 1
    unfollowed = decide(message(big), from_self=False, wants=only_d2, check=no_check)
    assert unfollowed.counts["not_subscribed"] == 1 and not unfollowed.documents
    assert decide(b"junk", from_self=False, wants=wants_all, check=no_check).counter == "malformed"


def test_counters_show_every_name() -> None:
    counters = GossipCounters()
    counters["stored"] += 2
    shown = counters.as_dict()
    assert shown["stored"] == 2 and set(RECEIVE_COUNTERS) <= set(shown)
    assert all(v == 0 for k, v in shown.items() if k != "stored")


# --- subscriptions ---------------------------------------------------------------------------


def test_subscriptions_document_and_collection(tmp_path: Path) -> None:
    subs = Subscriptions(tmp_path / "subs.json")
    assert subs.add_documents("main", ["notes/d1", "notes/d1", "todo/t1"]) == [
        ("main", "notes", "d1"),
        ("main", "todo", "t1"),
    ]
    assert subs.wants("main", "notes", "d1") and not subs.wants("main", "notes", "d2")
    subs.add_collections("main", ["todo"])
    assert subs.wants("main", "todo", "t9")  # new documents of a followed collection
    assert not subs.wants("other", "todo", "t9")
    # one topic per collection, whatever the number of documents
    subs.add_documents("main", [f"notes/n{i}" for i in range(1000)])
    expected = {collection_topic("main", "notes"), collection_topic("main", "todo")}
    assert set(subs.topics()) == expected
    scopes = {s.space: s for s in subs.scopes()}
    assert scopes["main"].collections == ("todo",)
    assert ("notes", "d1") in scopes["main"].documents
    assert all(c != "todo" for c, _ in scopes["main"].documents)  # the collection covers it
    assert subs.remove_collections("main", ["todo", "never"]) == [("main", "todo")]
    assert not subs.wants("main", "todo", "t9") and subs.wants("main", "todo", "t1")


def test_a_batch_with_one_bad_name_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "subs.json"
    subs = Subscriptions(path)
    subs.add_collections("main", ["a"])
    before = path.read_bytes()
    for bad in (["b", "$schema"], ["b", "x/y"], ["b", ""], ["b", 3], []):
        with pytest.raises(ValidationError):
            subs.add_collections("main", bad)
    for bad_doc in (["notes/d2", "notes"], ["notes/d2", "a/b/c"], ["notes/d2", "notes/ "]):
        with pytest.raises(ValidationError):
            subs.add_documents("main", bad_doc)
    with pytest.raises(ValidationError):
        subs.remove_collections("main", ["a", ".."])
    assert subs.collections == {("main", "a")} and subs.documents == set()
    assert path.read_bytes() == before


def test_subscriptions_are_restored_and_a_bad_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "subs.json"
    subs = Subscriptions(path)
    subs.add_collections("main", ["a"])
    subs.add_documents("team~z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK", ["n/d"])
    again = Subscriptions(path)
    assert again.collections == subs.collections and again.documents == subs.documents
    assert not list(tmp_path.glob(".*tmp"))  # written through a temp file, renamed
    path.write_text(json.dumps({"version": 1, "collections": [["main", "$x"]], "documents": []}))
    with pytest.raises(StoreCorruptError):
        Subscriptions(path)


def test_document_names() -> None:
    assert parse_document_name("notes/d1") == ("notes", "d1")
    for bad in ("notes", "a/b/c", "/d", "c/", None):
        with pytest.raises(ValidationError):
            parse_document_name(bad)
    assert SyncScope("main", documents=(("notes", "d1"),)).sets()


# --- the fetch queue --------------------------------------------------------------------------


def test_fetches_are_deduplicated_bounded_and_in_order() -> None:
    queue = FetchQueue(limit=2)
    assert queue.add(("s", "c", "d1"), ["p1"])
    assert queue.add(("s", "c", "d1"), ["p2", "p1"])  # the same document: its peers added
    assert queue.add(("s", "c", "d2"), ["p3"])
    assert not queue.add(("s", "c", "d3"), ["p1"])  # full: refused (the caller counts it)
    assert len(queue) == 2
    assert queue.pop() == (("s", "c", "d1"), ["p1", "p2"])
    assert queue.pop() == (("s", "c", "d2"), ["p3"])
    assert queue.pop() is None


# --- head exchange's schedule -----------------------------------------------------------------


def test_head_exchange_on_connect_then_every_interval() -> None:
    schedule = HeadSchedule(interval=30.0)
    assert schedule.next_wakeup(0.0) == math.inf
    schedule.on_peers(["a"], now=0.0)
    assert schedule.due(0.0) == ["a"]
    assert schedule.due(0.0) == []  # running: not twice at once
    schedule.on_peers(["a", "b"], now=1.0)  # b connects: due at once
    assert schedule.due(1.0) == ["b"]
    schedule.finished("a", now=2.0)
    schedule.finished("b", now=3.0)
    assert schedule.next_wakeup(3.0) == 29.0  # a is due at 32
    assert schedule.due(31.9) == []
    assert schedule.due(32.0) == ["a"]
    schedule.on_peers(["a"], now=33.0)  # b went away
    schedule.on_peers(["a", "b"], now=34.0)  # and came back: due at once
    assert schedule.due(34.0) == ["b"]
    schedule.finished("a", now=35.0)
    schedule.on_peers([], now=36.0)
    schedule.finished("b", now=36.0)  # finished after it went: forgotten
    assert schedule.next_wakeup(36.0) == math.inf and schedule.running == frozenset()


def test_delays_are_summarised_from_the_entries_clock() -> None:
    delays = Delays(keep=100)
    assert delays.summary()["count"] == 0
    for ms in range(1, 101):
        delays.add(pack_hlc(1_000_000, 3), 1_000_000 + ms)
    delays.add(pack_hlc(2_000_000, 0), 1_999_000)  # an author's clock ahead: 0, not negative
    summary = delays.summary()
    assert summary["count"] == 100  # the last 100 kept
    assert summary["p50_ms"] == 51 and summary["p99_ms"] == 99 and summary["max_ms"] == 100
