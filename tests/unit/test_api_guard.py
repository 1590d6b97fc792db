"""LocalGuard's checks on raw ASGI scopes: Host, Origin, admin token.

(tests/integration/test_local_api_security.py drives the same checks through a
real node; these pin the header reading itself.)"""

from __future__ import annotations

import pytest

from loomdb.api.guard import (
    ADMIN_TOKEN_NEEDED,
    BAD_HOST,
    FOREIGN_ORIGIN,
    GuardPolicy,
    LocalGuard,
    allowed_hosts,
)
from loomdb.transports.endpoint import SYNC_PATH

TOKEN = "s3cret-token"


async def _app(scope: object, receive: object, send: object) -> None:
    raise AssertionError("never reached")


GUARD = LocalGuard(_app, GuardPolicy(allowed_hosts("127.0.0.1", ["node.lan"]), TOKEN))


def _scope(
    *headers: tuple[str, str], path: str = "/api/v0/node", scheme: str = "http"
) -> dict[str, object]:
    return {
        "type": "http",
        "path": path,
        "scheme": scheme,
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
    }


def _code(*headers: tuple[str, str], **kw: str) -> str | None:
    refusal = GUARD.refusal(_scope(*headers, **kw))
    return None if refusal is None else refusal[1]


AUTH = ("authorization", f"Bearer {TOKEN}")


def test_a_loopback_or_allowed_host_with_the_token_passes() -> None:
    for host in ("127.0.0.1:9181", "localhost", "[::1]:80", "NODE.lan:1", "node.lan"):
        assert _code(("host", host), AUTH) is None, host


@pytest.mark.parametrize("host", ["evil.example:9181", "", "127.0.0.1:x", "[::1", "a:b:c"])
def test_a_foreign_or_unreadable_host_is_421(host: str) -> None:
    refusal = GUARD.refusal(_scope(("host", host), AUTH))
    assert refusal is not None and refusal[:2] == (421, BAD_HOST)


def test_no_host_is_421() -> None:
    assert _code(AUTH) == BAD_HOST


def test_the_first_of_repeated_headers_counts() -> None:
    assert _code(("host", "evil.example"), ("host", "127.0.0.1"), AUTH) == BAD_HOST
    assert _code(("host", "127.0.0.1"), ("host", "evil.example"), AUTH) is None
    wrong = ("authorization", "Bearer nope")
    assert _code(("host", "127.0.0.1"), wrong, AUTH) == ADMIN_TOKEN_NEEDED
    assert _code(("host", "127.0.0.1"), AUTH, wrong) is None


def test_origin_must_be_the_nodes_own() -> None:
    host = ("host", "127.0.0.1:9181")
    assert _code(host, ("origin", "http://127.0.0.1:9181"), AUTH) is None
    assert _code(host, ("origin", "HTTP://127.0.0.1:9181"), AUTH) is None  # urlsplit folds
    for origin in ("http://evil.example", "null", "https://127.0.0.1:9181", "http://127.0.0.1"):
        assert _code(host, ("origin", origin), AUTH) == FOREIGN_ORIGIN, origin
    secure = _scope(host, ("origin", "https://127.0.0.1:9181"), AUTH, scheme="https")
    assert GUARD.refusal(secure) is None


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer é"],
)
def test_a_missing_or_wrong_token_is_401(header: str | None) -> None:
    headers = [("host", "127.0.0.1")] + ([] if header is None else [("authorization", header)])
    refusal = GUARD.refusal(_scope(*headers))
    assert refusal is not None and refusal[:2] == (401, ADMIN_TOKEN_NEEDED)


def test_the_token_scheme_is_case_blind_and_spaces_are_trimmed() -> None:
    host = ("host", "127.0.0.1")
    assert _code(host, ("authorization", f"  bearer   {TOKEN}  ")) is None
    assert _code(host, ("authorization", f"BEARER {TOKEN}")) is None


def test_public_paths_need_no_token() -> None:
    host = ("host", "127.0.0.1")
    for path in (SYNC_PATH, "/openapi.json", "/api/v0/auth/token"):
        assert _code(host, path=path) is None, path
    assert _code(host, path="/api/v0/auth") == ADMIN_TOKEN_NEEDED
