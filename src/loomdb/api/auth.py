"""The HTTP side of authentication: ``/api/v0/auth/challenge`` and ``/api/v0/auth/token``.

Thin routes over :class:`~loomdb.trust.auth.AuthService`. Errors are the API's
JSON errors (:mod:`loomdb.api.errors`): a refused challenge or token is 401
(``auth.*``), a user who may not authenticate 403 (``trust.not_member``,
``trust.revoked``), a malformed answer 422 (``validation``) or 400 (not JSON).
Responses are ``Cache-Control: no-store``: a token must not sit in a cache.
"""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from loomdb.api.validation import read_json
from loomdb.trust.auth import AuthService

AUTH_PATH: Final = "/api/v0/auth"
CHALLENGE_PATH: Final = f"{AUTH_PATH}/challenge"
TOKEN_PATH: Final = f"{AUTH_PATH}/token"
MAX_ANSWER_BYTES: Final = 16 * 1024
_NO_STORE: Final = {"cache-control": "no-store"}


def auth_routes(service: AuthService) -> list[BaseRoute]:
    """``POST`` routes for a challenge and for a token in exchange for its answer."""

    async def challenge(request: Request) -> Response:
        client = request.client.host if request.client is not None else ""
        return JSONResponse(service.challenge(client), headers=_NO_STORE)

    async def token(request: Request) -> Response:
        answer = await read_json(request, MAX_ANSWER_BYTES)
        return JSONResponse(service.issue_token(answer), headers=_NO_STORE)

    return [
        Route(CHALLENGE_PATH, challenge, methods=["POST"], name="auth-challenge"),
        Route(TOKEN_PATH, token, methods=["POST"], name="auth-token"),
    ]
