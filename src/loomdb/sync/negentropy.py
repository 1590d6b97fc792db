"""Negentropy v1: range-based set reconciliation, sans-IO and wire compatible.

Two peers each hold a set of items ``(timestamp, 32-byte id)`` ordered by
timestamp then id (see :mod:`loomdb.sync.ranges`). The *initiator* sends a
first message; the *responder* answers every message; the initiator goes on
until it has nothing left to ask, and meanwhile learns which ids it has that
the responder lacks (*have*) and which the responder has that it lacks (*need*).
The protocol is Doug Hoyte's (github.com/hoytech/negentropy, docs/), also
NIP-77's; this is an implementation of its version 1, written from the spec.

Wire format (protocol version 1, byte ``0x61``)::

    Message  := version(0x61) Range*
    Range    := upperBound(Bound) mode(Varint) payload
    mode 0   Skip:        no payload; the sender has nothing more to say here
    mode 1   Fingerprint: 16 bytes, see :func:`fingerprint`
    mode 2   IdList:      Varint count, then count 32-byte ids
    Bound    := Varint(0 for infinity, else 1 + timestamp - previous timestamp)
                Varint(prefix length, 0..32) idPrefix (implicitly zero-padded to 32)
    Varint   := base 128, most significant digit first, high bit on all but the last

The ranges of a message are adjacent and ascending: the first starts at
:data:`~loomdb.sync.ranges.ZERO`, each starts where the previous ends, and an
implicit Skip covers whatever the last one leaves up to infinity. Timestamps
are delta-encoded against the previous bound *of the same message*. A peer
that does not speak the version of a message answers with its own version
byte alone.

How each range ``[lower, upper)`` of a message is answered:

* Skip: nothing to do.
* Fingerprint: equal to ours, nothing to do; otherwise we *split* our items of
  the range: fewer than ``2 * BUCKETS`` go out as an IdList, else the range is
  cut into ``BUCKETS`` buckets of (nearly) equal counts, each sent as a
  Fingerprint, the cut points being the shortest bounds that separate two
  neighbouring items.
* IdList, to the initiator: the range is settled; the ids we hold and the list
  lacks are *have*, the listed ids we lack are *need*.
* IdList, to the responder: it answers with its ids of the range (so that the
  initiator can settle it), or with a shorter answer that says the same, see
  ``Negentropy._answer_id_list``.

Settled ranges are answered by Skips, merged, and never end a message. The
initiator is done when its answer would be the version byte alone.

Frame size limit (0 = none, else at least 4096): no message we produce is
larger. The first range still open in a message is always answered in full,
so each message makes progress. Later ones are answered in full while that
leaves room to describe all the ranges after them; else sent back as our own
Fingerprint of the range, for the peer to split next time (it keeps its place
in the peer's split); and when not even that fits, the rest of the message is
described in *segments*: the settled ranges stay Skips and each run of open
ones becomes one Fingerprint. A responder's IdList answer too long for the
frame is cut at the shortest bound after the last id that fits, and the rest
follows in segments. Only if the segments do not fit either (the peer's
message alternates between settled and open ranges more often than our frame
can say: a peer with a larger frame; never seen in our tests between peers with
the same limit) does one Fingerprint of everything from there to infinity end
the message.

Invariants:

* every message covers ``[ZERO, INFINITY)`` by adjacent ascending ranges, and
  is at most the frame size limit;
* a range we leave to a Skip is settled: equal fingerprints, an IdList the
  initiator has processed, or a Skip from the peer; and a Skip from the peer
  never goes into one of our fingerprints (but for that last resort), so no
  settled range is reconciled again and the initiator reports each
  difference exactly once;
* every Fingerprint and IdList we send is of our items in exactly its range;
* the index is read only through :class:`~loomdb.sync.ranges.RangeIndex`: a
  split costs ``2 * (BUCKETS - 1)`` ``nth`` and ``BUCKETS - 1``
  ``fingerprint_sum`` calls, and ``items`` is called only on a range known to
  hold fewer than ``2 * BUCKETS`` of our items, on a range the peer listed,
  or with a limit;
* malformed input raises :class:`~loomdb.errors.ProtocolError`, nothing else.

Where this differs from the reference C++ and from nostr-tools' port (nip77),
on the same wire format (nothing here needs the peer to be this code):

* At the frame limit the reference and nostr-tools end the message at once
  with one fingerprint to infinity, computed over the items *after* the range
  they stopped at but sent for a range that starts at their last emitted
  bound, which may be further back. The two disagree, so a difference in the
  range they stopped at can be fingerprinted away (when the peer holds nothing
  there); and the fingerprint covers ranges that were settled but still
  differ, which get reconciled and reported again. We fingerprint exactly the
  ranges we send, send unanswered ranges back one by one, and keep settled
  ranges as Skips (above): with 4,096-byte frames, 20,000 items and about 1%
  different, 30 rounds against 40 to 46 with nostr-tools on either side;
  with 5,000 of 23,000 different, 119 rounds instead of 218.
* A responder's answer to an IdList: the reference lists all its ids of the
  range. When we hold every listed id, Skips over the runs we share and
  IdLists of our other items say the same in far fewer bytes. When we lack
  some, each lies between its neighbours in the peer's list (sent in item
  order by every implementation), so we list the neighbours with it, and
  cover the rest with our Fingerprints, not Skips, so that a list out of order
  costs a round, never a difference. We send whichever answer is shorter
  (1,000,000 against 999,900 items: 130 KB instead of 169 KB).
* nostr-tools answers an IdList as if it were always the initiator: it reports
  the differences through its callbacks and skips the range, so an initiator
  talking to it never hears of the differences in the ranges it listed. We
  answer as the reference responder does.
* nostr-tools throws on an unsupported version; as responder we reply with
  our version byte, as the spec says. nostr-tools decodes varints with 32-bit
  arithmetic, so it cannot take timestamps of 2**31 or more (nostr's are
  seconds; ours are 64-bit HLCs).
* We decode strictly: varints minimal and below 2**64, prefixes of at most 32
  bytes, bounds ascending, modes known, the message ending at a range's end.
  The reference accepts non-minimal varints.
"""

