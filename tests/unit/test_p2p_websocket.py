"""libp2p over WebSocket in ``P2PHost``, real py-libp2p on 127.0.0.1 (trio only): a host
listens on TCP and WebSocket side by side and shows the ports it holds; a peer dials
either and syncs frames over Noise and Yamux; a plaintext dialer is refused over
WebSocket too; a WebSocket message over 1 MiB is refused; addresses are checked."""

from __future__ import annotations

import contextlib
import socket

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.exceptions import SwarmException
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.transport.tcp.tcp import TCP

from loomdb.errors import AddressInUseError, ValidationError
from loomdb.identity.keys import SigningKey
from loomdb.transports.libp2p import P2PHost, check_listen_free, parse_listen_addr
from loomdb.transports.libp2p.host import parse_peer_addr
from loomdb.transports.libp2p.websocket import websocket_transport

pytestmark = pytest.mark.anyio

TCP_AND_WS = ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/0/ws"]
WAIT = 10.0
PEER = "12D3KooWCugzopk9fYBy1pvYVi94Qr2y9PL4CjSpYZUaXir3YWb7"


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def ws_addr(host: P2PHost) -> str:
    [addr] = [a for a in host.listen_addrs() if "/ws/" in a]
    return addr


def port_of(addr: str) -> int:
    return int(addr.split("/tcp/")[1].split("/", maxsplit=1)[0])


def close_code(data: bytes) -> int | None:
    """The code of the close frame among the server's (unmasked) frames in ``data``;
    None while it has not arrived."""
    while len(data) >= 2:
        opcode, length, at = data[0] & 0x0F, data[1] & 0x7F, 2
        if length >= 126:
            width = 2 if length == 126 else 8
            length, at = int.from_bytes(data[2 : 2 + width], "big"), 2 + width
        if len(data) < at + length:
            return None
        if opcode == 0x8:
            return int.from_bytes(data[at : at + 2], "big")
        data = data[at + length :]
    return None


async def echo(frame: bytes) -> bytes:
    return frame[::-1]


async def test_a_host_listens_on_tcp_and_websocket_and_shows_the_ports_it_holds() -> None:
    host = P2PHost(SigningKey.generate(), TCP_AND_WS)
    async with host.run():
        addrs = host.listen_addrs()
        tcp = [a for a in addrs if "/ws/" not in a]
        ws = [a for a in addrs if "/ws/" in a]
        assert len(tcp) == len(ws) == 1, addrs
        assert ws[0] == f"/ip4/127.0.0.1/tcp/{port_of(ws[0])}/ws/p2p/{host.peer_id}"
        assert port_of(tcp[0]) not in (0, port_of(ws[0]))  # each on a port of its own
        for addr in addrs:  # really held
            with pytest.raises(AddressInUseError):
                check_listen_free([parse_listen_addr(f"/ip4/127.0.0.1/tcp/{port_of(addr)}")])


async def test_a_peer_dials_the_websocket_address_and_syncs_over_it() -> None:
    server = P2PHost(SigningKey.generate(), TCP_AND_WS, connect_timeout=WAIT)
    client = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], connect_timeout=WAIT)
    async with server.run(), client.run():
        server.serve_sync(lambda peer: echo)
        assert await client.connect(ws_addr(server)) == server.peer_id
        channel = client.channel(ws_addr(server))
        assert await channel.request(b"over ws", timeout=WAIT) == b"sw revo"
        await channel.aclose()
        with trio.fail_after(WAIT):
            while not server.peers():
                await trio.sleep(0.01)
        assert [p["peer_id"] for p in server.peers()] == [client.peer_id]
        assert server.counters.server.frames == 1


async def test_a_websocket_dial_ignores_the_proxy_of_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "socks5://127.0.0.1:9")  # nobody there
    server = P2PHost(SigningKey.generate(), TCP_AND_WS, connect_timeout=WAIT)
    client = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], connect_timeout=WAIT)
    async with server.run(), client.run():
        assert await client.connect(ws_addr(server)) == server.peer_id
    assert "proxy" not in capsys.readouterr().out.lower()


