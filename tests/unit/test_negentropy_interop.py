"""Our Negentropy against an independent implementation: nostr-tools (nip77), in node.

``tests/interop/negentropy_peer.mjs`` drives nostr-tools over stdin/stdout;
``scripts/setup dev`` installs it (``npm ci`` in tests/interop). Without node
or the package these tests fail, they do not skip: interop is not optional.

nostr-tools answers an IdList as if it were the initiator (it reports the
differences through its callbacks and skips the range), so when it is the
responder the differences in those ranges reach its callbacks, not our
initiator: with it as responder we check that our have/need and its need/have
together are exactly the symmetric difference. Its varints are 32-bit, so the
timestamps here stay below 2**31 (nostr's are seconds).
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from loomdb.sync.negentropy import Negentropy
from loomdb.sync.ranges import Item, MemoryRangeIndex

INTEROP = Path(__file__).resolve().parents[1] / "interop"
PEER = INTEROP / "negentropy_peer.mjs"
SETUP_HINT = "run `scripts/setup dev` (it installs node's nostr-tools into tests/interop)"


def node_command() -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not installed: {SETUP_HINT}", pytrace=False)
    if not (INTEROP / "node_modules" / "nostr-tools" / "package.json").is_file():
        pytest.fail(f"tests/interop/node_modules is missing: {SETUP_HINT}", pytrace=False)
    return [node, str(PEER)]


class JsPeer:
    """One nostr-tools Negentropy in a node process."""

    def __init__(self, role: str, frame_size_limit: int = 60_000) -> None:
        self.role = role
        self.proc = subprocess.Popen(
            [*node_command(), role, str(frame_size_limit)],
            cwd=INTEROP,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the node peer ended (exit code {self.proc.wait()})")
        return line.rstrip("\n")

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def load(self, items: list[Item]) -> bytes | None:
        """Give it its set; an initiator answers with its first message."""
        lines = [f"item,{ts},{ident.hex()}\n" for ts, ident in items]
        self._send("".join(lines) + "seal\n")
        if self.role == "initiator":
            line = self._line()
            assert line.startswith("msg,"), line
            return bytes.fromhex(line[4:])
        return None

    def fingerprint(self) -> bytes:
        self._send("fingerprint\n")
        line = self._line()
        assert line.startswith("fingerprint,"), line
        return bytes.fromhex(line.split(",")[1])

    def reconcile(self, message: bytes) -> tuple[bytes | None, list[bytes], list[bytes]]:
        """Its reply (None: done), and the have and need ids it reported."""
        self._send(f"msg,{message.hex()}\n")
        have: list[bytes] = []
        need: list[bytes] = []
        while True:
            line = self._line()
            kind, _, value = line.partition(",")
            if kind == "have":
                have.append(bytes.fromhex(value))
            elif kind == "need":
                need.append(bytes.fromhex(value))
            elif kind == "msg":
                return bytes.fromhex(value), have, need
            elif kind == "done":
                return None, have, need
            else:
                raise AssertionError(f"unexpected line from the node peer: {line!r}")

    def close(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def js_peers() -> Iterator[list[JsPeer]]:
    """Started peers are closed after the test, whatever happens."""
    peers: list[JsPeer] = []
    yield peers
    for peer in peers:
        peer.close()


def start(peers: list[JsPeer], role: str, frame_size_limit: int = 60_000) -> JsPeer:
    peer = JsPeer(role, frame_size_limit)
    peers.append(peer)
    return peer


def make_sets(size: int, seed: int, differ: float = 0.1) -> tuple[list[Item], list[Item]]:
    """Two sets of about ``size`` items: mostly shared, a fraction ``differ`` only
    in one of them (half each), and many timestamps shared by several items."""
    rng = random.Random(seed)
    spread = max(1, size // 4)
    base = 1_700_000_000
    # sorted: a set's order follows PYTHONHASHSEED, and the sets must be the same every run
    items = sorted({(base + rng.randrange(spread), rng.randbytes(32)) for _ in range(size)})
    a: list[Item] = []
    b: list[Item] = []
    for item in items:
        roll = rng.random()
        if roll < differ / 2:
            a.append(item)
        elif roll < differ:
            b.append(item)
        else:
            a.append(item)
            b.append(item)
    return a, b


def ids(items: list[Item]) -> set[bytes]:
    return {ident for _, ident in items}


SIZES = [0, 10, 1_000, 20_000]


@pytest.mark.parametrize("size", SIZES)
def test_js_initiator_against_python_responder(js_peers: list[JsPeer], size: int) -> None:
    a, b = make_sets(size, seed=size)
    js = start(js_peers, "initiator")
    message = js.load(a)
    assert message is not None
    # the same set gives the same first message, byte for byte
    assert message == Negentropy(MemoryRangeIndex(a)).initiate()
    responder = Negentropy(MemoryRangeIndex(b))
    have: list[bytes] = []
    need: list[bytes] = []
    rounds = 0
    while message is not None:
        rounds += 1
        assert rounds <= 10
        reply = responder.reconcile(message)
        message, h, n = js.reconcile(reply)
        have += h
        need += n
    assert sorted(have) == sorted(ids(a) - ids(b))
    assert sorted(need) == sorted(ids(b) - ids(a))


@pytest.mark.parametrize("size", SIZES)
def test_python_initiator_against_js_responder(js_peers: list[JsPeer], size: int) -> None:
    a, b = make_sets(size, seed=size + 1)
    js = start(js_peers, "responder")
    js.load(b)
    initiator = Negentropy(MemoryRangeIndex(a))
    message: bytes | None = initiator.initiate()
    have: list[bytes] = []
    need: list[bytes] = []
    js_have: list[bytes] = []
    js_need: list[bytes] = []
    rounds = 0
    while message is not None:
        rounds += 1
        assert rounds <= 10
        reply, h, n = js.reconcile(message)
        assert reply is not None
        js_have += h
        js_need += n
        message, h, n = initiator.reconcile_initiator(reply)
        have += h
        need += n
    # what we hold and it lacks: learnt by us, or by it (as its "need")
    assert sorted(have + js_need) == sorted(ids(a) - ids(b))
    assert sorted(need + js_have) == sorted(ids(b) - ids(a))


@pytest.mark.parametrize("size", [100, 1_000, 20_000])
def test_both_responders_answer_a_first_message_alike(js_peers: list[JsPeer], size: int) -> None:
    # A first message of fingerprints only: the two responders, holding the
    # same set, split the same ranges at the same places.
    a, b = make_sets(size, seed=size + 2)
    first = Negentropy(MemoryRangeIndex(a)).initiate()
    js = start(js_peers, "responder")
    js.load(b)
    js_reply, _, _ = js.reconcile(first)
    ours = Negentropy(MemoryRangeIndex(b)).reconcile(first)
    # nostr-tools returns nothing (our peer script prints 61) when all ranges match
    assert js_reply == ours


def test_fingerprints_agree(js_peers: list[JsPeer]) -> None:
    rng = random.Random(5)
    items = [(rng.randrange(1 << 31), rng.randbytes(32)) for _ in range(300)]
    # many carries: ids near 2**256
    items += [(rng.randrange(1 << 31), b"\xff" * 31 + bytes([i])) for i in range(50)]
    js = start(js_peers, "initiator")
    js.load(items)
    index = MemoryRangeIndex(items)
    from loomdb.sync.negentropy import fingerprint
    from loomdb.sync.ranges import INFINITY, ZERO

    assert js.fingerprint() == fingerprint(*index.fingerprint_sum(ZERO, INFINITY))


@pytest.mark.parametrize("direction", ["js-initiates", "python-initiates"])
def test_frame_size_limit_both_ways(js_peers: list[JsPeer], direction: str) -> None:
    limit = 4096
    a, b = make_sets(20_000, seed=77, differ=0.01)
    # and a dense run of differences: long IdLists, many mismatched ranges
    a = a + [(1_700_000_000 + i, random.Random(i).randbytes(32)) for i in range(300)]
    sizes: list[int] = []
    have: list[bytes] = []
    need: list[bytes] = []
    extra_have: list[bytes] = []
    extra_need: list[bytes] = []
    rounds = 0
    if direction == "js-initiates":
        js = start(js_peers, "initiator", limit)
        responder = Negentropy(MemoryRangeIndex(b), limit)
        message = js.load(a)
        while message is not None:
            rounds += 1
            assert rounds <= 60
            sizes.append(len(message))
            reply = responder.reconcile(message)
            sizes.append(len(reply))
            message, h, n = js.reconcile(reply)
            have += h
            need += n
    else:
        js = start(js_peers, "responder", limit)
        js.load(b)
        initiator = Negentropy(MemoryRangeIndex(a), limit)
        ours: bytes | None = initiator.initiate()
        while ours is not None:
            rounds += 1
            assert rounds <= 60
            sizes.append(len(ours))
            js_reply, h, n = js.reconcile(ours)
            assert js_reply is not None
            sizes.append(len(js_reply))
            extra_have += n  # it needs what we have
            extra_need += h
            ours, h, n = initiator.reconcile_initiator(js_reply)
            have += h
            need += n
    assert max(sizes) <= limit
    assert rounds > 3  # the limit did bite: more rounds than without one
    # Each side reports a difference once. Across sides one can be reported twice:
    # nostr-tools' responder reports what it finds in our IdLists too, and a side
    # that hits the frame limit sends the range it was on again (as the reference
    # does), so the other side may split it and answer the same ids again.
    for reported in (have, need, extra_have, extra_need):
        assert len(reported) == len(set(reported))
    assert set(have + extra_have) == ids(a) - ids(b)
    assert set(need + extra_need) == ids(b) - ids(a)
