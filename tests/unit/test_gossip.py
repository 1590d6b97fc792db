"""Gossip's decisions without IO: topic names, the message format, what a node does
with each message, subscriptions (all or nothing, persisted), the fetch queue and
the head-exchange schedule (a fake clock: timers are outputs)."""

from __future__ import annotations

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
from loomdb.replication.gossip import RECEIVE_COUNTERS, Delays, GossipCounters, Verdict, decide
from loomdb.replication.heads import HeadSchedule
from loomdb.replication.message import (
    MAX_INLINE,
    MAX_MESSAGE,
    Announcement,
    GossipEntry,
    OversizedError,
    encode_entry,
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
    assert decision.verdict is Verdict.DROP and decision.counter in RECEIVE_COUNTERS


# --- decisions ------------------------------------------------------------------------------


def test_each_message_gets_its_decision() -> None:
    good = entry()
    data = message(good)
    stored = decide(data, from_self=False, wants=wants_all, check=no_check)
    assert (stored.verdict, stored.counter, stored.entry) == (Verdict.STORE, "to_store", good)
    assert decide(data, from_self=True, wants=wants_all, check=no_check).counter == "own"

    def only_d2(space: str, collection: str, document: str) -> bool:
        return document == "d2"

    assert decide(data, from_self=False, wants=only_d2, check=no_check).counter == "not_subscribed"

    flipped = bytearray(good.raw)
    flipped[-1] ^= 1  # the signature
    bad = encode_entry(bytes(flipped), "main", "notes", "d1", good.cid)
    verdict = decide(bad, from_self=False, wants=wants_all, check=no_check)
    assert verdict.counter == "unverifiable" and "entry." in verdict.reason

    def stranger(e: Entry) -> None:
        raise NotMemberError("not a member")

    refused = decide(data, from_self=False, wants=wants_all, check=stranger)
    assert (refused.verdict, refused.counter) == (Verdict.DROP, "refused")

    big = entry(payload=b"x" * (MAX_INLINE + 1))
    fetch = decide(message(big), from_self=False, wants=wants_all, check=no_check)
    assert (fetch.verdict, fetch.document) == (Verdict.FETCH, ("main", "notes", "d1"))
    assert decide(message(big), from_self=False, wants=only_d2, check=no_check).counter == (
        "not_subscribed"
    )


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
