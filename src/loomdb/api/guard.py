"""The node's HTTP API as seen from a browser: who may reach it at all.

A node's API listens on 127.0.0.1, and every web page the node's owner opens
can send requests there. :class:`LocalGuard` is the ASGI layer in front of the
app (the daemon wraps every app it serves in one) that refuses what a page can
do and a legitimate client never does:

1. **Host.** Every request (HTTP and WebSocket) must name the node in its
   ``Host`` header: a loopback name (``127.0.0.1``, ``localhost``, ``[::1]``),
   the address the API is bound to, or a name given with ``--api-allow-host``.
   A DNS-rebinding page reaches 127.0.0.1 under its own name
   (``Host: evil.example:9181``): 421 ``request.host``.
2. **Origin.** A request that carries an ``Origin`` (browsers add one to every
   cross-origin request and to every WebSocket handshake) must come from the
   node's own origin, the scheme and authority it was reached at: 403
   ``request.origin``, and a WebSocket handshake is refused before it is
   accepted. Non-browser clients send no ``Origin``.
3. **Admin token.** Every control-plane route (documents, collections, spaces,
   keys, ``/sync/run``, ``/node``) needs ``Authorization: Bearer <token>``,
   the random token the node keeps in its home (:mod:`loomdb.node.runtime`):
   401 ``auth.admin_token`` without it. The sync endpoint and the sign-in
   routes keep their own authentication (challenge-response, JWTs): other
   nodes use them and never see the admin token. ``/openapi.json`` is public.

(JSON bodies must also say ``Content-Type: application/json``, so a page's
"simple" ``text/plain`` or form POST is refused: see
:func:`loomdb.api.validation.require_json`.)

The token is compared in constant time. The layer reads headers only; it
never touches a body.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from loomdb.api.auth import AUTH_PATH
from loomdb.transports.endpoint import SYNC_PATH

LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})
ANY_HOST: Final = "*"
PUBLIC_PATHS: Final = frozenset({SYNC_PATH, "/openapi.json"})
PUBLIC_PREFIXES: Final = (f"{AUTH_PATH}/",)

BAD_HOST = "request.host"
FOREIGN_ORIGIN = "request.origin"
ADMIN_TOKEN_NEEDED = "auth.admin_token"
_READ: Final = frozenset({b"host", b"origin", b"authorization"})


def host_name(authority: str) -> str | None:
    """The host of a ``Host`` header (``name``, ``name:port``, ``[v6]:port``),
    lower-case, without brackets; None when it cannot be read."""
    authority = authority.strip().lower()
    if not authority:
        return None
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return None
        rest = authority[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        return authority[1:end]
    name, sep, port = authority.rpartition(":")
    if not sep:
        return authority
    if not port.isdigit() or ":" in name:
        return None
    return name


def allowed_hosts(bind_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Loopback names, the bound address (unless a wildcard) and ``extra``."""
    hosts = set(LOOPBACK_HOSTS)
    bind = bind_host.strip().lower().removeprefix("[").removesuffix("]")
    try:
        if not ipaddress.ip_address(bind).is_unspecified:
            hosts.add(bind)
    except ValueError:
        hosts.add(bind)  # a name the API was bound by
    for given in extra:
        name = given.strip().lower()
        hosts.add(name if name == ANY_HOST else name.removeprefix("[").removesuffix("]"))
    return frozenset(hosts)


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """What :class:`LocalGuard` lets in. ``admin_token=None`` turns the token off
    (tests of the other checks only; the daemon always sets one)."""

    hosts: frozenset[str] = LOOPBACK_HOSTS
    admin_token: str | None = None
    public_paths: frozenset[str] = field(default=PUBLIC_PATHS)

    def is_public(self, path: str) -> bool:
        return path in self.public_paths or path.startswith(PUBLIC_PREFIXES)


class LocalGuard:
    """ASGI middleware enforcing a :class:`GuardPolicy` on HTTP and WebSocket."""

    def __init__(self, app: ASGIApp, policy: GuardPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, code, message = refusal
        if scope["type"] == "websocket":
            # Refused before the handshake completes: the browser sees a failed
            # connection (HTTP 403), and no frame is ever read.
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        headers = {"www-authenticate": "Bearer"} if status == 401 else None
        body = {"error": {"code": code, "message": message}}
        await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)

    def refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        """Why this request is refused (status, code, message), or None."""
        # The three headers read in one pass over the raw list (the first of each,
        # as Starlette's Headers.get): no Headers object per request.
        found: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in _READ and name not in found:
                found[name] = value.decode("latin-1")
        authority = found.get(b"host", "")
        host = host_name(authority)
        if host is None or (ANY_HOST not in self.policy.hosts and host not in self.policy.hosts):
            return (
                421,
                BAD_HOST,
                f"this node does not answer to Host {authority!r}; "
                "allow a name with 'loomdb start --api-allow-host NAME'",
            )
        origin = found.get(b"origin")
        if origin is not None and not _same_origin(origin, authority, scope):
            return 403, FOREIGN_ORIGIN, f"requests from origin {origin!r} are refused"
        path: str = scope.get("path", "")
        token = self.policy.admin_token
        if token is None or self.policy.is_public(path):
            return None
        if not _has_token(found.get(b"authorization"), token):
            return (
                401,
                ADMIN_TOKEN_NEEDED,
                f"{path} needs the node's admin token (Authorization: Bearer): run the "
                "client as the node's user, or set $LOOMDB_API_TOKEN to <home>/api.token",
            )
        return None


def _same_origin(origin: str, authority: str, scope: Scope) -> bool:
    """``origin`` is the scheme and authority this request was made to."""
    if origin == "null":  # sandboxed frames, file: pages
        return False
    parts = urlsplit(origin)
    secure = scope.get("scheme") in ("https", "wss")
    scheme = "https" if secure else "http"
    return parts.scheme == scheme and parts.netloc.lower() == authority.strip().lower()


def _has_token(header: str | None, token: str) -> bool:
    if header is None:
        return False
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())