async def test_a_websocket_only_host_still_dials_tcp() -> None:
    server = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], connect_timeout=WAIT)
    client = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0/ws"], connect_timeout=WAIT)
    async with server.run(), client.run():
        server.serve_sync(lambda peer: echo)
        channel = client.channel(server.listen_addrs()[0])
        assert await channel.request(b"ab", timeout=WAIT) == b"ba"
        await channel.aclose()


async def test_a_plaintext_dialer_is_refused_over_websocket() -> None:
    server = P2PHost(SigningKey.generate(), TCP_AND_WS, connect_timeout=WAIT)
    key_pair = create_new_key_pair(b"\x0a" * 32)
    sec = {TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(key_pair)}
    muxers = {TProtocol(YAMUX_PROTOCOL_ID): Yamux}
    plain = new_host(
        key_pair=key_pair,
        sec_opt=sec,
        muxer_opt=muxers,
        transports=[TCP(), websocket_transport(sec, muxers, handshake_timeout=WAIT)],
    )
    async with server.run(), plain.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        with trio.fail_after(WAIT), pytest.raises(SwarmException):
            await plain.connect(info_from_p2p_addr(multiaddr.Multiaddr(ws_addr(server))))
        assert server.peers() == [] and plain.get_connected_peers() == []
        await plain.close()


async def test_a_websocket_message_over_one_mebibyte_is_refused() -> None:
    server = P2PHost(SigningKey.generate(), TCP_AND_WS, connect_timeout=WAIT)
    size = 1024 * 1024 + 4096
    async with server.run():
        with trio.fail_after(WAIT):
            stream = await trio.open_tcp_stream("127.0.0.1", port_of(ws_addr(server)))
            async with stream:
                await stream.send_all(
                    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n"
                )
                received = b""
                while b"\r\n\r\n" not in received:
                    received += await stream.receive_some()
                assert received.startswith(b"HTTP/1.1 101"), received
                # one binary frame, masked (with a zero mask: the payload as is)
                header = bytes([0x82, 0x80 | 127]) + size.to_bytes(8, "big") + bytes(4)
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(header + bytes(size))
                data = received.split(b"\r\n\r\n", 1)[1]
                while (code := close_code(data)) is None:
                    more = await stream.receive_some()
                    assert more, "the connection ended without a close frame"
                    data += more
        assert code == 1009  # message too big
        assert server.peers() == []


@pytest.mark.parametrize(
    "text", ["/ip4/127.0.0.1/tcp/0/ws", "/ip6/::1/tcp/9172/ws", "/ip4/0.0.0.0/tcp/9171"]
)
def test_websocket_listen_addresses_are_accepted(text: str) -> None:
    assert str(parse_listen_addr(text)) == text


@pytest.mark.parametrize(
    "text", ["/ip4/127.0.0.1/tcp/1/wss", "/ip4/127.0.0.1/ws", "/ip4/127.0.0.1/tcp/1/ws/ws"]
)
def test_other_websocket_forms_are_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_listen_addr(text)


def test_a_websocket_peer_address_is_accepted() -> None:
    info = parse_peer_addr(f"/ip4/127.0.0.1/tcp/9172/ws/p2p/{PEER}")
    assert info.peer_id.to_base58() == PEER
    assert [str(a) for a in info.addrs] == ["/ip4/127.0.0.1/tcp/9172/ws"]
    with pytest.raises(ValidationError):
        parse_peer_addr(f"/ip4/127.0.0.1/tcp/9172/wss/p2p/{PEER}")


def test_tcp_and_websocket_on_one_port_are_refused() -> None:
    same = ["/ip4/127.0.0.1/tcp/9173", "/ip4/127.0.0.1/tcp/9173/ws"]
    with pytest.raises(ValidationError, match="a port each"):
        P2PHost(SigningKey.generate(), same)
    with pytest.raises(ValidationError, match="a port each"):
        check_listen_free([parse_listen_addr(a) for a in same])
    P2PHost(SigningKey.generate(), TCP_AND_WS)  # port 0: each gets its own


def test_a_busy_websocket_port_is_address_in_use() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(AddressInUseError):
            check_listen_free([parse_listen_addr(f"/ip4/127.0.0.1/tcp/{port}/ws")])
