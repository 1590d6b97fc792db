"""The client side of authentication: where a channel gets its bearer token.

:class:`ChallengeLogin` asks the node for a challenge, signs it with the user's
key and trades the answer for a token (the flow of :mod:`loomdb.trust.auth`),
over httpx, so it runs on asyncio and on trio alike. It keeps the token until
``margin_s`` before it expires, and fetches a new one when a channel asks for
a refresh (the node refused the one it had).

It signs in only to the node it means (``docs/auth.md``, "Binding"): one Peer ID,
given or learned from the node's ``hello``; a challenge of another server is
refused unsigned, a token not signed by that node's key for it and this user is
refused, and redirects are not followed.

Errors are translated once, here: the node's JSON error codes become our
classes again (:func:`auth_error`), httpx's errors become transport errors as
in the channels (:mod:`loomdb.transports.http`). Auth and trust errors are
never :class:`~loomdb.errors.TransportError`, so nobody retries them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, runtime_checkable

import anyio
import httpx

from loomdb.clock import Clock, SystemClock
from loomdb.errors import (
    AuthError,
    ChallengeError,
    LoomError,
    NoLoginError,
    NotMemberError,
    TokenError,
    TransportError,
    TransportTimeoutError,
    TrustError,
    UnreachableError,
    ValidationError,
    errors_by_code,
)
from loomdb.identity.peer_id import public_key_from_peer_id
from loomdb.identity.user import UserIdentity
from loomdb.transports.base import describe
from loomdb.transports.endpoint import SYNC_PATH, sync_endpoint
from loomdb.transports.tls import Verify, verify_context
from loomdb.trust.auth import Challenge, answer_challenge, check_issued_token

AUTH_PATH: Final = "/api/v0/auth"  # as served by loomdb.api.auth
MAX_REPLY_BYTES: Final = 64 * 1024
_SYSTEM_CLOCK: Final = SystemClock()


@runtime_checkable
class TokenSource(Protocol):
    """Gives a channel the bearer token to send; ``refresh`` asks for a new one
    (the node refused the last)."""

    async def token(self, *, refresh: bool = False) -> str | None:
        """The token to send (None: send none, i.e. be anonymous)."""
        ...


_ERRORS_BY_CODE: Final = errors_by_code(AuthError, TrustError)


def auth_error(code: str, message: str) -> LoomError:
    """The error a node's refusal names: ``auth.*`` and ``trust.*`` codes map back to
    their classes, anything else to :class:`AuthError`."""
    cls = _ERRORS_BY_CODE.get(code, AuthError)
    return cls(f"{message} ({code})" if cls is AuthError and code != AuthError.code else message)


def api_error(body: bytes) -> tuple[str, str] | None:
    """The ``(code, message)`` of an API error body (:mod:`loomdb.api.errors`), or None."""
    try:
        error = json.loads(body)["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, TypeError, KeyError, RecursionError):
        return None


def auth_error_from_reason(reason: str | None) -> LoomError:
    """The error of a WebSocket close 4401, whose reason is ``code: message``."""
    code, sep, message = (reason or "").partition(": ")
    if not sep:
        return AuthError(f"the node refused the token: {reason or 'no reason given'}")
    return auth_error(code.strip(), message.strip())


def auth_base_url(url: str) -> str:
    """The http(s) base URL of the node at ``url`` (http, https, ws or wss; with or
    without the sync path)."""
    endpoint = sync_endpoint(url, websocket=True)
    scheme = "https" if endpoint.secure else "http"
    base_path = endpoint.path.removesuffix(SYNC_PATH)
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    return f"{scheme}://{host}:{endpoint.port}{base_path}"


ANONYMOUS_RETRY_MS = 30_000

Identify = Callable[[], Awaitable[str]]
"""Asks the node at the URL for its Peer ID (e.g. its sync ``hello``), unauthenticated."""


class ChallengeLogin:
    """A :class:`TokenSource` that logs ``identity`` in at the node at ``base_url``.

    The login is bound to one node, named by its Peer ID: ``expected_server`` if
    the caller knows it, else what ``identify`` learns from the node at the URL
    before the first login, kept from then on. A challenge naming another server
    (say, another node's challenge relayed by the server at the URL) is refused
    before anything is signed (:class:`ChallengeError`), and the token is checked
    to be signed by that node's key and issued for it and for this user
    (:func:`~loomdb.trust.auth.check_issued_token`). Tokens are kept per server
    id and handed out only for the node the login is bound to. Redirects are not
    followed. ``timeout`` bounds each HTTP request; ``verify`` is as for the
    channels.
    """

    def __init__(
        self,
        base_url: str,
        identity: UserIdentity,
        *,
        verify: Verify = True,
        expected_server: str | None = None,
        identify: Identify | None = None,
        timeout: float = 30.0,
        margin_s: float = 30.0,
        clock: Clock = _SYSTEM_CLOCK,
        transport: httpx.AsyncBaseTransport | None = None,
        anonymous_if_stranger: bool = False,
    ) -> None:
        if expected_server is None and identify is None:
            raise ValidationError(
                "a login needs the node's Peer ID (expected_server) or a way to learn it (identify)"
            )
        if expected_server is not None:
            _check_peer_id(expected_server, "the expected node")
        self.base_url = auth_base_url(base_url)
        self.identity = identity
        self.expected_server = expected_server
        self._identify = identify
        self._verify = verify_context(verify) if self.base_url.startswith("https:") else True
        self._timeout = timeout
        self._margin_ms = int(margin_s * 1000)
        self._clock = clock
        self._transport = transport  # replaces the network (tests)
        self._lock = anyio.Lock()
        self._tokens: dict[str, tuple[str, int]] = {}  # server id -> (token, expires_at ms)
        self._anonymous_until = 0
        self.server: str | None = None  # the node's id, once logged in
        # A node where this user is in no directory (or that offers no login) is
        # used anonymously: its open spaces need no token. Asked again later.
        self.anonymous_if_stranger = anonymous_if_stranger
        self.anonymous = False
        self.logins = 0  # tokens fetched (for tests and metrics)

    async def token(self, *, refresh: bool = False) -> str | None:
        async with self._lock:  # channels sharing this source log in once
            now = self._clock.now_ms()
            if self.anonymous and not refresh and now < self._anonymous_until:
                return None
            server = await self._server()
            held = self._tokens.get(server)
            if refresh or held is None or now >= held[1] - self._margin_ms:
                self._tokens.pop(server, None)
                try:
                    held = await self._login(server)
                except (NotMemberError, NoLoginError):
                    if not self.anonymous_if_stranger:
                        raise
                    self.anonymous, self._anonymous_until = True, now + ANONYMOUS_RETRY_MS
                    return None
                self._tokens[server] = held
                self.anonymous = False
                self.logins += 1
            return held[0]

    async def _server(self) -> str:
        """The Peer ID this login is bound to: given, or learned once and kept."""
        if self.expected_server is None:
            assert self._identify is not None
            learned = await self._identify()
            _check_peer_id(learned, f"the Peer ID {self.base_url} gives")
            self.expected_server = learned
        return self.expected_server

    async def _login(self, server: str) -> tuple[str, int]:
        async with httpx.AsyncClient(
            verify=self._verify,
            timeout=httpx.Timeout(self._timeout),
            transport=self._transport,
            follow_redirects=False,  # a sign-in goes to the node at the URL, nowhere else
        ) as client:
            challenge = await self._post(client, "challenge", None)
            try:
                parsed = Challenge.parse(challenge)
            except ValidationError as exc:
                raise ChallengeError(f"{self.base_url} sent a malformed challenge: {exc}") from None
            if parsed.server != server:
                # Signing it could give whoever serves this URL a token valid at
                # that other node, in this user's name.
                raise ChallengeError(
                    f"{self.base_url} sent a challenge from {parsed.server}, not the expected"
                    f" node {server}: refused unsigned"
                )
            answer = answer_challenge(challenge, self.identity)
            reply = await self._post(client, "token", answer)
        token, expires_at = reply.get("token"), reply.get("expires_at")
        if (
            not isinstance(token, str)
            or not token
            or type(expires_at) is not int
            or reply.get("server") != server
            or reply.get("user") != self.identity.user_id
        ):
            raise TokenError(f"{self.base_url} sent a malformed token reply")
        check_issued_token(token, server, self.identity.user_id)
        self.server = server
        return token, expires_at

    async def _post(
        self, client: httpx.AsyncClient, what: str, body: dict[str, Any] | None
    ) -> dict[str, Any]:
        url = f"{self.base_url}{AUTH_PATH}/{what}"
        try:
            async with client.stream("POST", url, json=body) as response:
                content = await _read_capped(response)
                status, location = response.status_code, response.headers.get("location")
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise UnreachableError(f"cannot reach {self.base_url}: {describe(exc)}") from None
        except httpx.TimeoutException as exc:
            raise TransportTimeoutError(f"{self.base_url} timed out: {describe(exc)}") from None
        except (httpx.HTTPError, httpx.StreamError, OSError) as exc:
            raise TransportError(f"login at {self.base_url} failed: {describe(exc)}") from None
        parsed = _json(content)
        if status == 200:
            if not isinstance(parsed, dict):
                raise UnreachableError(f"{self.base_url} is not a loomdb node (no JSON at {url})")
            return parsed
        if status == 404:
            raise NoLoginError(f"{self.base_url} offers no login ({url} is not found)")
        if 300 <= status < 400:
            raise AuthError(
                f"{self.base_url} redirects the login to {location or 'nowhere'}: not followed"
            )
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if not isinstance(error, dict):
            if status >= 500:
                raise TransportError(f"login at {self.base_url}: the node answered {status}")
            raise AuthError(f"{self.base_url} refused the login ({status})")
        code, message = str(error.get("code")), str(error.get("message"))
        if status in (401, 403):
            raise auth_error(code, message)
        if status >= 500:
            raise TransportError(f"login at {self.base_url} failed ({status} {code}: {message})")
        raise AuthError(f"{self.base_url} refused the login ({status} {code}: {message})")


async def _read_capped(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_REPLY_BYTES:
            raise TransportError(f"the reply of {response.url} is over {MAX_REPLY_BYTES} bytes")
    return bytes(body)


def _check_peer_id(peer_id: object, what: str) -> None:
    try:
        public_key_from_peer_id(peer_id)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ChallengeError(f"{what} is not a Peer ID: {exc.message}") from None


def _json(content: bytes) -> Any:
    try:
        return json.loads(content)
    except (ValueError, RecursionError):
        return None