from __future__ import annotations

from hashlib import sha256
from typing import Final

from loomdb.errors import ProtocolError, ProtocolVersionError, ValidationError
from loomdb.sync.ranges import ID_SIZE, INFINITY, MAX_TIMESTAMP, SUM_MODULUS, ZERO, Item, RangeIndex

__all__ = [
    "BUCKETS",
    "DEFAULT_FRAME_SIZE_LIMIT",
    "FINGERPRINT_SIZE",
    "ID_SIZE",
    "MIN_FRAME_SIZE_LIMIT",
    "MODE_FINGERPRINT",
    "MODE_ID_LIST",
    "MODE_SKIP",
    "PROTOCOL_VERSION",
    "Negentropy",
    "decode_varint",
    "encode_varint",
    "fingerprint",
]

PROTOCOL_VERSION: Final = 0x61
"""Protocol version 1. Versions are the bytes ``0x60`` (v0) to ``0x6f``."""
FINGERPRINT_SIZE: Final = 16
BUCKETS: Final = 16
"""A mismatched range of at least ``2 * BUCKETS`` items is split in this many."""
MODE_SKIP: Final = 0
MODE_FINGERPRINT: Final = 1
MODE_ID_LIST: Final = 2
MIN_FRAME_SIZE_LIMIT: Final = 4096
DEFAULT_FRAME_SIZE_LIMIT: Final = 60_000

_VERSION_BYTE: Final = bytes((PROTOCOL_VERSION,))
_ID_LIST_BELOW: Final = 2 * BUCKETS
_MAX_U64: Final = (1 << 64) - 1
_SMALL_VARINTS: Final = tuple(bytes((i,)) for i in range(128))
_SKIP: Final = _SMALL_VARINTS[MODE_SKIP]
_FINGERPRINT: Final = _SMALL_VARINTS[MODE_FINGERPRINT]
_ID_LIST: Final = _SMALL_VARINTS[MODE_ID_LIST]
_PADDING: Final = tuple(bytes(n) for n in range(ID_SIZE + 1))
_ZERO_ID: Final = bytes(ID_SIZE)
_INFINITY_BOUND: Final = b"\x00\x00"  # timestamp 0 (infinity), prefix length 0
# The longest Bound: a 10-byte timestamp varint, the prefix length, a 32-byte prefix.
_MAX_BOUND_SIZE: Final = 10 + 1 + ID_SIZE
# What stopping at the frame limit may still have to write: a Skip, then a
# Fingerprint to infinity.
_STOP_RESERVE: Final = (_MAX_BOUND_SIZE + 1) + (len(_INFINITY_BOUND) + 1 + FINGERPRINT_SIZE)


