"""Negentropy v1: codec, known vectors, frame limits, version handling, bad input.

The known vectors were computed by nostr-tools 2.25.2 (nip77), through
tests/interop/negentropy_peer.mjs; test_negentropy_interop.py checks against
it live.
"""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loomdb.errors import ProtocolError, ProtocolVersionError, ValidationError
from loomdb.sync.negentropy import (
    BUCKETS,
    FINGERPRINT_SIZE,
    MODE_FINGERPRINT,
    MODE_ID_LIST,
    MODE_SKIP,
    PROTOCOL_VERSION,
    Negentropy,
    _parse_ranges,
    decode_varint,
    encode_varint,
    fingerprint,
    minimal_bound,
)
from loomdb.sync.ranges import INFINITY, ZERO, Item, MemoryRangeIndex

V1 = bytes([PROTOCOL_VERSION])


def id_of(n: int) -> bytes:
    return n.to_bytes(32, "big")


def random_items(rng: random.Random, n: int, spread: int = 1000) -> list[Item]:
    items: set[Item] = set()
    while len(items) < n:
        items.add((1 + rng.randrange(spread), rng.randbytes(32)))
    return sorted(items)


def run(
    a: list[Item], b: list[Item], limit: int = 60_000
) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Reconcile with a initiating: (every message both ways, have, need)."""
    initiator = Negentropy(MemoryRangeIndex(a), limit)
    responder = Negentropy(MemoryRangeIndex(b), limit)
    messages: list[bytes] = []
    have: list[bytes] = []
    need: list[bytes] = []
    message: bytes | None = initiator.initiate()
    while message is not None:
        messages.append(message)
        assert len(messages) < 2_000
        reply = responder.reconcile(message)
        messages.append(reply)
        message, h, n = initiator.reconcile_initiator(reply)
        have += h
        need += n
    return messages, have, need


def ids(items: list[Item]) -> set[bytes]:
    return {ident for _, ident in items}


# --- varints --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8100"),
        (300, "822c"),
        (16_383, "ff7f"),
        (16_384, "818000"),
        ((1 << 64) - 1, "81ffffffffffffffff7f"),
    ],
)
def test_varint_encodings(value: int, encoded: str) -> None:
    assert encode_varint(value).hex() == encoded
    assert decode_varint(bytes.fromhex(encoded)) == (value, len(encoded) // 2)
    # and in the middle of something
    assert decode_varint(b"\xaa" + bytes.fromhex(encoded) + b"\x05", 1) == (
        value,
        1 + len(encoded) // 2,
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"\x81", "truncated"),
        (b"\xff\xff", "truncated"),
        (b"\x80\x01", "minimal"),
        (b"\x80\x80\x00", "minimal"),
        (b"\x82" + b"\x80" * 8 + b"\x00", "64 bits"),  # 2**64
        (b"\xff" * 12 + b"\x7f", "64 bits"),
    ],
)
def test_bad_varints(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode_varint(data)


def test_varint_round_trip() -> None:
    rng = random.Random(1)
    for bits in range(65):
        for _ in range(5):
            value = rng.getrandbits(bits) if bits else 0
            assert decode_varint(encode_varint(value)) == (value, len(encode_varint(value)))


# --- fingerprints and bounds ------------------------------------------------------


def test_fingerprint_known_values() -> None:
    # nostr-tools: fingerprint of the empty set, and of ids 1 and 2 (big-endian)
    assert fingerprint(0, 0).hex() == "7f9c9e31ac8256ca2f258583df262dbc"
    total = int.from_bytes(id_of(1), "little") + int.from_bytes(id_of(2), "little")
    assert fingerprint(2, total).hex() == "66a30d7fe40a00febafa5189d86eb1c5"
    # the sum wraps around 2**256
    wrapping = [(5, b"\xff" * 32), (5, id_of(1)), (6, id_of(256))]
    index = MemoryRangeIndex(wrapping)
    assert fingerprint(*index.fingerprint_sum(ZERO, INFINITY)).hex() == (
        "ba708bbe5f5f238f57f2f9fe8a582784"
    )
    assert fingerprint(3, (1 << 256) + 5) == fingerprint(3, 5)
    assert len(fingerprint(10**6, 12345)) == FINGERPRINT_SIZE
    # the count is part of it
    assert fingerprint(1, 0) != fingerprint(0, 0)


def vector_items() -> list[Item]:
    return [(1000 + i // 3, hashlib.sha256(b"loomdb-vector-%d" % i).digest()) for i in range(40)]


VECTOR_40 = (
    "61876a0001ac92d9322e58a59ca30857cc11889e5e020001ff5d97567524a8569c57e38b9b05284d020001"
    "64df428a0b6fe4d673ef115bde2070be020001b6157b2fd3f1ea88a7887996cf1b48620200012597369e20"
    "57579e519a42187e1984ff02000153999680dd7430883e520eca6ba23c8d02000125ef573467621f4cdee6"
    "73972cc16912020001e042935be3a8a64a007eec7206469a9a01017d0144dcb754f27224f94ddc87b342dd"
    "f83b0201d70187fb03297023828df97ac3327043c1bb0200016fb2339f8e48c260de3665f2d4c687bb0101"
    "bf010d09fdc777ac45cdd200fe803793a17b02019c01b9fae5b44af07d5f425b1979601a08ba0200016"
    "5e6d3ff1e0b6ef82ed05d50d68904ea0101fb01f6cc2001dd18e66c0718c726e94b0a0100000151ad6361"
    "dc271585f7af0e6fb5c3f84a"
)


def test_first_messages_known_values() -> None:
    assert Negentropy(MemoryRangeIndex()).initiate().hex() == "6100000200"
    two = MemoryRangeIndex([(1000, id_of(1)), (1001, id_of(2))])
    assert Negentropy(two).initiate().hex() == ("61000002" + "02" + id_of(1).hex() + id_of(2).hex())
    # 40 items, three to a timestamp: 16 buckets, cut between timestamps
    # (prefix length 0) and within one (a one-byte prefix)
    index = MemoryRangeIndex(vector_items())
    assert Negentropy(index).initiate().hex() == VECTOR_40
    assert fingerprint(*index.fingerprint_sum(ZERO, INFINITY)).hex() == (
        "f9508ea584ea8831335a1f557df6bd8f"
    )


def test_first_message_splits_into_buckets() -> None:
    rng = random.Random(2)
    items = random_items(rng, 1000)
    message = Negentropy(MemoryRangeIndex(items)).initiate()
    ranges = _parse_ranges(message)
    assert [mode for _, _, mode, _ in ranges] == [MODE_FINGERPRINT] * BUCKETS
    assert ranges[-1][1] == INFINITY
    # buckets of 62 or 63 items, each fingerprinted
    index = MemoryRangeIndex(items)
    for lower, upper, _, payload in ranges:
        count, total = index.fingerprint_sum(lower, upper)
        assert count in (62, 63)
        assert payload == fingerprint(count, total)
    # fewer than 2 * BUCKETS: one IdList
    small = random_items(rng, 2 * BUCKETS - 1)
    ranges = _parse_ranges(Negentropy(MemoryRangeIndex(small)).initiate())
    assert len(ranges) == 1
    assert ranges[0][2] == MODE_ID_LIST
    assert ranges[0][3] == b"".join(ident for _, ident in small)


def test_minimal_bounds() -> None:
    a = (7, bytes.fromhex("aabbcc") + bytes(29))
    b = (7, bytes.fromhex("aabbdd") + bytes(29))
    assert minimal_bound(a, b) == (7, bytes.fromhex("aabbdd") + bytes(29))
    assert minimal_bound(a, (8, b"\x00" * 32)) == (8, bytes(32))
    assert minimal_bound(a, (9, b"\x12" * 32)) == (9, bytes(32))  # a new timestamp: no prefix
    first = (7, bytes(31) + b"\x01")
    last = (7, bytes(31) + b"\x02")
    assert minimal_bound(first, last) == last  # differ in the last byte: the whole id
    high = (7, b"\x01" + bytes(31))
    assert minimal_bound((7, bytes(32)), high) == (7, b"\x01" + bytes(31))
    for prev, curr in [(a, b), (first, last), ((7, bytes(32)), high)]:
        bound = minimal_bound(prev, curr)
        assert prev < bound <= curr


def test_bounds_are_delta_encoded_and_shortest() -> None:
    # two buckets' boundary between timestamps 10 and 1_000_010: delta 1_000_000
    items = [(10, id_of(i)) for i in range(16)] + [(1_000_010, id_of(i)) for i in range(16)]
    message = Negentropy(MemoryRangeIndex(items)).initiate()
    ranges = _parse_ranges(message)
    assert len(ranges) == BUCKETS
    # item pairs share a timestamp; ids differ in the last byte: 32-byte prefixes
    assert ranges[0][1] == (10, id_of(2))
    assert ranges[7][1] == (1_000_010, bytes(32))  # the cut between timestamps
    # written as 1 + delta after the previous bound: (10 - 10) + 1 = 1 ... then
    # 1_000_010 - 10 + 1 for the cut, and 0 for infinity
    assert message[1:3] == b"\x0b\x20"  # 1 + 10, prefix length 32
    cut = encode_varint(1_000_000 + 1) + b"\x00"
    assert cut + bytes([MODE_FINGERPRINT]) in message
    assert message.endswith(b"\x00\x00" + bytes([MODE_FINGERPRINT]) + ranges[-1][3])


# --- reconciliation ----------------------------------------------------------------


def test_identical_sets_take_one_round() -> None:
    items = random_items(random.Random(3), 3000)
    messages, have, need = run(items, items)
    assert len(messages) == 2
    assert messages[1] == V1  # everything matches: the version byte alone
    assert have == need == []


def test_empty_against_full() -> None:
    items = random_items(random.Random(4), 2000)
    _, have, need = run([], items)
    assert sorted(need) == sorted(ids(items))
    assert have == []
    _, have, need = run(items, [])
    assert sorted(have) == sorted(ids(items))
    assert need == []
    _, have, need = run([], [])
    assert have == need == []


def test_responder_holding_all_listed_ids_answers_short() -> None:
    # The responder holds a superset: it answers an IdList with Skips and the
    # ids the initiator lacks, not with all its ids.
    rng = random.Random(5)
    b = random_items(rng, 20)
    a = b[::2]
    messages, have, need = run(a, b)
    assert sorted(need) == sorted(ids(b) - ids(a))
    assert have == []
    assert len(messages) == 2
    reply = messages[1]
    assert len(reply) < 1 + 32 * len(b)  # shorter than a full IdList
    index = MemoryRangeIndex(b)
    modes = [mode for _, _, mode, _ in _parse_ranges(reply)]
    assert MODE_SKIP in modes
    check_describes(reply, index)


def test_responder_lacking_listed_ids_answers_short() -> None:
    # The responder lacks some of the listed ids: it lists their neighbours and
    # fingerprints the rest.
    rng = random.Random(6)
    shared = random_items(rng, 25)
    a = shared + [(item[0], rng.randbytes(32)) for item in shared[5:7]]
    b = shared + [(item[0], rng.randbytes(32)) for item in shared[18:19]]
    messages, have, need = run(a, b)
    assert sorted(have) == sorted(ids(a) - ids(b))
    assert sorted(need) == sorted(ids(b) - ids(a))
    reply = messages[1]
    assert MODE_FINGERPRINT in [mode for _, _, mode, _ in _parse_ranges(reply)]
    assert len(reply) < 1 + 32 * len(b)
    check_describes(reply, MemoryRangeIndex(b))


def shuffle_id_lists(message: bytes, rng: random.Random) -> bytes:
    """The same message with the ids of each IdList in random order (legal,
    though no implementation does it)."""
    from loomdb.sync.negentropy import _BoundWriter

    writer = _BoundWriter()
    out = [V1]
    for _, upper, mode, payload in _parse_ranges(message):
        out += [writer.encode(upper), encode_varint(mode)]
        if mode == MODE_FINGERPRINT:
            out.append(payload)
        elif mode == MODE_ID_LIST:
            listed = [payload[i : i + 32] for i in range(0, len(payload), 32)]
            rng.shuffle(listed)
            out += [encode_varint(len(listed)), *listed]
    return b"".join(out)


@pytest.mark.parametrize("seed", range(8))
def test_id_lists_out_of_order_cost_rounds_not_differences(seed: int) -> None:
    rng = random.Random(seed)
    everything = random_items(rng, 600, spread=rng.choice((3, 50, 10_000)))
    a = [item for item in everything if rng.random() < 0.9]
    b = [item for item in everything if rng.random() < 0.9]
    initiator = Negentropy(MemoryRangeIndex(a))
    responder = Negentropy(MemoryRangeIndex(b))
    have: list[bytes] = []
    need: list[bytes] = []
    message: bytes | None = initiator.initiate()
    rounds = 0
    while message is not None:
        rounds += 1
        assert rounds < 30
        reply = responder.reconcile(shuffle_id_lists(message, rng))
        message, h, n = initiator.reconcile_initiator(reply)
        have += h
        need += n
    assert sorted(have) == sorted(ids(a) - ids(b))
    assert sorted(need) == sorted(ids(b) - ids(a))


def check_describes(message: bytes, index: MemoryRangeIndex) -> None:
    """Every Fingerprint in a message we sent is of our items in exactly its
    range, and every IdList lists exactly our items there."""
    for lower, upper, mode, payload in _parse_ranges(message):
        if mode == MODE_FINGERPRINT:
            assert payload == fingerprint(*index.fingerprint_sum(lower, upper))
        elif mode == MODE_ID_LIST:
            assert payload == b"".join(ident for _, ident in index.items(lower, upper))


def test_settled_ranges_are_not_reconciled_again() -> None:
    # Found by the property test: a frame-limited answer folded ranges the
    # initiator had settled (their entries not moved yet) into one fingerprint,
    # so they were reconciled, and their differences reported, a second time.
    rng = random.Random(4079824230)
    prefix = rng.randbytes(29)
    seen: set[bytes] = set()
    groups: list[list[Item]] = []
    for size in (32, 44, 382):
        group: list[Item] = []
        while len(group) < size:
            ident = prefix + rng.randbytes(3)
            if ident not in seen:
                seen.add(ident)
                group.append((rng.randrange(3), ident))
        groups.append(group)
    shared, only_a, only_b = groups
    a, b = shared + only_a, shared + only_b
    for first, second in ((a, b), (b, a)):
        messages, have, need = run(first, second, limit=4096)
        assert max(map(len, messages)) <= 4096
        assert sorted(have) == sorted(ids(first) - ids(second))
        assert sorted(need) == sorted(ids(second) - ids(first))


# --- frame size limits -----------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, 3000, 4095, -1])
def test_frame_size_limit_is_none_or_at_least_4096(limit: int) -> None:
    if limit == 0:
        assert Negentropy(MemoryRangeIndex(), limit).frame_size_limit == 0
        return
    with pytest.raises(ValidationError, match="4096"):
        Negentropy(MemoryRangeIndex(), limit)


@pytest.mark.parametrize("seed", range(4))
def test_frame_size_limit_respected_both_ways(seed: int) -> None:
    rng = random.Random(seed)
    everything = random_items(rng, 6000, spread=rng.choice((20, 100_000)))
    a = [item for item in everything if rng.random() < 0.85]
    b = [item for item in everything if rng.random() < 0.85]
    unlimited, have0, need0 = run(a, b, limit=0)
    limited, have, need = run(a, b, limit=4096)
    assert max(map(len, limited)) <= 4096
    assert max(map(len, unlimited)) > 4096  # so the limit did bite
    assert len(limited) > len(unlimited)  # ... and cost rounds
    assert sorted(have) == sorted(have0) == sorted(ids(a) - ids(b))
    assert sorted(need) == sorted(need0) == sorted(ids(b) - ids(a))
    # every message was a faithful description of its sender's set
    index_a, index_b = MemoryRangeIndex(a), MemoryRangeIndex(b)
    for k, message in enumerate(limited):
        if len(message) > 1:
            check_describes(message, index_a if k % 2 == 0 else index_b)


def test_long_id_list_answer_is_cut_at_the_frame_limit() -> None:
    # The initiator holds 5 items, the responder 3,000 in the same range: its
    # answer to the initiator's IdList is cut, and the rest follows in more rounds.
    rng = random.Random(9)
    b = random_items(rng, 3000)
    a = b[:5]
    messages, have, need = run(a, b, limit=4096)
    assert max(map(len, messages)) <= 4096
    assert sorted(need) == sorted(ids(b) - ids(a))
    assert have == []
    assert len(messages) > 20


def test_responder_answers_a_huge_id_list_within_the_frame() -> None:
    # An initiator may list many ids in one range (another implementation,
    # with no frame limit of its own).
    rng = random.Random(10)
    theirs = random_items(rng, 500)
    ours = random_items(rng, 3000)
    message = V1 + b"\x00\x00" + bytes([MODE_ID_LIST]) + encode_varint(500)
    message += b"".join(ident for _, ident in theirs)
    reply = Negentropy(MemoryRangeIndex(ours), 4096).reconcile(message)
    assert len(reply) <= 4096
    check_describes(reply, MemoryRangeIndex(ours))
    ranges = _parse_ranges(reply)
    assert ranges[-1][1] == INFINITY
    assert ranges[-1][2] == MODE_FINGERPRINT  # the rest, to be reconciled further


def alternating_message(rng: random.Random, count: int) -> tuple[bytes, list[tuple[Item, Item]]]:
    """A message of ``count`` ranges, Skips and random fingerprints alternating;
    and its Skip ranges."""
    from loomdb.sync.negentropy import _BoundWriter

    writer = _BoundWriter()
    parts = [V1]
    bounds = sorted({(ts, bytes(32)) for ts in rng.sample(range(1, 10**6), count)})
    skipped: list[tuple[Item, Item]] = []
    lower = ZERO
    for k, bound in enumerate(bounds):
        parts.append(writer.encode(bound))
        if k % 2:
            parts.append(bytes([MODE_SKIP]))
            skipped.append((lower, bound))
        else:
            parts += [bytes([MODE_FINGERPRINT]), rng.randbytes(16)]  # unlike ours
        lower = bound
    return b"".join(parts), skipped


@pytest.mark.parametrize("role", ["responder", "initiator"])
def test_skips_of_the_peer_never_go_into_our_fingerprints(role: str) -> None:
    # A 4 KB message of Skips and mismatched fingerprints alternating, whose full
    # answer is far over the frame: the answer must keep every Skip of the peer
    # out of its fingerprints (a range the initiator settled still differs until
    # the entries move).
    rng = random.Random(14)
    ours = MemoryRangeIndex(random_items(rng, 5000, spread=10**6))
    message, skipped = alternating_message(rng, 250)
    assert len(message) <= 4096
    negentropy = Negentropy(ours, 4096)
    reply = negentropy.reconcile(message) if role == "responder" else None
    if reply is None:
        reply, _, _ = negentropy.reconcile_initiator(message)
    assert reply is not None
    assert len(reply) <= 4096
    for low, high, mode, _ in _parse_ranges(reply):
        if mode != MODE_SKIP:
            assert not any(low < s_high and s_low < high for s_low, s_high in skipped)
    check_describes(reply, ours)


def test_when_nothing_else_fits_one_fingerprint_ends_the_message() -> None:
    # Twice as many alternations (a peer with a larger frame): not even Skips
    # and one fingerprint per open run fit, so a fingerprint to infinity ends it.
    rng = random.Random(15)
    ours = MemoryRangeIndex(random_items(rng, 5000, spread=10**6))
    message, _ = alternating_message(rng, 600)
    assert len(message) > 4096
    reply = Negentropy(ours, 4096).reconcile(message)
    assert len(reply) <= 4096
    ranges = _parse_ranges(reply)
    assert ranges[-1][1] == INFINITY
    assert ranges[-1][2] == MODE_FINGERPRINT
    covered = [r for r in _parse_ranges(message) if r[0] >= ranges[-1][0]]
    assert len(covered) > 50  # it stands for many of the message's ranges
    check_describes(reply, ours)


# --- versions ------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0x60, 0x62, 0x6F])
def test_unsupported_version(version: int) -> None:
    negentropy = Negentropy(MemoryRangeIndex(random_items(random.Random(1), 10)))
    message = bytes([version]) + b"\x00\x00\x02\x00"
    # the responder answers with the version it speaks, and nothing else
    assert negentropy.reconcile(message) == V1
    assert negentropy.reconcile(bytes([version])) == V1
    with pytest.raises(ProtocolVersionError, match="0x61") as caught:
        negentropy.reconcile_initiator(message)
    assert caught.value.code == "sync.version"


@pytest.mark.parametrize("first", [0x00, 0x5F, 0x70, 0xFF, ord("{")])
def test_not_a_negentropy_message(first: int) -> None:
    negentropy = Negentropy(MemoryRangeIndex())
    for method in (negentropy.reconcile, negentropy.reconcile_initiator):
        with pytest.raises(ProtocolError, match="version byte"):
            method(bytes([first]) + b"\x00\x00\x02\x00")


def test_version_byte_alone() -> None:
    negentropy = Negentropy(MemoryRangeIndex(random_items(random.Random(1), 10)))
    # from the responder: everything matched, the initiator is done
    assert negentropy.reconcile_initiator(V1) == (None, [], [])
    # to a responder: nothing to answer (an implicit Skip covers everything)
    assert negentropy.reconcile(V1) == V1


# --- malformed input -----------------------------------------------------------------

FP = bytes(16)
MALFORMED = {
    "empty": b"",
    "truncated bound timestamp": V1 + b"\x81",
    "truncated before prefix length": V1 + b"\x05",
    "truncated prefix": V1 + b"\x05\x04\xaa\xbb",
    "prefix over 32 bytes": V1 + b"\x05\x21" + bytes(33) + b"\x00",
    "prefix length as a long varint": V1 + b"\x05\x81\x00" + bytes(128) + b"\x00",
    "truncated before mode": V1 + b"\x05\x00",
    "unknown mode": V1 + b"\x05\x00\x03",
    "mode as a long varint": V1 + b"\x05\x00\x80\x01",
    "truncated fingerprint": V1 + b"\x05\x00\x01" + bytes(15),
    "truncated id": V1 + b"\x05\x00\x02\x01" + bytes(31),
    "count overruns": V1 + b"\x05\x00\x02\x02" + bytes(32),
    "huge count": V1 + b"\x05\x00\x02" + encode_varint((1 << 64) - 1) + bytes(64),
    "count over 64 bits": V1 + b"\x05\x00\x02" + b"\x82" + b"\x80" * 8 + b"\x00",
    "timestamp over 64 bits": V1 + b"\x82" + b"\x80" * 8 + b"\x00" + b"\x00\x00",
    "non-minimal timestamp": V1 + b"\x80\x05\x00\x00",
    "bounds out of order": V1 + b"\x05\x01\x80\x00" + b"\x01\x01\x10\x00",
    "trailing junk": V1 + b"\x05\x00\x00" + b"\x00\x00\x01" + FP + b"\x07",
    "trailing byte after infinity": V1 + b"\x00\x00\x00" + b"\x01",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_messages_raise_protocol_error(name: str) -> None:
    negentropy = Negentropy(MemoryRangeIndex(random_items(random.Random(1), 100)))
    for method in (negentropy.reconcile, negentropy.reconcile_initiator):
        with pytest.raises(ProtocolError):
            method(MALFORMED[name])


def test_well_formed_edge_messages() -> None:
    index = MemoryRangeIndex(random_items(random.Random(1), 100))
    negentropy = Negentropy(index)
    for message in [
        V1 + b"\x05\x00\x00",  # a Skip that stops short of infinity
        V1 + b"\x05\x01\x10\x00" + b"\x01\x01\x10\x00",  # equal bounds: an empty range
        V1 + b"\x00\x00\x00" + b"\x00\x00\x00",  # infinity twice
        V1 + b"\x00\x00\x02\x00" + b"\x05\x00\x02\x00",  # bounds after infinity saturate
        V1 + b"\x01\x20" + b"\xff" * 32 + b"\x00",  # a full 32-byte prefix
    ]:
        negentropy.reconcile(message)
        negentropy.reconcile_initiator(message)


def test_message_types() -> None:
    negentropy = Negentropy(MemoryRangeIndex())
    assert negentropy.reconcile(bytearray(V1)) == V1
    assert negentropy.reconcile(memoryview(V1)) == V1
    with pytest.raises(ProtocolError):
        negentropy.reconcile("61")  # type: ignore[arg-type]


def valid_messages() -> list[bytes]:
    rng = random.Random(12)
    everything = random_items(rng, 400, spread=30)
    a = [item for item in everything if rng.random() < 0.8]
    b = [item for item in everything if rng.random() < 0.8]
    messages, _, _ = run(a, b, limit=4096)
    return messages


VALID = valid_messages()
GARBAGE_INDEX = MemoryRangeIndex(random_items(random.Random(13), 300, spread=30))


def only_protocol_errors(message: bytes) -> None:
    negentropy = Negentropy(GARBAGE_INDEX, 4096)
    try:
        reply = negentropy.reconcile(message)
        assert len(reply) <= 4096
    except (ProtocolError, ProtocolVersionError):
        pass
    try:
        answer, _, _ = negentropy.reconcile_initiator(message)
        assert answer is None or len(answer) <= 4096
    except (ProtocolError, ProtocolVersionError):
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    only_protocol_errors(data)
    only_protocol_errors(V1 + data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    st.integers(0, 10_000),
)
def test_mutated_messages_raise_only_protocol_errors(
    message: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    mutated = bytearray(message)
    for position, value in flips:
        mutated[position % len(mutated)] = value
    only_protocol_errors(bytes(mutated))
    only_protocol_errors(bytes(mutated[: cut % (len(mutated) + 1)]))
