"""Tickets (``loomdb-ticket1:…``): the format's round trip and every refusal, the
addresses a host offers, giving and using a ticket (a fake host, real trust in
memory), and their QR codes drawn in half blocks."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import base58
import cbor2
import multiaddr
import pytest
import segno
import zxingcpp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loomdb.api.openapi import openapi_document
from loomdb.cli.main import main
from loomdb.cli.qr import QUIET, qr_code, qr_modules, read_back, render
from loomdb.cli.tickets import connect_body
from loomdb.errors import ForbiddenError, NotMemberError, UnreachableError, ValidationError
from loomdb.identity.peer_id import peer_id_from_public_key
from loomdb.node import ticket as ticket_module
from loomdb.node.home import NodeHome
from loomdb.node.ticket import (
    DIAL_SECONDS,
    MAX_ADDRS,
    MAX_TICKET_CHARS,
    TICKET_PREFIX,
    Invite,
    Ticket,
    connect_ticket,
    dialable_addrs,
    interface_ips,
    issue_ticket,
)
from loomdb.stores import MemoryStore
from loomdb.trust.admin import NodeTrust
from loomdb.trust.book import DirectoryBook
from loomdb.trust.guard import GuardedStore
from tests.support import signing_key

ANYIO = pytest.mark.anyio
PEER = peer_id_from_public_key(signing_key("a").public_key)
RELAY = peer_id_from_public_key(signing_key("relay").public_key)
OTHER = peer_id_from_public_key(signing_key("other").public_key)
DIRECT = f"/ip4/192.0.2.7/tcp/9171/p2p/{PEER}"
DIRECT6 = f"/ip6/2001:db8::7/tcp/9171/p2p/{PEER}"
CIRCUIT = f"/ip4/203.0.113.1/tcp/4001/p2p/{RELAY}/p2p-circuit/p2p/{PEER}"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def wire(**fields: Any) -> str:
    """A ticket from raw fields (defaults: a valid peer and one address)."""
    value: dict[str, Any] = {
        "peer": base58.b58decode(PEER),
        "addrs": [multiaddr.Multiaddr("/ip4/192.0.2.7/tcp/9171").to_bytes()],
    }
    value.update(fields)
    return TICKET_PREFIX + b64(cbor2.dumps({k: v for k, v in value.items() if v is not None}))


@pytest.fixture
def make_node(tmp_path: Path) -> Callable[[str], NodeTrust]:
    def make(name: str) -> NodeTrust:
        home = NodeHome.open(tmp_path / name, environ={})
        book = DirectoryBook()
        return NodeTrust(home, GuardedStore(MemoryStore(), book), book)

    return make


# --- the format -------------------------------------------------------------------------


def test_a_ticket_round_trips_and_is_the_same_text_for_the_same_contents() -> None:
    ticket = Ticket(PEER, (DIRECT, DIRECT6, CIRCUIT), "main")
    text = ticket.encode()
    assert text.startswith(TICKET_PREFIX)
    assert Ticket.decode(text) == ticket
    assert Ticket.decode(f"  {text}\n") == ticket  # pasted with blanks around
    assert Ticket(PEER, (DIRECT, DIRECT6, CIRCUIT), "main").encode() == text
    assert ticket.to_json() == {
        "peer_id": PEER,
        "addrs": [DIRECT, DIRECT6, CIRCUIT],
        "space": "main",
        "invitation": False,
    }
    # the order of the addresses is the order they are tried in: it is kept
    assert Ticket.decode(Ticket(PEER, (CIRCUIT, DIRECT)).encode()).addrs == (CIRCUIT, DIRECT)


def test_a_ticket_is_compact() -> None:
    # binary Peer ID, binary addresses without their own /p2p/ part
    one = Ticket(PEER, (DIRECT,)).encode()
    assert len(one) < len(DIRECT) + 50, one
    three = Ticket(PEER, (DIRECT, DIRECT6, CIRCUIT)).encode()
    assert len(three) < len(DIRECT) + len(DIRECT6) + len(CIRCUIT), three


@ANYIO
async def test_a_ticket_carries_an_invitation_whole(make_node: Callable[[str], NodeTrust]) -> None:
    a, b = make_node("a"), make_node("b")
    space = (await a.create_space("team"))["space"]
    invitation = (await a.add_user(space, b.card(), ["read", "write"]))["invitation"]
    ticket = Ticket(PEER, (DIRECT,), space, invitation)
    text = ticket.encode()
    back = Ticket.decode(text)
    assert back == ticket
    assert back.invitation == invitation  # the very same text: joinable
    assert back.to_json()["invitation"] is True
    # base64 is not applied twice: the ticket is barely longer than the invitation
    assert len(text) < len(invitation) + 110
    joined = await b.join(back.invitation)
    assert joined["space"] == space


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (None, "starts with"),
        (42, "starts with"),
        ("", "starts with"),
        ("loomdb-ticket2:oA", "starts with"),
        ("loomdb-invite1:eJw", "starts with"),
        (TICKET_PREFIX + "a" * MAX_TICKET_CHARS, "too long"),
        (TICKET_PREFIX + "!!!!", "base64url"),
        (TICKET_PREFIX + "a", "base64url"),
        (TICKET_PREFIX + b64(b"\xff\xfe"), "does not decode"),
        (TICKET_PREFIX + b64(cbor2.dumps([1, 2])), "holds a peer"),
        (TICKET_PREFIX + b64(cbor2.dumps({"peer": b"x"})), "holds a peer"),
        (wire(extra=1), "holds a peer"),
        (wire(peer=b"\x00" * 38), "Ed25519"),
        (wire(peer=b"\x00\x24" + b"\x01" * 36), "Ed25519"),
        (wire(peer=PEER), "binary Peer ID"),
        (wire(peer=base58.b58decode(PEER)[:-1]), "binary Peer ID"),
        (wire(addrs=[]), "1 to 16 addresses"),
        (wire(addrs=[b"\x04\x7f\x00\x00\x01\x06\x0f\xa1"] * (MAX_ADDRS + 1)), "1 to 16"),
        (wire(addrs=b"\x04\x7f\x00\x00\x01\x06\x0f\xa1"), "1 to 16"),
        (wire(addrs=["/ip4/192.0.2.7/tcp/9171"]), "1 to 256 bytes"),
        (wire(addrs=[b""]), "1 to 256 bytes"),
        (wire(addrs=[b"\x04" * 300]), "1 to 256 bytes"),
        (wire(addrs=[b"\xff\x01"]), "not a multiaddr"),
        (wire(addrs=[b"\x04\x7f"]), "not a multiaddr"),  # py-multiaddr reads it as 0.0.0.127
        (wire(addrs=[b"\x04\x7f\x00\x00\x01\x06\x0f"]), "not a multiaddr"),
        (wire(addrs=[multiaddr.Multiaddr("/ip4/1.2.3.4/udp/1").to_bytes()]), "is not /ip4"),
        (wire(addrs=[multiaddr.Multiaddr("/ip4/1.2.3.4").to_bytes()]), "is not /ip4"),
        (wire(addrs=[multiaddr.Multiaddr("/dns4/example.com/tcp/1").to_bytes()]), "is not /ip4"),
        (wire(addrs=[multiaddr.Multiaddr(f"/ip4/1.2.3.4/tcp/1/p2p/{PEER}").to_bytes()]), "not"),
        (wire(addrs=[multiaddr.Multiaddr(f"/ip4/1.2.3.4/tcp/1/p2p/{RELAY}").to_bytes()]), "not"),
        (wire(addrs=[multiaddr.Multiaddr("/ip4/0.0.0.0/tcp/9171").to_bytes()]), "unspecified"),
        (wire(addrs=[multiaddr.Multiaddr("/ip6/::/tcp/9171").to_bytes()]), "unspecified"),
        (wire(addrs=[multiaddr.Multiaddr("/ip4/1.2.3.4/tcp/0").to_bytes()]), "unspecified"),
        (wire(space=7), "space id is text"),
        (wire(space=""), "1 to 256"),
        (wire(space="x" * 257), "1 to 256"),
        (wire(invite="text"), "invitation is bytes"),
        (wire(invite=b"not zlib"), "invitation does not decode"),
    ],
)
def test_a_bad_ticket_is_refused_saying_why(text: Any, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        Ticket.decode(text)


@ANYIO
async def test_a_ticket_whose_invitation_is_wrong_is_refused(
    make_node: Callable[[str], NodeTrust],
) -> None:
    a, b = make_node("a"), make_node("b")
    space = (await a.create_space("team"))["space"]
    other = (await a.create_space("other"))["space"]
    invitation = (await a.add_user(space, b.card(), ["read"]))["invitation"]
    packed = base64.urlsafe_b64decode(invitation.split(":", 1)[1] + "==")
    assert Ticket.decode(wire(invite=packed)).space == space  # the invitation names it
    with pytest.raises(ValidationError, match="no space field"):
        Ticket.decode(wire(space=space, invite=packed))  # one spelling only
    with pytest.raises(ValidationError, match="not to"):
        Ticket(PEER, (DIRECT,), other, invitation)
    with pytest.raises(ValidationError, match="not to"):
        Ticket(PEER, (DIRECT,), None, invitation)
    with pytest.raises(ValidationError, match="invitation"):
        Ticket.decode(wire(invite=packed[: len(packed) // 2]))


def test_a_ticket_built_in_code_is_checked_like_a_decoded_one() -> None:
    with pytest.raises(ValidationError, match="is of peer"):
        Ticket(PEER, (f"/ip4/192.0.2.7/tcp/1/p2p/{OTHER}",))
    with pytest.raises(ValidationError, match="is of peer"):
        Ticket(PEER, (f"/ip4/203.0.113.1/tcp/4001/p2p/{RELAY}/p2p-circuit/p2p/{OTHER}",))
    with pytest.raises(ValidationError, match="does not end"):
        Ticket(PEER, ("/ip4/192.0.2.7/tcp/1",))
    with pytest.raises(ValidationError, match="bad multiaddr"):
        Ticket(PEER, ("not an address",))
    with pytest.raises(ValidationError, match="unspecified"):
        Ticket(PEER, (f"/ip4/0.0.0.0/tcp/9171/p2p/{PEER}",))
    with pytest.raises(ValidationError, match="relay is the peer"):
        Ticket(PEER, (f"/ip4/1.2.3.4/tcp/1/p2p/{PEER}/p2p-circuit/p2p/{PEER}",))
    with pytest.raises(ValidationError, match="relay is the peer"):
        Ticket.decode(
            wire(
                addrs=[multiaddr.Multiaddr(f"/ip4/1.2.3.4/tcp/1/p2p/{PEER}/p2p-circuit").to_bytes()]
            )
        )
    with pytest.raises(ValidationError, match="1 to 16"):
        Ticket(PEER, ())
    with pytest.raises(ValidationError, match="1 to 16"):
        Ticket(PEER, (DIRECT,) * 17)
    with pytest.raises(ValidationError):
        Ticket("12D3KooWnot-a-peer", (DIRECT,))
    with pytest.raises(ValidationError, match="space id"):
        Ticket(PEER, (DIRECT,), "")


@ANYIO
async def test_a_ticket_past_its_size_is_refused_on_encoding(
    make_node: Callable[[str], NodeTrust], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = make_node("a"), make_node("b")
    space = (await a.create_space("team"))["space"]
    invitation = (await a.add_user(space, b.card(), ["read"]))["invitation"]
    ticket = Ticket(PEER, (DIRECT,), space, invitation)
    text = ticket.encode()
    monkeypatch.setattr(ticket_module, "MAX_TICKET_CHARS", len(text) - 1)
    with pytest.raises(ValidationError, match="directory is too large"):
        ticket.encode()
    with pytest.raises(ValidationError, match="too long"):
        Ticket.decode(text)


_IP4 = st.ip_addresses(v=4).filter(lambda ip: str(ip) != "0.0.0.0")
_IP6 = st.ip_addresses(v=6).filter(lambda ip: ip.compressed != "::" and ip.ipv4_mapped is None)
_PORT = st.integers(1, 65535)


@st.composite
def _addrs(draw: st.DrawFn) -> str:
    ip = draw(_IP4 | _IP6)
    direct = f"/ip{ip.version}/{ip.compressed}/tcp/{draw(_PORT)}"
    if draw(st.booleans()):
        direct += f"/p2p/{RELAY}/p2p-circuit"
    return f"{direct}/p2p/{PEER}"


@settings(max_examples=200)
@given(
    st.lists(_addrs(), min_size=1, max_size=MAX_ADDRS, unique=True),
    st.none() | st.text(min_size=1, max_size=64),
)
def test_every_ticket_round_trips(addrs: list[str], space: str | None) -> None:
    ticket = Ticket(PEER, tuple(addrs), space)
    text = ticket.encode()
    assert Ticket.decode(text) == ticket
    assert Ticket(PEER, tuple(addrs), space).encode() == text


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_ticket_bodies_raise_only_validation_error(body: bytes) -> None:
    with contextlib.suppress(ValidationError):
        Ticket.decode(TICKET_PREFIX + b64(body))


_CBOR = st.recursive(
    st.none() | st.booleans() | st.integers() | st.binary(max_size=60) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {
            "peer": st.just(base58.b58decode(PEER)) | _CBOR,
            "addrs": st.lists(st.binary(), max_size=3),
        }
    ),
    st.dictionaries(st.sampled_from(["space", "invite", "x"]), _CBOR, max_size=2),
)
def test_random_ticket_fields_raise_only_validation_error(
    fields: dict[str, Any], extra: dict[str, Any]
) -> None:
    with contextlib.suppress(ValidationError):
        Ticket.decode(TICKET_PREFIX + b64(cbor2.dumps({**fields, **extra})))


# --- the addresses a ticket offers ----------------------------------------------------------

IPS = [
    ipaddress.ip_address("127.0.0.1"),
    ipaddress.ip_address("10.0.0.5"),
    ipaddress.ip_address("::1"),
    ipaddress.ip_address("8.8.4.4"),
    ipaddress.ip_address("2001:4860::5"),
    ipaddress.ip_address("fd00::2"),
]


def test_unspecified_addresses_become_the_machines_own_public_first() -> None:
    listen = [
        f"/ip4/0.0.0.0/tcp/9171/p2p/{PEER}",
        f"/ip6/::/tcp/9172/p2p/{PEER}",
        f"/ip4/127.0.0.1/tcp/9173/p2p/{PEER}",
        CIRCUIT,
    ]
    assert dialable_addrs(listen, lambda: IPS) == [
        f"/ip4/8.8.4.4/tcp/9171/p2p/{PEER}",
        f"/ip4/10.0.0.5/tcp/9171/p2p/{PEER}",
        f"/ip4/127.0.0.1/tcp/9171/p2p/{PEER}",
        f"/ip6/2001:4860::5/tcp/9172/p2p/{PEER}",
        f"/ip6/fd00::2/tcp/9172/p2p/{PEER}",
        f"/ip6/::1/tcp/9172/p2p/{PEER}",
        f"/ip4/127.0.0.1/tcp/9173/p2p/{PEER}",
        CIRCUIT,
    ]
    # specific addresses as they are; the interfaces are not even looked at
    assert dialable_addrs([DIRECT, CIRCUIT], lambda: pytest.fail("looked")) == [DIRECT, CIRCUIT]
    twice = [f"/ip4/0.0.0.0/tcp/9171/p2p/{PEER}", f"/ip4/127.0.0.1/tcp/9171/p2p/{PEER}"]
    assert dialable_addrs(twice, lambda: IPS[:1]) == [f"/ip4/127.0.0.1/tcp/9171/p2p/{PEER}"]
    many = [ipaddress.ip_address(f"10.0.1.{i}") for i in range(40)]
    assert len(dialable_addrs(listen[:1], lambda: many)) == MAX_ADDRS


def test_the_machines_own_addresses_hold_loopback_and_no_link_local() -> None:
    ips = interface_ips()
    assert ipaddress.ip_address("127.0.0.1") in ips
    assert not any(ip.is_link_local for ip in ips)


# --- giving and using tickets ---------------------------------------------------------------


class FakeHost:
    """A host that answers at ``up`` only (and records every dial)."""

    def __init__(self, peer_id: str, listen: Sequence[str], up: Sequence[str] = ()) -> None:
        self.peer_id = peer_id
        self._listen = list(listen)
        self.up = set(up)
        self.dialled: list[str] = []
        self.connected: list[str] = []

    def listen_addrs(self) -> list[str]:
        return self._listen

    def peers(self) -> list[dict[str, Any]]:
        return [{"peer_id": a.rsplit("/", 1)[1]} for a in self.connected]

    async def connect(self, addr: str) -> str:
        self.dialled.append(addr)
        if addr not in self.up:
            raise UnreachableError(f"cannot reach {addr}: connection refused")
        self.connected.append(addr)
        return addr.rsplit("/", 1)[1]


@ANYIO
async def test_a_ticket_is_given_and_used_to_connect(make_node: Callable[[str], NodeTrust]) -> None:
    a_host = FakeHost(PEER, [f"/ip4/0.0.0.0/tcp/9171/p2p/{PEER}", CIRCUIT])
    given_ = await issue_ticket(a_host, make_node("a"))
    assert given_["addrs"][-1] == CIRCUIT
    assert f"/ip4/127.0.0.1/tcp/9171/p2p/{PEER}" in given_["addrs"]
    assert given_["invited"] is None
    assert given_["space"] is None
    assert Ticket.decode(given_["ticket"]).addrs == tuple(given_["addrs"])

    b_host = FakeHost(OTHER, [], up=[CIRCUIT])
    answer = await connect_ticket(b_host, make_node("b"), given_["ticket"])
    assert answer["addr"] == CIRCUIT
    assert b_host.dialled == given_["addrs"]  # in order, until one answers
    assert [f["addr"] for f in answer["failed"]] == given_["addrs"][:-1]
    assert answer["failed"][0]["error"]["code"] == "transport.unreachable"
    assert answer["joined"] is None
    assert answer["already"] is False
    # connected already: no dial (py-libp2p's would "succeed" at any address)
    again = await connect_ticket(b_host, make_node("b2"), given_["ticket"])
    assert (again["already"], again["addr"], again["failed"]) == (True, None, [])
    assert len(b_host.dialled) == len(given_["addrs"])

    with pytest.raises(ValidationError, match="own ticket"):
        await connect_ticket(a_host, None, given_["ticket"])
    with pytest.raises(UnreachableError, match="any of the"):
        await connect_ticket(FakeHost(OTHER, []), None, given_["ticket"])
    with pytest.raises(ValidationError, match="starts with"):
        await connect_ticket(b_host, None, "/ip4/1.2.3.4/tcp/1")


@ANYIO
async def test_no_address_is_tried_once_the_dial_time_is_spent() -> None:
    ticket = Ticket(PEER, (DIRECT, DIRECT6, CIRCUIT)).encode()
    now = [0.0]

    class SlowHost(FakeHost):
        async def connect(self, addr: str) -> str:
            now[0] += DIAL_SECONDS / 2 + 1  # each failing dial takes over half of it
            return await super().connect(addr)

    host = SlowHost(OTHER, [], up=[CIRCUIT])
    with pytest.raises(UnreachableError, match="2 address"):
        await connect_ticket(host, None, ticket, clock=lambda: now[0])
    assert host.dialled == [DIRECT, DIRECT6]


@ANYIO
async def test_a_ticket_with_an_invitation_adds_the_user_and_joins_it(
    make_node: Callable[[str], NodeTrust],
) -> None:
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    space = (await a.create_space("team"))["space"]
    a_host = FakeHost(PEER, [DIRECT])
    invite = Invite(b.card(), ("read", "write"), "*", "bob")
    given_ = await issue_ticket(a_host, a, space, invite)
    assert given_["invited"] == b.user_id
    assert given_["space"] == space
    assert given_["invitation"] is True
    assert {u["user"]: u["label"] for u in a.users(space)}[b.user_id] == "bob"

    answer = await connect_ticket(FakeHost(OTHER, [], up=[DIRECT]), b, given_["ticket"])
    assert answer["joined"]["space"] == space
    assert answer["joined"]["roles"] == {"*": ["read", "write"]}
    assert [s["space"] for s in b.spaces()] == [space]

    # not invited: connected, then refused the space (no role in it, no key of it)
    with pytest.raises(NotMemberError):
        await connect_ticket(FakeHost(OTHER, [], up=[DIRECT]), c, given_["ticket"])
    assert c.space_info(space)["roles"] == {}
    assert set(c.home.keyring.named_keys) == {c.home.default_key.key_id}
    # a relay joins nothing, and tries no address
    host = FakeHost(OTHER, [], up=[DIRECT])
    with pytest.raises(ForbiddenError, match="relay"):
        await connect_ticket(host, None, given_["ticket"])
    assert host.dialled == []


@ANYIO
async def test_bad_ticket_requests(make_node: Callable[[str], NodeTrust]) -> None:
    a, b = make_node("a"), make_node("b")
    invite = Invite(b.card(), ("read",))
    with pytest.raises(ValidationError, match="name it"):
        await issue_ticket(FakeHost(PEER, [DIRECT]), a, None, invite)
    with pytest.raises(ForbiddenError, match="relay"):
        await issue_ticket(FakeHost(PEER, [DIRECT]), None, "a~b", invite)
    with pytest.raises(ValidationError, match="no address"):
        await issue_ticket(FakeHost(PEER, [f"/ip4/0.0.0.0/tcp/1/p2p/{PEER}"][:0]), a)
    space = (await a.create_space("team"))["space"]
    with pytest.raises(ValidationError, match="roles"):
        await issue_ticket(FakeHost(PEER, [DIRECT]), a, space, Invite(b.card(), ("own",)))
    with pytest.raises(ValidationError, match="user card"):
        await issue_ticket(FakeHost(PEER, [DIRECT]), a, space, Invite("nope", ("read",)))


def test_the_ticket_routes_are_in_openapi() -> None:
    paths = openapi_document()["paths"]
    ticket = paths["/api/v0/p2p/ticket"]["post"]
    assert set(ticket["requestBody"]["content"]["application/json"]["schema"]["properties"]) == {
        "space",
        "invite",
    }
    connect = paths["/api/v0/p2p/connect"]["post"]
    schema = connect["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"addr", "ticket"}
    assert "502" in connect["responses"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--role", "read"], "go with --invite"),
        (["--label", "bob"], "go with --invite"),
        (["--collection", "notes"], "go with --invite"),
        (["--invite", "loomdb-user1:x"], "needs the roles"),
    ],
)
def test_ticket_options_are_checked_before_any_request(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # (nothing listens at that URL: a request would fail otherwise)
    assert main(["client", "p2p", "ticket", *args, "--url", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_connect_takes_a_multiaddr_or_a_ticket() -> None:
    assert connect_body(DIRECT) == {"addr": DIRECT}
    assert connect_body("loomdb-ticket1:abc") == {"ticket": "loomdb-ticket1:abc"}
    assert connect_body("loomdb-ticket9:abc") == {"ticket": "loomdb-ticket9:abc"}  # node: which
    with pytest.raises(ValidationError, match="expected a ticket"):
        connect_body("junk")


# --- QR codes ---------------------------------------------------------------------------------


def scan(modules: list[list[bool]], scale: int = 4) -> list[str]:
    """What zxing-cpp (an independent decoder) reads in the modules drawn as pixels."""
    height, width = len(modules) * scale, len(modules[0]) * scale
    pixels = bytes(
        0 if modules[y // scale][x // scale] else 255 for y in range(height) for x in range(width)
    )

    class Image:  # an 8-bit grey image through the array interface (no numpy needed)
        __array_interface__: ClassVar[dict[str, Any]] = {
            "shape": (height, width),
            "typestr": "|u1",
            "data": pixels,
            "version": 3,
        }

    return [
        code.text
        for code in zxingcpp.read_barcodes(Image())
        if code.format == zxingcpp.BarcodeFormat.QRCode
    ]


def _finder_at(rows: list[list[bool]], top: int, left: int) -> bool:
    """The 7 by 7 finder pattern (dark ring, light ring, dark 3 by 3) at (top, left)."""
    for y in range(7):
        for x in range(7):
            ring = max(abs(y - 3), abs(x - 3))
            if rows[top + y][left + x] != (ring != 2):
                return False
    return True


@ANYIO
@pytest.mark.parametrize("invert", [False, True])
async def test_a_tickets_qr_code_is_drawn_module_for_module(
    invert: bool, make_node: Callable[[str], NodeTrust]
) -> None:
    a, b = make_node("a"), make_node("b")
    space = (await a.create_space("team"))["space"]
    invitation = (await a.add_user(space, b.card(), ["read"]))["invitation"]
    for text in (
        Ticket(PEER, (DIRECT,)).encode(),
        Ticket(PEER, (DIRECT, DIRECT6, CIRCUIT), space, invitation).encode(),
    ):
        code = qr_code(text)
        assert code is not None
        assert code.mode == "byte"
        assert not code.is_micro
        size = 17 + 4 * int(code.version)  # the standard's size of that version
        assert code.symbol_size(scale=1, border=0) == (size, size)
        expected = [
            [bool(m) for m in row]
            for row in segno.make(text, error="l", micro=False).matrix_iter(border=QUIET)
        ]
        assert qr_modules(code) == expected
        drawing = render(code, invert=invert)
        lines = drawing.splitlines()
        assert len(lines) == (size + 2 * QUIET + 1) // 2
        assert {len(line) for line in lines} == {size + 2 * QUIET}
        seen = read_back(drawing, invert=invert)
        assert seen[: size + 2 * QUIET] == expected
        assert not any(seen[size + 2 * QUIET :][0])  # the padding row is light
        # the three finder patterns where a scanner looks for them
        far = QUIET + size - 7
        assert all(
            _finder_at(seen, t, left) for t, left in ((QUIET, QUIET), (QUIET, far), (far, QUIET))
        )
        assert not _finder_at(seen, far, far)
        # and a QR decoder reads the ticket back from the drawing
        assert scan(seen) == [text]
    # byte mode holds at most 2,953 bytes (version 40-L)
    assert qr_code("x" * 2953) is not None
    assert qr_code("x" * 2954) is None
