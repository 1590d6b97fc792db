"""Authentication over real sockets: a Hypercorn server on 127.0.0.1 serving the
auth routes and the sync routes, clients over HTTP and WebSocket, on asyncio and
on trio.

The sync handler answers ``<user id or "anonymous">:<frame>``, so every reply
says who the node took the request to come from. The node's clock is a
ManualClock started at the real time (the client's clock), moved by hand to
expire tokens; every wait is bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import anyio
import anyio.abc
import httpx
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request

from loomdb.api import create_app
from loomdb.api.auth import auth_routes
from loomdb.api.sync import CLOSE_UNAUTHORIZED, fixed, sync_routes
from loomdb.clock import ManualClock, SystemClock
from loomdb.errors import (
    AuthError,
    ChallengeError,
    NotMemberError,
    RevokedError,
    TokenError,
    TransportError,
)
from loomdb.identity.peer_id import peer_id_from_public_key
from loomdb.identity.user import UserIdentity
from loomdb.stores.memory import MemoryStore
from loomdb.stores.remote import RemoteStore
from loomdb.stores.server import StoreServer
from loomdb.transports.auth import ChallengeLogin, TokenSource, auth_base_url
from loomdb.transports.base import FrameHandler, RequestChannel
from loomdb.transports.endpoint import SYNC_MEDIA_TYPE, SYNC_PATH
from loomdb.transports.http import HttpChannel
from loomdb.transports.websocket import WebSocketChannel
from loomdb.trust.auth import AuthService, answer_challenge
from loomdb.trust.principal import Principal
from tests.conformance.test_channels import hypercorn_serving
from tests.support import seeded_random, signing_key

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

KINDS = ["http", "ws"]
MAX_FRAME = 64 * 1024
WAIT = 10.0  # the bound on any wait that should end at once
TOKEN_TTL_S = 600

ALICE = UserIdentity.generate(seeded_random(201))
BOB = UserIdentity.generate(seeded_random(202))
MALLORY = UserIdentity.generate(seeded_random(203))
NODE_KEY = signing_key("auth-node")
OTHER_NODE_KEY = signing_key("auth-other-node")


class Members:
    def __init__(self, *users: UserIdentity) -> None:
        self.members = {user.user_id for user in users}
        self.revoked: set[str] = set()
        self.checked: list[str] = []

    def __call__(self, user_id: str) -> None:
        self.checked.append(user_id)
        if user_id in self.revoked:
            raise RevokedError(f"{user_id} was revoked")
        if user_id not in self.members:
            raise NotMemberError(f"{user_id} is not a member")


@dataclass
class Node:
    url: str
    service: AuthService
    members: Members
    clock: ManualClock
    handled: list[tuple[str | None, bytes]] = field(default_factory=list)
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    async def channel(self, kind: str, source: TokenSource | None = None) -> RequestChannel:
        channel: RequestChannel
        if kind == "http":
            channel = HttpChannel(self.url, max_frame=MAX_FRAME, token_source=source)
        else:
            channel = WebSocketChannel(self.url, max_frame=MAX_FRAME, token_source=source)
        self.stack.push_async_callback(channel.aclose)
        return channel

    def login(self, user: UserIdentity, **kw: object) -> ChallengeLogin:
        kw.setdefault("expected_server", self.service.server_id)
        return ChallengeLogin(self.url, user, timeout=WAIT, **kw)  # type: ignore[arg-type]


def echo_user(handled: list[tuple[str | None, bytes]]) -> Callable[[Principal], FrameHandler]:
    def handler_for(principal: Principal) -> FrameHandler:
        async def handle(frame: bytes) -> bytes:
            handled.append((principal.user_id, frame))
            return (principal.user_id or "anonymous").encode() + b":" + frame

        return handle

    return handler_for


@pytest.fixture
async def node(anyio_backend: str) -> AsyncIterator[Node]:
    clock = ManualClock(SystemClock().now_ms())
    members = Members(ALICE, BOB)
    service = AuthService(NODE_KEY, members, clock=clock, token_ttl_s=TOKEN_TTL_S)
    handled: list[tuple[str | None, bytes]] = []
    routes = [*auth_routes(service), *sync_routes(echo_user(handled), MAX_FRAME, service)]
    app = create_app(None, extra_routes=routes)
    async with hypercorn_serving(app, anyio_backend, None) as url:
        state = Node(url, service, members, clock, handled)
        async with state.stack:
            yield state


def reply_of(user: UserIdentity | None, frame: bytes) -> bytes:
    return (user.user_id if user else "anonymous").encode() + b":" + frame


# --- through the channels ----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_without_a_token_a_request_is_anonymous(node: Node, kind: str) -> None:
    channel = await node.channel(kind)
    assert await channel.request(b"hi", timeout=WAIT) == reply_of(None, b"hi")
    assert node.handled == [(None, b"hi")]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_login_makes_requests_act_as_the_user(node: Node, kind: str) -> None:
    login = node.login(ALICE)
    channel = await node.channel(kind, login)
    for i in range(5):
        frame = b"n%d" % i
        assert await channel.request(frame, timeout=WAIT) == reply_of(ALICE, frame)
    assert login.logins == 1  # the token is kept
    assert login.server == node.service.server_id
    assert [user for user, _ in node.handled] == [ALICE.user_id] * 5


@pytest.mark.parametrize("kind", KINDS)
async def test_two_users_on_two_channels_are_told_apart(node: Node, kind: str) -> None:
    alice = await node.channel(kind, node.login(ALICE))
    bob = await node.channel(kind, node.login(BOB))
    anonymous = await node.channel(kind)
    assert await alice.request(b"a", timeout=WAIT) == reply_of(ALICE, b"a")
    assert await bob.request(b"b", timeout=WAIT) == reply_of(BOB, b"b")
    assert await anonymous.request(b"c", timeout=WAIT) == reply_of(None, b"c")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_revoked_or_unknown_user_is_refused_at_the_challenge(node: Node, kind: str) -> None:
    node.members.revoked.add(BOB.user_id)
    revoked = await node.channel(kind, node.login(BOB))
    with pytest.raises(RevokedError):
        await revoked.request(b"x", timeout=WAIT)
    unknown = await node.channel(kind, node.login(MALLORY))
    with pytest.raises(NotMemberError):
        await unknown.request(b"x", timeout=WAIT)
    assert node.handled == []


@pytest.mark.parametrize("kind", KINDS)
async def test_a_held_token_is_refused_once_the_user_is_revoked(node: Node, kind: str) -> None:
    login = node.login(ALICE)
    channel = await node.channel(kind, login)
    assert await channel.request(b"before", timeout=WAIT) == reply_of(ALICE, b"before")
    if isinstance(channel, WebSocketChannel):
        assert channel.connected  # the next frame goes over this open connection
    checks = len(node.members.checked)

    node.members.revoked.add(ALICE.user_id)
    with pytest.raises(RevokedError):
        await channel.request(b"after", timeout=WAIT)
    # Refused when the token was checked, then again when a new one was asked for.
    assert node.members.checked[checks:] == [ALICE.user_id, ALICE.user_id]
    assert node.handled == [(ALICE.user_id, b"before")]  # the refused frame was not handled
    if isinstance(channel, WebSocketChannel):
        assert not channel.connected

    node.members.revoked.discard(ALICE.user_id)  # reinstated: the channel recovers
    assert await channel.request(b"again", timeout=WAIT) == reply_of(ALICE, b"again")


class FixedSource:
    """A token source that always gives the same token, and records what it was asked."""

    def __init__(self, token: str) -> None:
        self._token = token
        self.asked: list[bool] = []

    async def token(self, *, refresh: bool = False) -> str:
        self.asked.append(refresh)
        return self._token


@pytest.mark.parametrize("kind", KINDS)
async def test_a_refused_token_is_refreshed_once_then_the_error_is_raised(
    node: Node, kind: str
) -> None:
    other = AuthService(OTHER_NODE_KEY, node.members)
    foreign = other.issue_token(answer_challenge(other.challenge(), ALICE))["token"]
    source = FixedSource(foreign)
    assert isinstance(source, TokenSource)
    channel = await node.channel(kind, source)
    with pytest.raises(TokenError) as raised:
        await channel.request(b"x", timeout=WAIT)
    assert not isinstance(raised.value, TransportError)  # nobody retries it
    assert isinstance(raised.value, AuthError)
    assert source.asked == [False, True]
    assert node.handled == []


@pytest.mark.parametrize("kind", KINDS)
async def test_an_expired_token_is_refreshed_transparently(node: Node, kind: str) -> None:
    login = node.login(ALICE, margin_s=0.0)  # the client's clock: it thinks the token good
    channel = await node.channel(kind, login)
    assert await channel.request(b"one", timeout=WAIT) == reply_of(ALICE, b"one")
    if isinstance(channel, WebSocketChannel):
        assert channel.connected

    node.clock.advance(TOKEN_TTL_S * 1000)  # the node's clock: it has just expired
    assert await channel.request(b"two", timeout=WAIT) == reply_of(ALICE, b"two")
    assert login.logins == 2
    assert node.handled == [(ALICE.user_id, b"one"), (ALICE.user_id, b"two")]  # once each
    assert await channel.request(b"three", timeout=WAIT) == reply_of(ALICE, b"three")
    assert login.logins == 2


@pytest.mark.parametrize("kind", KINDS)
async def test_a_challenge_from_another_node_is_refused_by_the_client(
    node: Node, kind: str
) -> None:
    someone_else = peer_id_from_public_key(OTHER_NODE_KEY.public_key)
    channel = await node.channel(kind, node.login(ALICE, expected_server=someone_else))
    with pytest.raises(ChallengeError, match="not the expected node"):
        await channel.request(b"x", timeout=WAIT)
    assert node.service.pending == 1  # asked for, never answered: no signature was given
    assert node.handled == []


async def test_the_login_takes_a_websocket_url_with_the_sync_path(node: Node) -> None:
    ws_url = node.url.replace("http://", "ws://") + SYNC_PATH
    assert auth_base_url(ws_url) == node.url
    login = ChallengeLogin(ws_url, ALICE, timeout=WAIT, expected_server=node.service.server_id)
    channel = await node.channel("ws", login)
    assert await channel.request(b"x", timeout=WAIT) == reply_of(ALICE, b"x")


# --- RemoteStore -------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_remote_store_logs_in_and_does_not_retry_refusals(
    anyio_backend: str, kind: str
) -> None:
    members = Members(ALICE)
    service = AuthService(NODE_KEY, members)
    store_server = StoreServer(MemoryStore())
    routes = [*auth_routes(service), *sync_routes(fixed(store_server.handle), MAX_FRAME, service)]
    async with hypercorn_serving(create_app(None, extra_routes=routes), anyio_backend, None) as url:
        store = RemoteStore.connect(
            url,
            transport=kind,
            identity=ALICE,
            expected_server=service.server_id,
            timeout=WAIT,
            backoff=0.0,
        )
        async with store:
            assert await store.count() == 0
            requests = store.requests
            members.revoked.add(ALICE.user_id)
            with pytest.raises(RevokedError):
                await store.count()
            assert store.requests == requests + 1  # raised at once, not retried


# --- the wire, by hand -------------------------------------------------------------


async def test_a_bad_token_on_post_is_a_401_json_error(node: Node) -> None:
    token = node.service.issue_token(answer_challenge(node.service.challenge(), ALICE))["token"]
    sync_url = node.url + SYNC_PATH
    headers = {"content-type": SYNC_MEDIA_TYPE}
    async with httpx.AsyncClient(timeout=WAIT) as client:
        cases = [
            ("Bearer " + token[:-4] + "AAAA", "auth.token"),
            ("Bearer not-a-jwt", "auth.token"),
            ("Basic YWxpY2U6cHc=", "auth.required"),
            ("Bearer", "auth.required"),
        ]
        for authorization, code in cases:
            response = await client.post(
                sync_url, content=b"x", headers={**headers, "authorization": authorization}
            )
            assert response.status_code == 401, response.text
            assert response.json()["error"]["code"] == code
            assert response.headers["www-authenticate"].startswith("Bearer")
        good = await client.post(
            sync_url, content=b"x", headers={**headers, "authorization": f"bearer {token}"}
        )
        assert good.status_code == 200
        assert good.content == reply_of(ALICE, b"x")
    assert node.handled == [(ALICE.user_id, b"x")]


async def test_the_auth_routes_answer_json_errors(node: Node) -> None:
    async with httpx.AsyncClient(base_url=node.url, timeout=WAIT) as client:
        challenge = (await client.post("/api/v0/auth/challenge")).json()
        answer = answer_challenge(challenge, ALICE)
        replayed = await client.post("/api/v0/auth/token", json=answer)
        assert replayed.status_code == 200
        assert replayed.headers["cache-control"] == "no-store"
        again = await client.post("/api/v0/auth/token", json=answer)
        assert again.status_code == 401
        assert again.json()["error"]["code"] == "auth.challenge"
        junk = await client.post("/api/v0/auth/token", json={"challenge": 1})
        assert junk.status_code == 422
        assert junk.json()["error"]["code"] == "validation"
        as_json = {"content-type": "application/json"}
        not_json = await client.post("/api/v0/auth/token", content=b"{", headers=as_json)
        assert not_json.status_code == 400
        huge = await client.post("/api/v0/auth/token", content=b" " * (17 * 1024), headers=as_json)
        assert huge.status_code == 413
        node.members.revoked.add(BOB.user_id)
        challenge = (await client.post("/api/v0/auth/challenge")).json()
        refused = await client.post("/api/v0/auth/token", json=answer_challenge(challenge, BOB))
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "trust.revoked"


async def raw_websocket(
    url: str, target: str, frame: bytes
) -> tuple[bytes | None, CloseConnection | None]:
    """One frame over a hand-made WebSocket: the reply, or the close that came instead."""
    host, _, port = url.removeprefix("http://").partition(":")
    ws = WSConnection(ConnectionType.CLIENT)
    with anyio.fail_after(WAIT):
        stream: anyio.abc.ByteStream = await anyio.connect_tcp(host, int(port))
        async with stream:
            await stream.send(ws.send(Request(host=f"{host}:{port}", target=target)))
            accepted = False
            while True:
                ws.receive_data(await stream.receive())
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        accepted = True
                        await stream.send(ws.send(BytesMessage(data=frame)))
                    elif isinstance(event, BytesMessage) and accepted:
                        return bytes(event.data), None
                    elif isinstance(event, CloseConnection):
                        return None, event


async def test_a_websocket_takes_the_token_from_the_query(node: Node) -> None:
    token = node.service.issue_token(answer_challenge(node.service.challenge(), ALICE))["token"]
    reply, closed = await raw_websocket(node.url, f"{SYNC_PATH}?access_token={token}", b"q")
    assert closed is None
    assert reply == reply_of(ALICE, b"q")

    reply, closed = await raw_websocket(node.url, f"{SYNC_PATH}?access_token=junk", b"q")
    assert reply is None
    assert closed is not None
    assert closed.code == CLOSE_UNAUTHORIZED
    assert closed.reason is not None
    assert closed.reason.startswith("auth.token: ")
    assert len(closed.reason.encode()) <= 123
    assert node.handled == [(ALICE.user_id, b"q")]