# --- varints and fingerprints -------------------------------------------------------------


def encode_varint(n: int) -> bytes:
    """The Varint of ``0 <= n < 2**64``: base 128, most significant digit first."""
    if n < 128:
        if n < 0:
            raise ValueError("a varint is not negative")
        return _SMALL_VARINTS[n]
    out = bytearray((n & 0x7F,))
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.reverse()
    return bytes(out)


def decode_varint(data: bytes, pos: int = 0) -> tuple[int, int]:
    """Read a Varint at ``pos``: ``(value, position after it)``.

    Raises ProtocolError if it is truncated, not minimal (a leading zero
    digit), or not below 2**64."""
    try:
        byte = data[pos]
    except IndexError:
        raise ProtocolError("message truncated in a varint") from None
    pos += 1
    if byte < 0x80:
        return byte, pos
    if byte == 0x80:
        raise ProtocolError("varint not minimal (leading zero digit)")
    value = byte & 0x7F
    end = len(data)
    while True:
        if pos >= end:
            raise ProtocolError("message truncated in a varint")
        byte = data[pos]
        pos += 1
        value = (value << 7) | (byte & 0x7F)
        if value > _MAX_U64:
            raise ProtocolError("varint over 64 bits")
        if byte < 0x80:
            return value, pos


def fingerprint(count: int, id_sum: int) -> bytes:
    """The Fingerprint of a range holding ``count`` items whose ids sum (as
    little-endian 256-bit integers) to ``id_sum``: the first 16 bytes of
    SHA-256 of the sum (32 bytes, little-endian, mod 2**256) then Varint(count)."""
    digest = sha256((id_sum % SUM_MODULUS).to_bytes(ID_SIZE, "little") + encode_varint(count))
    return digest.digest()[:FINGERPRINT_SIZE]


def _fingerprint_of(items: list[Item]) -> bytes:
    return fingerprint(len(items), sum(int.from_bytes(item[1], "little") for item in items))


def minimal_bound(prev: Item, curr: Item) -> Item:
    """The least bound ``b`` (zero-padded, shortest prefix) with ``prev < b <= curr``,
    for items ``prev < curr``."""
    ts = curr[0]
    if prev[0] != ts:
        return (ts, _ZERO_ID)
    ident = curr[1]
    diff = int.from_bytes(prev[1], "big") ^ int.from_bytes(ident, "big")
    keep = ID_SIZE - (diff.bit_length() - 1) // 8 if diff else ID_SIZE
    return (ts, ident[:keep] + _PADDING[ID_SIZE - keep])


