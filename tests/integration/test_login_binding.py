"""A login signs in only to the node it means: over real sockets, in process.

A :class:`~loomdb.transports.auth.ChallengeLogin` is bound to one Peer ID (given,
or learned from the node's sync ``hello``). These servers try to make it sign
for, or accept a token of, another node: a relay of another node's challenges,
a token signed by another key, a redirect. Each is refused, with nothing signed
for the wrong node and no token sent anywhere else. The same against real node
processes is in tests/integration/test_sync_failures_e2e.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from loomdb.api import create_app
from loomdb.api.auth import auth_routes
from loomdb.api.sync import fixed, sync_routes
from loomdb.errors import AuthError, ChallengeError, TokenError, TransportError, ValidationError
from loomdb.identity.peer_id import peer_id_from_public_key
from loomdb.identity.user import UserIdentity
from loomdb.stores.memory import MemoryStore
from loomdb.stores.remote import RemoteStore
from loomdb.stores.server import StoreServer
from loomdb.transports.auth import ChallengeLogin
from loomdb.transports.http import HttpChannel
from loomdb.trust.auth import AuthService, answer_challenge
from tests.conformance.test_channels import hypercorn_serving
from tests.support import seeded_random, signing_key

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

WAIT = 10.0
MAX_FRAME = 64 * 1024
ALICE = UserIdentity.generate(seeded_random(301))
VICTIM_KEY = signing_key("binding-victim")
RELAY_KEY = signing_key("binding-relay")
RELAY_ID = peer_id_from_public_key(RELAY_KEY.public_key)


def members(user_id: str) -> None:
    """Everyone is a member: the victim would give anyone a token."""


@pytest.fixture
async def victim(anyio_backend: str) -> AsyncIterator[tuple[str, AuthService, StoreServer]]:
    """A node: sign-in routes and a store server that names it in ``hello``."""
    service = AuthService(VICTIM_KEY, members)
    server = StoreServer(MemoryStore(), peer_id=service.server_id)
    routes = [*auth_routes(service), *sync_routes(server.handler_for, MAX_FRAME, service)]
    async with hypercorn_serving(create_app(None, extra_routes=routes), anyio_backend, None) as url:
        yield url, service, server


class Relay:
    """Says it is RELAY_ID (its ``hello``) and relays sign-in requests to ``victim``."""

    def __init__(self, victim: str) -> None:
        self.victim = victim
        self.answers: list[Any] = []
        self.tokens: list[str] = []
        server = StoreServer(MemoryStore(), peer_id=RELAY_ID)
        routes = [
            Route("/api/v0/auth/challenge", self.challenge, methods=["POST"]),
            Route("/api/v0/auth/token", self.token, methods=["POST"]),
            *sync_routes(fixed(server.handle), MAX_FRAME),
        ]
        self.app = Starlette(routes=routes)

    async def _forward(self, what: str, body: bytes) -> httpx.Response:
        headers = {"content-type": "application/json"} if body else {}
        async with httpx.AsyncClient(timeout=WAIT) as client:
            return await client.post(
                f"{self.victim}/api/v0/auth/{what}", content=body, headers=headers
            )

    async def challenge(self, request: Request) -> Response:
        reply = await self._forward("challenge", b"")
        return JSONResponse(reply.json(), status_code=reply.status_code)

    async def token(self, request: Request) -> Response:
        body = await request.body()
        self.answers.append(body)
        reply = await self._forward("token", body)
        if reply.status_code == 200:
            self.tokens.append(reply.json()["token"])
        return JSONResponse(reply.json(), status_code=reply.status_code)


@pytest.mark.parametrize("kind", ["http", "ws"])
async def test_a_challenge_relayed_from_another_node_is_refused_unsigned(
    victim: tuple[str, AuthService, StoreServer], anyio_backend: str, kind: str
) -> None:
    victim_url, service, _ = victim
    relay = Relay(victim_url)
    async with hypercorn_serving(relay.app, anyio_backend, None) as url:
        store = RemoteStore.connect(url, transport=kind, identity=ALICE, timeout=WAIT, retries=0)
        async with store:
            with pytest.raises(ChallengeError) as raised:
                await store.count()
    message = raised.value.message
    assert service.server_id in message and RELAY_ID in message and url in message
    assert relay.answers == [] and relay.tokens == []  # nothing signed, no token
    assert service.pending == 1  # the victim's challenge was never answered


async def test_the_peer_id_is_learned_once_and_a_login_works_at_the_node_itself(
    victim: tuple[str, AuthService, StoreServer],
) -> None:
    url, service, server = victim
    async with RemoteStore.connect(url, identity=ALICE, timeout=WAIT) as store:
        for _ in range(3):
            assert await store.count() == 0
    assert server.requests["hello"] == 1  # learned once, on a connection of its own
    assert service.pending == 0


async def test_a_given_peer_id_refuses_the_node_at_the_url_if_it_is_another(
    victim: tuple[str, AuthService, StoreServer],
) -> None:
    url, _, server = victim
    store = RemoteStore.connect(url, identity=ALICE, expected_server=RELAY_ID, timeout=WAIT)
    async with store:
        with pytest.raises(ChallengeError, match=f"not the expected node {RELAY_ID}"):
            await store.count()
    assert server.requests["hello"] == 0  # nothing to learn: it was given
    assert server.requests["count"] == 0


async def test_a_login_needs_a_peer_id_or_a_way_to_learn_it() -> None:
    with pytest.raises(ValidationError, match="Peer ID"):
        ChallengeLogin("http://127.0.0.1:9", ALICE)
    with pytest.raises(ChallengeError, match="not a Peer ID"):
        ChallengeLogin("http://127.0.0.1:9", ALICE, expected_server="12D3KooWnope")


async def test_a_token_not_signed_by_the_node_it_names_is_refused(anyio_backend: str) -> None:
    """The server answers its own challenge, then hands out a token another node
    issued (claiming it is its own): the client checks the signature and audience."""
    fake = AuthService(RELAY_KEY, members)
    other = AuthService(VICTIM_KEY, members)
    stolen = other.issue_token(answer_challenge(other.challenge(), ALICE))

    async def challenge(request: Request) -> Response:
        return JSONResponse(fake.challenge())

    async def token(request: Request) -> Response:
        return JSONResponse({**stolen, "server": RELAY_ID})

    app = Starlette(
        routes=[
            Route("/api/v0/auth/challenge", challenge, methods=["POST"]),
            Route("/api/v0/auth/token", token, methods=["POST"]),
        ]
    )
    async with hypercorn_serving(app, anyio_backend, None) as url:
        login = ChallengeLogin(url, ALICE, expected_server=RELAY_ID, timeout=WAIT)
        with pytest.raises(TokenError, match="not one"):
            await login.token()
    assert login.logins == 0


async def test_redirects_are_not_followed_with_a_login_or_a_token(anyio_backend: str) -> None:
    seen: list[str] = []

    async def record(request: Request) -> Response:
        seen.append(f"{request.url.path} {request.headers.get('authorization')}")
        return JSONResponse({})

    elsewhere = Starlette(routes=[Route("/{path:path}", record, methods=["GET", "POST"])])
    async with hypercorn_serving(elsewhere, anyio_backend, None) as other:

        async def away(request: Request) -> Response:
            return RedirectResponse(f"{other}{request.url.path}", status_code=307)

        redirecting = Starlette(routes=[Route("/{path:path}", away, methods=["GET", "POST"])])
        async with hypercorn_serving(redirecting, anyio_backend, None) as url:
            login = ChallengeLogin(url, ALICE, expected_server=RELAY_ID, timeout=WAIT)
            with pytest.raises(AuthError, match="redirects the login"):
                await login.token()

            class Token:
                async def token(self, *, refresh: bool = False) -> str:
                    return "a-token-for-url-only"

            channel = HttpChannel(url, token_source=Token())
            try:
                with pytest.raises(TransportError, match="307"):
                    await channel.request(b"frame", timeout=WAIT)
            finally:
                await channel.aclose()
    assert seen == []  # neither the login nor the token went to the other server