class _BoundWriter:
    """Encodes the bounds of one message, delta-encoding their timestamps."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = 0

    def encode(self, bound: Item) -> bytes:
        ts, ident = bound
        if ts == MAX_TIMESTAMP:
            self.last = MAX_TIMESTAMP
            return _INFINITY_BOUND
        delta = ts - self.last + 1
        self.last = ts
        prefix = ident.rstrip(b"\x00")
        head = _SMALL_VARINTS[delta] if delta < 128 else encode_varint(delta)
        return head + _SMALL_VARINTS[len(prefix)] + prefix


class _Work:
    """One incoming message being answered: its ranges, which are open, our
    (count, sum) of those that came as fingerprints, the answer being written,
    and (as initiator) the have and need ids found."""

    __slots__ = ("answer", "have", "is_open", "need", "ranges", "sums")

    def __init__(
        self,
        ranges: list[Range],
        is_open: list[bool],
        sums: list[tuple[int, int] | None],
        have: list[bytes] | None,
        need: list[bytes] | None,
    ) -> None:
        self.ranges = ranges
        self.is_open = is_open
        self.sums = sums
        self.answer = _Message()
        self.have = have
        self.need = need


class _Message:
    """A message being written: its parts and size, its bound writer, and
    whether a Skip is owed up to the lower bound of the range at hand."""

    __slots__ = ("parts", "size", "skip_pending", "writer")

    def __init__(self) -> None:
        self.parts: list[bytes] = [_VERSION_BYTE]
        self.size = 1
        self.writer = _BoundWriter()
        self.skip_pending = False

    def start(self, lower: Item) -> list[bytes]:
        """The first parts of what answers a range from ``lower``: the owed Skip, if any."""
        return [self.writer.encode(lower), _SKIP] if self.skip_pending else []

    def add(self, parts: list[bytes], size: int | None = None) -> None:
        self.parts += parts
        self.size += sum(map(len, parts)) if size is None else size
        self.skip_pending = False


# --- the engine ---------------------------------------------------------------------------


class Negentropy:
    """One side of a Negentropy v1 reconciliation over ``index``.

    Sans-IO and stateless between messages: it reads the index afresh for
    each message, so one instance may serve any number of exchanges (the
    index must not change during one exchange, or the exchange may miss the
    change). As initiator call :meth:`initiate`, then
    :meth:`reconcile_initiator` with each reply; as responder call
    :meth:`reconcile` with each message.
    """

    __slots__ = ("_frame_size_limit", "_index")

    def __init__(self, index: RangeIndex, frame_size_limit: int = DEFAULT_FRAME_SIZE_LIMIT) -> None:
        if frame_size_limit != 0 and frame_size_limit < MIN_FRAME_SIZE_LIMIT:
            raise ValidationError(
                f"frame size limit {frame_size_limit}: 0 (none) or at least {MIN_FRAME_SIZE_LIMIT}"
            )
        self._index = index
        self._frame_size_limit = frame_size_limit

    @property
    def frame_size_limit(self) -> int:
        return self._frame_size_limit

    def initiate(self) -> bytes:
        """The first message of an exchange: our whole set, split."""
        count, total = self._index.fingerprint_sum(ZERO, INFINITY)
        parts = [_VERSION_BYTE]
        self._split(ZERO, INFINITY, (count, total), _BoundWriter(), parts)
        return b"".join(parts)

    def reconcile(self, message: bytes) -> bytes:
        """As responder: the reply to ``message`` (always one, maybe the version byte alone)."""
        return self._answer(message, None, None)

    def reconcile_initiator(self, message: bytes) -> tuple[bytes | None, list[bytes], list[bytes]]:
        """As initiator: ``(next message or None when done, have ids, need ids)``.

        *have* are ids we hold that the responder lacks, *need* ids the
        responder holds that we lack, both learnt from this message only."""
        have: list[bytes] = []
        need: list[bytes] = []
        out = self._answer(message, have, need)
        return (None if len(out) == 1 else out), have, need

    # -- internals --------------------------------------------------------------------

    def _split(
        self,
        lower: Item,
        upper: Item,
        summary: tuple[int, int],
        writer: _BoundWriter,
        out: list[bytes],
    ) -> None:
        """Append the ranges that describe our items of ``[lower, upper)``
        (``summary`` is their count and id sum): an IdList, or BUCKETS Fingerprints."""
        count, total = summary
        index = self._index
        if count < _ID_LIST_BELOW:
            items = index.items(lower, upper)
            out.append(writer.encode(upper))
            out.append(_ID_LIST)
            out.append(encode_varint(len(items)))
            out.extend([item[1] for item in items])
            return
        nth = index.nth
        fingerprint_sum = index.fingerprint_sum
        encode = writer.encode
        per_bucket, with_extra = divmod(count, BUCKETS)
        rank = 0
        start = lower
        done_count = 0
        done_sum = 0
        for bucket in range(BUCKETS):
            rank += per_bucket + 1 if bucket < with_extra else per_bucket
            end = upper
            if rank < count:
                prev = nth(lower, rank - 1)
                curr = nth(prev, 1) if prev is not None else None
                if prev is not None and curr is not None:
                    end = minimal_bound(prev, curr)
                    if not start < end < upper:  # an index changing under us
                        end = upper
            if end is upper:
                bucket_count = count - done_count
                bucket_sum = total - done_sum
            else:
                bucket_count, bucket_sum = fingerprint_sum(start, end)
                done_count += bucket_count
                done_sum += bucket_sum
            out.append(encode(end))
            out.append(_FINGERPRINT)
            out.append(fingerprint(bucket_count, bucket_sum))
            if end is upper:
                return
            start = end

    def _answer(self, message: bytes, have: list[bytes] | None, need: list[bytes] | None) -> bytes:
        if not isinstance(message, bytes | bytearray | memoryview):
            raise ProtocolError("a negentropy message is bytes")
        data = bytes(message)
        if not data:
            raise ProtocolError("empty negentropy message")
        version = data[0]
        if version != PROTOCOL_VERSION:
            if not 0x60 <= version <= 0x6F:
                raise ProtocolError(f"not a negentropy message (version byte 0x{version:02x})")
            if have is None:
                return _VERSION_BYTE  # the responder names the version it speaks
            raise ProtocolVersionError(
                f"the peer speaks negentropy version 0x{version:02x};"
                f" this node supports 0x{PROTOCOL_VERSION:02x} (protocol v1) only"
            )
        ranges = _parse_ranges(data)
        # Which ranges are open: a fingerprint unlike ours, or (to a responder)
        # an IdList. The others are settled: Skips, equal fingerprints, and (to
        # the initiator) IdLists.
        fingerprint_sum = self._index.fingerprint_sum
        sums: list[tuple[int, int] | None] = []
        is_open: list[bool] = []
        for lower, upper, mode, payload in ranges:
            if mode == MODE_FINGERPRINT:
                summary = fingerprint_sum(lower, upper)
                sums.append(summary)
                is_open.append(fingerprint(*summary) != payload)
            else:
                sums.append(None)
                is_open.append(mode == MODE_ID_LIST and have is None)
        work = _Work(ranges, is_open, sums, have, need)
        if self._frame_size_limit:
            self._answer_within_limit(work)
        else:
            self._answer_all(work)
        return b"".join(work.answer.parts)

    def _answer_all(self, work: _Work) -> None:
        """No frame limit: answer every range in full."""
        ranges, is_open, sums, answer = work.ranges, work.is_open, work.sums, work.answer
        for i, (lower, upper, mode, payload) in enumerate(ranges):
            if not is_open[i]:
                self._settled(work, i)
            elif mode == MODE_FINGERPRINT:
                known = sums[i]
                assert known is not None
                parts = answer.start(lower)
                self._split(lower, upper, known, answer.writer, parts)
                answer.add(parts)
            else:
                ours = self._index.items(lower, upper)
                parts, size, pending = self._answer_id_list(
                    lower, upper, payload, ours, answer.writer, skip_pending=answer.skip_pending
                )
                answer.add(parts, size)
                answer.skip_pending = pending

    def _answer_within_limit(self, work: _Work) -> None:
        """Answer within the frame size limit. Open ranges are answered in full
        while that leaves room to describe all the ranges after them in
        *segments* (see :meth:`_segments`); the first open range always is, so
        every message makes progress. One that cannot be answered in full is
        sent back as our fingerprint of it (the peer splits it next time), and
        when not even that fits, the rest goes in segments."""
        ranges, is_open, sums, answer = work.ranges, work.is_open, work.sums, work.answer
        limit = self._frame_size_limit
        index = self._index
        writer = answer.writer
        segments_from, echoes_from = _reserves(ranges, is_open)
        progressed = False
        for i, (lower, upper, mode, payload) in enumerate(ranges):
            if not is_open[i]:
                self._settled(work, i)
                continue
            rest = segments_from[i + 1]
            # keep room for the rest in segments, or better, as echoes (up to a quarter)
            keep = max(rest, min(echoes_from[i + 1], limit // 4))
            room = limit - answer.size - _STOP_RESERVE
            mark = writer.last
            if mode == MODE_FINGERPRINT:
                known = sums[i]
                assert known is not None
                parts = answer.start(lower)
                self._split(lower, upper, known, writer, parts)
                size = sum(map(len, parts))
                if size <= room - keep or (not progressed and size <= room):
                    answer.add(parts, size)
                    progressed = True
                    continue
                writer.last = mark
            else:
                overhead = (_MAX_BOUND_SIZE + 1 if answer.skip_pending else 0) + _MAX_BOUND_SIZE + 6
                fits = (room - keep - overhead) // ID_SIZE
                ours = index.items(lower, upper, fits + 1) if fits >= 0 else None
                if ours is not None and len(ours) <= fits:
                    parts, size, pending = self._answer_id_list(
                        lower, upper, payload, ours, writer, skip_pending=answer.skip_pending
                    )
                    answer.add(parts, size)
                    answer.skip_pending = pending
                    progressed = True
                    continue
                if not progressed:
                    # the first open range, and our list of it is too long: send as
                    # much as leaves room for the rest in segments (or at least one id)
                    fits = max((room - segments_from[i] - overhead) // ID_SIZE, 1)
                    ours = index.items(lower, upper, fits + 1)
                    if len(ours) > fits:
                        cut = minimal_bound(ours[fits - 1], ours[fits])
                        parts = answer.start(lower)
                        parts += [writer.encode(cut), _ID_LIST, encode_varint(fits)]
                        parts += [item[1] for item in ours[:fits]]
                        answer.add(parts)
                        self._segments(work, i, cut)
                        return
                    parts, size, pending = self._answer_id_list(
                        lower, upper, payload, ours, writer, skip_pending=answer.skip_pending
                    )
                    answer.add(parts, size)
                    answer.skip_pending = pending
                    progressed = True
                    continue
            # not answered in full: send it back as our fingerprint of it
            known = sums[i]
            if known is None:
                known = sums[i] = index.fingerprint_sum(lower, upper)
            parts = answer.start(lower)
            parts += [writer.encode(upper), _FINGERPRINT, fingerprint(*known)]
            size = sum(map(len, parts))
            if size <= room - rest:
                answer.add(parts, size)
                continue
            writer.last = mark
            self._segments(work, i, lower)
            return

    def _segments(self, work: _Work, start: int, start_bound: Item) -> None:
        """Describe ``ranges[start:]`` (the first from ``start_bound`` on) at the
        least cost that loses nothing: settled ranges stay Skips, and each run of
        open ones becomes one Fingerprint of ours. The peer splits those again.

        A settled range must not go into a fingerprint: one the initiator
        settled from an IdList still differs (the entries have not moved yet),
        so the fingerprint would differ and the range be reconciled, and its
        differences reported, again. Only when not even this fits the frame
        (the peer's message alternates between settled and open ranges more
        often than our frame can say) does one fingerprint from there to
        infinity end the message, as in the reference, and then differences
        after it may be reported twice (never missed)."""
        ranges, is_open, answer = work.ranges, work.is_open, work.answer
        limit = self._frame_size_limit
        writer = answer.writer
        count = len(ranges)
        i = start
        while i < count:
            if not is_open[i]:
                self._settled(work, i)
                i += 1
                continue
            lower = start_bound if i == start else ranges[i][0]
            end = i
            while end + 1 < count and is_open[end + 1]:
                end += 1
            upper = ranges[end][1]
            mark = writer.last
            parts = answer.start(lower)
            parts += [writer.encode(upper), _FINGERPRINT]
            parts.append(fingerprint(*self._index.fingerprint_sum(lower, upper)))
            size = sum(map(len, parts))
            if answer.size + size + _STOP_RESERVE > limit:
                writer.last = mark
                self._stop(lower, answer)
                return
            answer.add(parts, size)
            i = end + 1

    def _settled(self, work: _Work, i: int) -> None:
        """Range ``i`` is settled: the initiator learns from it if it is an IdList,
        and either way it is skipped."""
        lower, upper, mode, payload = work.ranges[i]
        if mode == MODE_ID_LIST and work.have is not None:
            assert work.need is not None
            self._settle(lower, upper, payload, work.have, work.need)
        work.answer.skip_pending = True

    def _stop(self, lower: Item, answer: _Message) -> None:
        """End the message with one Fingerprint of our items in ``[lower, INFINITY)``."""
        parts = answer.start(lower)
        count, total = self._index.fingerprint_sum(lower, INFINITY)
        parts += [answer.writer.encode(INFINITY), _FINGERPRINT, fingerprint(count, total)]
        answer.add(parts)

    def _answer_id_list(
        self,
        lower: Item,
        upper: Item,
        payload: bytes,
        ours: list[Item],
        writer: _BoundWriter,
        *,
        skip_pending: bool,
    ) -> tuple[list[bytes], int, bool]:
        """As responder, answer the peer's IdList of ``[lower, upper)`` (its ids end
        to end in ``payload``), given all our items there.

        The plain answer, the reference's, is an IdList of all our ids. Often a
        shorter one says the same: IdLists of only the runs of our items the
        peer lacks or that border an id we lack, and between them Skips or
        Fingerprints. We know where every id we hold lies, so when we hold all
        the peer listed, the runs between are Skips. An id we lack lies between
        its neighbours in the peer's list, which every implementation sends in
        item order; we list those neighbours around it, and cover the runs
        between with our Fingerprints rather than Skips: if a peer ever sent
        its list out of order, the fingerprint of the run holding that id
        differs and the run is reconciled further, so nothing is lost. The
        shorter answer is sent. Returns the parts, their size, and whether a
        Skip to ``upper`` is left pending after them."""
        encode = writer.encode
        start_last = writer.last
        full = [encode(lower), _SKIP] if skip_pending else []
        full += [encode(upper), _ID_LIST, encode_varint(len(ours))]
        full += [item[1] for item in ours]
        full_size = sum(map(len, full))
        if not ours:
            if payload:
                return full, full_size, False  # it holds items here, we none
            writer.last = start_last
            return [], 0, True  # neither holds any: settled
        # which of our items to list
        position = {item[1]: k for k, item in enumerate(ours)}
        listed = bytearray(len(ours))
        seen = bytearray(len(ours))
        lacking = False  # an id we lack since the last one we hold
        any_lacking = False
        last_held = -1
        for i in range(0, len(payload), ID_SIZE):
            k = position.get(payload[i : i + ID_SIZE])
            if k is None:
                lacking = any_lacking = True
                continue
            if k <= last_held:
                return full, full_size, False  # out of order, or listed twice
            if lacking:
                listed[max(last_held, 0) : k + 1] = b"\x01" * (k + 1 - max(last_held, 0))
                lacking = False
            seen[k] = 1
            last_held = k
        if lacking:
            from_k = max(last_held, 0)
            listed[from_k:] = b"\x01" * (len(ours) - from_k)
        for k in range(len(ours)):
            if not seen[k]:
                listed[k] = 1  # the peer lacks it
        # the answer: runs to list, and between them Skips (or Fingerprints)
        full_last = writer.last
        writer.last = start_last
        compact: list[bytes] = []
        emitted_to = lower
        pending = skip_pending  # a Skip to emitted_to is owed
        last = len(ours) - 1
        gap_from = 0  # the first of our items not yet answered
        k = 0
        while k <= last:
            if not listed[k]:
                k += 1
                continue
            first = k
            while k <= last and listed[k]:
                k += 1
            start = lower if first == 0 else minimal_bound(ours[first - 1], ours[first])
            end = upper if k > last else minimal_bound(ours[k - 1], ours[k])
            if start != emitted_to:
                if any_lacking:
                    if pending:
                        compact += [encode(emitted_to), _SKIP]
                    compact += [encode(start), _FINGERPRINT, _fingerprint_of(ours[gap_from:first])]
                else:
                    compact += [encode(start), _SKIP]
            elif pending:
                compact += [encode(start), _SKIP]
            compact += [encode(end), _ID_LIST, encode_varint(k - first)]
            compact += [item[1] for item in ours[first:k]]
            emitted_to = end
            pending = False
            gap_from = k
        if emitted_to != upper:
            if any_lacking:
                if pending:
                    compact += [encode(emitted_to), _SKIP]
                compact += [encode(upper), _FINGERPRINT, _fingerprint_of(ours[gap_from:])]
                pending = False
            else:
                pending = True
        compact_size = sum(map(len, compact))
        if compact_size < full_size:
            return compact, compact_size, pending
        writer.last = full_last
        return full, full_size, False

    def _settle(
        self, lower: Item, upper: Item, payload: bytes, have: list[bytes], need: list[bytes]
    ) -> None:
        """As initiator, settle ``[lower, upper)`` against the peer's full list
        of it (``payload``: its ids, end to end)."""
        theirs = [payload[i : i + ID_SIZE] for i in range(0, len(payload), ID_SIZE)]
        remaining = set(theirs)
        for _, ident in self._index.items(lower, upper):
            if ident in remaining:
                remaining.discard(ident)
            else:
                have.append(ident)
        if remaining:
            for ident in theirs:
                if ident in remaining:
                    need.append(ident)
                    remaining.discard(ident)


# --- parsing ------------------------------------------------------------------------------

Range = tuple[Item, Item, int, bytes]
"""A parsed range: lower bound, upper bound, mode, payload (the fingerprint, or
the listed ids end to end; empty for a Skip)."""


def _parse_ranges(data: bytes) -> list[Range]:
    """The ranges of a version-1 message (``data[0]`` is the version byte).

    Raises ProtocolError on anything but a well-formed message."""
    ranges: list[Range] = []
    end = len(data)
    pos = 1
    last_ts = 0
    prev = ZERO
    while pos < end:
        # the upper bound (one-byte varints inlined: most timestamps deltas, all lengths)
        byte = data[pos]
        if byte < 0x80:
            encoded_ts, pos = byte, pos + 1
        else:
            encoded_ts, pos = decode_varint(data, pos)
        if encoded_ts == 0 or last_ts == MAX_TIMESTAMP:
            ts = MAX_TIMESTAMP
        else:
            ts = min(last_ts + encoded_ts - 1, MAX_TIMESTAMP)  # saturate, as the reference
        last_ts = ts
        if pos >= end:
            raise ProtocolError("message truncated in a bound")
        prefix_len = data[pos]
        pos += 1
        if prefix_len > ID_SIZE:
            raise ProtocolError(f"bound prefix longer than {ID_SIZE} bytes")
        if pos + prefix_len > end:
            raise ProtocolError("message truncated in a bound prefix")
        if ts == MAX_TIMESTAMP:
            bound = INFINITY
        else:
            bound = (ts, data[pos : pos + prefix_len] + _PADDING[ID_SIZE - prefix_len])
        pos += prefix_len
        if bound < prev:
            raise ProtocolError("ranges out of order")
        # the mode and its payload
        if pos >= end:
            raise ProtocolError("message truncated before a mode")
        mode = data[pos]
        pos += 1
        if mode == MODE_FINGERPRINT:
            payload = data[pos : pos + FINGERPRINT_SIZE]
            pos += FINGERPRINT_SIZE
            if pos > end:
                raise ProtocolError("message truncated in a fingerprint")
        elif mode == MODE_ID_LIST:
            count, pos = decode_varint(data, pos)
            if count > (end - pos) // ID_SIZE:
                raise ProtocolError(f"IdList of {count} ids overruns the message")
            payload = data[pos : pos + count * ID_SIZE]
            pos += count * ID_SIZE
        elif mode == MODE_SKIP:
            payload = b""
        else:
            raise ProtocolError(f"unknown range mode {mode}")
        ranges.append((prev, bound, mode, payload))
        prev = bound
    return ranges


def _varint_size(n: int) -> int:
    return 1 if n < 128 else (n.bit_length() + 6) // 7


def _bound_size(bound: Item, after_ts: int) -> int:
    """The encoded size of ``bound`` written after a bound of timestamp ``after_ts``."""
    ts, ident = bound
    if ts == MAX_TIMESTAMP:
        return len(_INFINITY_BOUND)
    return _varint_size(ts - after_ts + 1) + 1 + len(ident.rstrip(b"\x00"))


def _reserves(ranges: list[Range], is_open: list[bool]) -> tuple[list[int], list[int]]:
    """For each index ``k`` (and ``len(ranges)``), the bytes needed to describe
    ``ranges[k:]`` in segments (see ``Negentropy._segments``; an upper estimate),
    and to send each open range of them back as a fingerprint."""
    count = len(ranges)
    run_end = [0] * count  # for an open range, the last of its run of open ones
    end = -1
    for k in range(count - 1, -1, -1):
        if is_open[k]:
            if k == count - 1 or not is_open[k + 1]:
                end = k
            run_end[k] = end
    run_costs = [0] * count  # a run's Fingerprint (and the Skip before it), at its start
    echo_costs = [0] * count
    last_ts = 0  # the timestamp of the last open range's upper bound
    for k, (lower, upper, _, _) in enumerate(ranges):
        if not is_open[k]:
            continue
        skip = 0
        if k and not is_open[k - 1]:
            skip = _bound_size(lower, last_ts) + 1 + 2  # 2: the delta may be from further back
        echo_costs[k] = skip + _bound_size(upper, lower[0]) + 1 + FINGERPRINT_SIZE
        if not k or not is_open[k - 1]:
            run_costs[k] = (
                skip + _bound_size(ranges[run_end[k]][1], lower[0]) + 1 + FINGERPRINT_SIZE
            )
        last_ts = upper[0]
    runs_from = [0] * (count + 1)
    echoes_from = [0] * (count + 1)
    for k in range(count - 1, -1, -1):
        runs_from[k] = runs_from[k + 1] + run_costs[k]
        echoes_from[k] = echoes_from[k + 1] + echo_costs[k]
    first_skip = _MAX_BOUND_SIZE + 1  # the first Skip's bound follows who knows what
    segments_from = [0] * (count + 1)
    for k, (lower, _, _, _) in enumerate(ranges):
        if is_open[k]:
            end = run_end[k]
            upper = ranges[end][1]
            run = _bound_size(upper, lower[0]) + 1 + FINGERPRINT_SIZE
            segments_from[k] = first_skip + run + runs_from[end + 1]
        else:
            segments_from[k] = first_skip + runs_from[k]
    return segments_from, echoes_from
