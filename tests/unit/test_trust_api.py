"""The trust API in-process (two nodes' NodeTrust behind their Starlette apps) and
the ``loomdb client identity`` / ``client space …`` commands' argument handling."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from loomdb.api import create_app
from loomdb.api.trust import TRUST_ENDPOINTS, trust_routes
from loomdb.cli import trust as trust_cli
from loomdb.cli.client import SPACE_ENV, SPACE_HEADER, ApiClient
from loomdb.cli.main import build_parser, main
from loomdb.errors import ForbiddenError
from loomdb.node.home import NodeHome
from loomdb.stores.memory import MemoryStore
from loomdb.trust.admin import NodeTrust, decode_card, decode_invitation
from loomdb.trust.book import DirectoryBook
from loomdb.trust.guard import GuardedStore

API = "/api/v0"


# --- fixtures ---------------------------------------------------------------------------


@dataclass
class Peer:
    trust: NodeTrust
    api: httpx.AsyncClient

    @property
    def user(self) -> str:
        return self.trust.user_id


def _trust(path: Path) -> NodeTrust:
    home = NodeHome.open(path, environ={})
    book = DirectoryBook()
    return NodeTrust(home, GuardedStore(MemoryStore(), book), book)


def _api(trust: NodeTrust | None, **kw: Any) -> httpx.AsyncClient:
    app = create_app(None, extra_routes=trust_routes(**kw))
    if trust is not None:
        app.state.trust = trust
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://loomdb.test")


@pytest.fixture
async def peers(tmp_path: Path) -> AsyncIterator[tuple[Peer, Peer]]:
    """Node A and node B (a stranger to A), each with its own trust API."""
    a, b = _trust(tmp_path / "a"), _trust(tmp_path / "b")
    async with _api(a) as api_a, _api(b) as api_b:
        yield Peer(a, api_a), Peer(b, api_b)


@pytest.fixture
async def team(peers: tuple[Peer, Peer]) -> str:
    """A space ``team`` whose root is A."""
    a, _ = peers
    r = await a.api.post(f"{API}/spaces", json={"name": "team"})
    assert r.status_code == 201, r.text
    return str(r.json()["space"])


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert "Traceback" not in response.text
    return str(body["error"]["message"])


async def invite(a: Peer, b: Peer, space: str, roles: list[str], **extra: Any) -> str:
    card = (await b.api.get(f"{API}/identity")).json()["card"]
    r = await a.api.post(
        f"{API}/spaces/{space}/users", json={"card": card, "roles": roles, **extra}
    )
    assert r.status_code == 201, r.text
    assert r.json()["user"] == b.user
    return str(r.json()["invitation"])


async def join(peer: Peer, invitation: str) -> dict[str, Any]:
    r = await peer.api.post(f"{API}/spaces/join", json={"invitation": invitation})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


# --- the routes -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_identity_is_the_nodes_user_and_its_card_decodes(peers: tuple[Peer, Peer]) -> None:
    a, _ = peers
    r = await a.api.get(f"{API}/identity")
    assert r.status_code == 200
    info = r.json()
    assert set(info) == {"user", "card", "peer_id", "x25519"}
    assert info["user"] == a.user
    assert info["peer_id"] == a.trust.home.peer_id
    record = decode_card(info["card"])
    assert record.user_id == a.user
    assert record.x25519.hex() == info["x25519"]
    assert record.devices == (info["peer_id"],)


@pytest.mark.anyio
async def test_create_list_and_a_second_create_conflicts(peers: tuple[Peer, Peer]) -> None:
    a, _ = peers
    assert (await a.api.get(f"{API}/spaces")).json() == {"spaces": []}
    r = await a.api.post(f"{API}/spaces", json={"name": "team"})
    assert r.status_code == 201, r.text
    space = r.json()
    assert space["space"] == f"team~{a.user}"
    assert (space["name"], space["root"], space["admin"], space["users"]) == (
        "team", a.user, True, 1,
    )  # fmt: skip
    assert space["roles"] == {"*": ["admin", "read", "write"]}
    assert space["key"]  # the space key, version 1
    assert (await a.api.get(f"{API}/spaces")).json() == {"spaces": [space]}
    again = await a.api.post(f"{API}/spaces", json={"name": "team"})
    assert_error(again, 409, "document.conflict")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"name": "Team!"}, 422, "validation"),  # the library's name rule
        ({"name": "x" * 64}, 422, "validation"),
        ({"name": ""}, 400, "request.invalid"),
        ({"name": 3}, 400, "request.invalid"),
        ({}, 400, "request.invalid"),
        ({"name": "ok", "extra": 1}, 400, "request.invalid"),
        (["team"], 400, "request.invalid"),
    ],
)
async def test_bad_space_bodies(
    peers: tuple[Peer, Peer], body: Any, status: int, code: str
) -> None:
    a, _ = peers
    assert_error(await a.api.post(f"{API}/spaces", json=body), status, code)
    assert (await a.api.get(f"{API}/spaces")).json() == {"spaces": []}


@pytest.mark.anyio
async def test_bodies_that_are_not_json_or_too_large(tmp_path: Path) -> None:
    async with _api(_trust(tmp_path / "a"), max_body_bytes=1024) as api:
        as_json = {"content-type": "application/json"}
        r = await api.post(f"{API}/spaces", content=b"{nope", headers=as_json)
        assert_error(r, 400, "request.json")
        r = await api.post(f"{API}/spaces", content=b'{"name": "t"}', headers={"content-type": "x"})
        assert_error(r, 415, "request.media_type")
        r = await api.post(f"{API}/spaces", headers=as_json)  # name is required
        assert_error(r, 400, "request.json")
        big = {"invitation": "loomdb-invite1:" + "A" * 2000}
        assert_error(await api.post(f"{API}/spaces/join", json=big), 413, "request.too_large")
        assert_error(await api.get(f"{API}/spaces", params={"x": "1"}), 400, "request.invalid")
        r = await api.delete(f"{API}/spaces")
        assert "GET" in assert_error(r, 405, "route.method")


@pytest.mark.anyio
async def test_a_node_without_trust_answers_404_on_every_trust_route(tmp_path: Path) -> None:
    async with _api(None) as api:
        for endpoint in TRUST_ENDPOINTS:
            path = endpoint.path.format(space="team~x", user="z6Mk")
            r = await api.request(endpoint.method, path, json={})
            message = assert_error(r, 404, "route.not_found")
            assert "manages no spaces" in message


@pytest.mark.anyio
async def test_invite_join_and_list_users(peers: tuple[Peer, Peer], team: str) -> None:
    a, b = peers
    invitation = await invite(a, b, team, ["read", "write"], label="Bea")
    assert invitation.startswith("loomdb-invite1:")
    space, entries = decode_invitation(invitation)
    assert space == team and entries
    assert (await b.api.get(f"{API}/spaces/{team}/users")).status_code == 404  # not joined yet

    joined = await join(b, invitation)
    assert joined["space"] == team
    assert (joined["admin"], joined["roles"]) == (False, {"*": ["read", "write"]})
    assert joined["key"] is not None
    assert b.trust.home.keyring.get_named_key(joined["key"]) is not None  # granted, unwrapped
    assert (await b.api.get(f"{API}/spaces")).json()["spaces"] == [joined]

    for peer in (a, b):  # both see the same directory
        users = (await peer.api.get(f"{API}/spaces/{team}/users")).json()["users"]
        by_id = {u["user"]: u for u in users}
        assert set(by_id) == {a.user, b.user}
        assert by_id[a.user]["root"] is True
        assert by_id[b.user] == {
            "user": b.user,
            "label": "Bea",
            "devices": [b.trust.home.peer_id],
            "roles": {"*": ["read", "write"]},
            "revoked_from": None,
            "root": False,
        }
    # a fresh invitation carries the same directory
    r = await a.api.get(f"{API}/spaces/{team}/invitation")
    assert r.status_code == 200
    assert decode_invitation(r.json()["invitation"])[0] == team


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"card": "loomdb-user1:AAAA", "roles": ["read"]}, 422, "validation"),
        ({"card": "hello", "roles": ["read"]}, 422, "validation"),
        ({"card": "CARD", "roles": []}, 422, "validation"),
        ({"card": "CARD", "roles": ["boss"]}, 400, "request.invalid"),
        ({"card": "CARD", "roles": "read"}, 400, "request.invalid"),
        ({"card": "CARD"}, 400, "request.invalid"),
        ({"card": "CARD", "roles": ["read"], "collection": ""}, 400, "request.invalid"),
        ({"card": "CARD", "roles": ["read"], "label": 7}, 400, "request.invalid"),
    ],
)
async def test_bad_invitations_of_a_user(
    peers: tuple[Peer, Peer], team: str, body: dict[str, Any], status: int, code: str
) -> None:
    a, b = peers
    if body.get("card") == "CARD":
        body = {**body, "card": b.trust.card()}
    r = await a.api.post(f"{API}/spaces/{team}/users", json=body)
    assert_error(r, status, code)
    users = (await a.api.get(f"{API}/spaces/{team}/users")).json()["users"]
    assert [u["user"] for u in users] == [a.user]  # nothing was written


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("invitation", "status", "code"),
    [
        ("hello", 422, "validation"),
        ("loomdb-invite1:AAAA", 422, "validation"),
        ("loomdb-invite1:!!", 422, "validation"),
        ("", 400, "request.invalid"),
    ],
)
async def test_bad_invitations_are_refused(
    peers: tuple[Peer, Peer], invitation: str, status: int, code: str
) -> None:
    _, b = peers
    r = await b.api.post(f"{API}/spaces/join", json={"invitation": invitation})
    assert_error(r, status, code)
    assert (await b.api.get(f"{API}/spaces")).json() == {"spaces": []}


@pytest.mark.anyio
async def test_an_invitation_that_does_not_list_this_user_is_refused(
    peers: tuple[Peer, Peer], team: str
) -> None:
    a, b = peers
    invitation = (await a.api.get(f"{API}/spaces/{team}/invitation")).json()["invitation"]
    r = await b.api.post(f"{API}/spaces/join", json={"invitation": invitation})
    assert_error(r, 403, "trust.not_member")


@pytest.mark.anyio
async def test_a_tampered_invitation_is_refused(peers: tuple[Peer, Peer], team: str) -> None:
    a, b = peers
    invitation = await invite(a, b, team, ["read"])
    cut = invitation[: len(invitation) // 2]
    r = await b.api.post(f"{API}/spaces/join", json={"invitation": cut})
    assert_error(r, 422, "validation")


@pytest.mark.anyio
async def test_unknown_spaces_and_users_are_404(peers: tuple[Peer, Peer], team: str) -> None:
    a, b = peers
    unknown = f"other~{a.user}"
    calls: list[tuple[str, str, Any]] = [
        ("GET", f"{API}/spaces/{unknown}/users", None),
        ("GET", f"{API}/spaces/{unknown}/invitation", None),
        ("POST", f"{API}/spaces/{unknown}/keys/rotate", {}),
        ("POST", f"{API}/spaces/{unknown}/users/{b.user}/revoke", {}),
        ("POST", f"{API}/spaces/{unknown}/users", {"card": b.trust.card(), "roles": ["read"]}),
        (
            "POST",
            f"{API}/spaces/{unknown}/roles",
            {"user": b.user, "role": "read", "action": "grant"},
        ),
        ("GET", f"{API}/spaces/main/users", None),  # an open space has no directory
        ("GET", f"{API}/spaces/not~a-user-id/users", None),
        # a user that is not in the space
        ("POST", f"{API}/spaces/{team}/users/{b.user}/revoke", {}),
        ("POST", f"{API}/spaces/{team}/roles", {"user": b.user, "role": "read", "action": "grant"}),
    ]
    for method, path, body in calls:
        r = await a.api.request(method, path, json=body)
        assert_error(r, 404, "document.not_found")


@pytest.mark.anyio
async def test_a_member_that_is_not_an_admin_is_forbidden(
    peers: tuple[Peer, Peer], team: str
) -> None:
    a, b = peers
    await join(b, await invite(a, b, team, ["read", "write"]))
    calls: list[tuple[str, Any]] = [
        ("users", {"card": a.trust.card(), "roles": ["read"]}),
        (f"users/{a.user}/revoke", {}),
        ("roles", {"user": b.user, "role": "admin", "action": "grant"}),
        ("roles", {"user": b.user, "role": "write", "action": "revoke"}),
        ("keys/rotate", {"collection": "notes"}),
    ]
    for tail, body in calls:
        r = await b.api.post(f"{API}/spaces/{team}/{tail}", json=body)
        assert_error(r, 403, ForbiddenError.code)
    users = (await b.api.get(f"{API}/spaces/{team}/users")).json()["users"]
    assert {u["user"]: u["roles"] for u in users}[b.user] == {"*": ["read", "write"]}


@pytest.mark.anyio
async def test_grant_and_revoke_roles(peers: tuple[Peer, Peer], team: str) -> None:
    a, b = peers
    await join(b, await invite(a, b, team, ["read"], collection="notes"))
    roles = f"{API}/spaces/{team}/roles"
    r = await a.api.post(
        roles, json={"user": b.user, "role": "write", "collection": "notes", "action": "grant"}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"user": b.user, "roles": {"notes": ["read", "write"]}}
    r = await a.api.post(roles, json={"user": b.user, "role": "relay", "action": "grant"})
    assert r.json()["roles"] == {"*": ["relay"], "notes": ["read", "write"]}

    r = await a.api.post(
        roles, json={"user": b.user, "role": "read", "collection": "notes", "action": "revoke"}
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["roles"] == {"*": ["relay"], "notes": ["write"]}
    assert len(answer["rotated"]) == 1  # B could read notes: its key has a new version
    for bad in (
        {"user": b.user, "role": "read", "action": "toggle"},
        {"user": b.user, "role": "owner", "action": "grant"},
        {"user": b.user, "action": "grant"},
    ):
        assert_error(await a.api.post(roles, json=bad), 400, "request.invalid")
    assert_error(
        await a.api.post(roles, json={"user": "nobody", "role": "read", "action": "grant"}),
        404,
        "document.not_found",
    )


@pytest.mark.anyio
async def test_revoke_a_user_and_rotate_keys(peers: tuple[Peer, Peer], team: str) -> None:
    a, b = peers
    joined = await join(b, await invite(a, b, team, ["read", "write"]))
    revoke = f"{API}/spaces/{team}/users/{b.user}/revoke"
    assert_error(await a.api.post(revoke, json={"effective_at": -1}), 400, "request.invalid")
    assert_error(await a.api.post(revoke, json={"effective_at": "now"}), 400, "request.invalid")
    assert_error(await a.api.post(revoke, json={"at": 1}), 400, "request.invalid")
    root = f"{API}/spaces/{team}/users/{a.user}/revoke"
    assert_error(await a.api.post(root, json={}), 422, "validation")  # the root stays

    r = await a.api.post(revoke, json={"effective_at": 12345 << 16})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["user"], answer["revoked_from"]) == (b.user, 12345 << 16)
    assert len(answer["rotated"]) == 1 and answer["rotated"][0] != joined["key"]
    users = (await a.api.get(f"{API}/spaces/{team}/users")).json()["users"]
    revoked = {u["user"]: u for u in users}[b.user]
    assert (revoked["revoked_from"], revoked["roles"]) == (12345 << 16, {"*": ["read", "write"]})
    space = (await a.api.get(f"{API}/spaces")).json()["spaces"][0]
    assert space["key"] == answer["rotated"][0]
    # re-inviting a revoked user is refused
    r = await a.api.post(
        f"{API}/spaces/{team}/users", json={"card": b.trust.card(), "roles": ["read"]}
    )
    assert_error(r, 422, "validation")


@pytest.mark.anyio
async def test_revoke_and_rotate_take_an_empty_body(peers: tuple[Peer, Peer], team: str) -> None:
    a, b = peers
    await join(b, await invite(a, b, team, ["read"]))
    before = (await a.api.get(f"{API}/spaces")).json()["spaces"][0]["key"]
    path = f"{API}/spaces/{team}/keys/rotate"
    # no body and no content type: what a web page may send anywhere; refused
    assert_error(await a.api.post(path), 415, "request.media_type")
    as_json = {"content-type": "application/json"}
    r = await a.api.post(path, headers=as_json)  # no body at all, declared JSON
    assert r.status_code == 200, r.text
    assert r.json()["key"] != before
    assert r.json()["key"].endswith("@2")
    r = await a.api.post(f"{API}/spaces/{team}/keys/rotate", json={"collection": "notes"})
    assert r.json()["key"].startswith("c-") and r.json()["key"].endswith("@1")
    r = await a.api.post(f"{API}/spaces/{team}/users/{b.user}/revoke", headers=as_json)
    assert r.status_code == 200, r.text
    assert r.json()["revoked_from"] > 0


# --- the CLI --------------------------------------------------------------------------------


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[Any]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _leaves(sub, (*path, name))
            return found
    return [(path, parser)]


SPACE_COMMANDS = ("create", "list", "join", "users", "invite", "revoke", "grant", "ungrant",
                  "rotate", "invitation")  # fmt: skip
TRUST_COMMANDS = {"client identity", *(f"client space {c}" for c in SPACE_COMMANDS)}


def test_every_trust_command_has_help_url_json_and_space() -> None:
    leaves = {" ".join(p): sub for p, sub in _leaves(build_parser()) if p[0] == "client"}
    assert set(leaves) >= TRUST_COMMANDS
    for name in TRUST_COMMANDS | {"client doc get", "client sync"}:
        sub = leaves[name]
        assert sub.description
        options = {s for a in sub._actions for s in a.option_strings}
        assert {"--url", "--json", "--space"} <= options, name


@dataclass
class Seen:
    requests: list[httpx.Request]
    answer: Any = None
    status: int = 200


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch) -> Seen:
    """The client commands talk to a mock node that records the requests."""
    seen = Seen([])

    def handler(request: httpx.Request) -> httpx.Response:
        seen.requests.append(request)
        return httpx.Response(seen.status, json=seen.answer)

    def client(args: argparse.Namespace) -> ApiClient:
        return ApiClient(args.url, space=args.space, transport=httpx.MockTransport(handler))

    monkeypatch.setattr(trust_cli, "api_client", client)
    monkeypatch.delenv(SPACE_ENV, raising=False)
    return seen


def _body(request: httpx.Request) -> Any:
    return json.loads(request.content) if request.content else None


SPACE = "team~z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
USER = "z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH"


@pytest.mark.parametrize(
    ("argv", "method", "path", "body"),
    [
        (["identity"], "GET", "/identity", None),
        (["space", "create", "team"], "POST", "/spaces", {"name": "team"}),
        (["space", "list"], "GET", "/spaces", None),
        (["space", "join", "loomdb-invite1:abc"], "POST", "/spaces/join",
         {"invitation": "loomdb-invite1:abc"}),
        (["space", "users", SPACE], "GET", f"/spaces/{SPACE}/users", None),
        (["space", "invite", SPACE, "loomdb-user1:x", "--role", "read", "--role", "write",
          "--collection", "notes", "--label", "Bea"], "POST", f"/spaces/{SPACE}/users",
         {"card": "loomdb-user1:x", "roles": ["read", "write"], "collection": "notes",
          "label": "Bea"}),
        (["space", "revoke", SPACE, USER], "POST", f"/spaces/{SPACE}/users/{USER}/revoke", {}),
        (["space", "revoke", SPACE, USER, "--effective-at", "42"], "POST",
         f"/spaces/{SPACE}/users/{USER}/revoke", {"effective_at": 42}),
        (["space", "grant", SPACE, USER, "admin"], "POST", f"/spaces/{SPACE}/roles",
         {"user": USER, "role": "admin", "collection": "*", "action": "grant"}),
        (["space", "ungrant", SPACE, USER, "read", "--collection", "a b"], "POST",
         f"/spaces/{SPACE}/roles",
         {"user": USER, "role": "read", "collection": "a b", "action": "revoke"}),
        (["space", "rotate", SPACE], "POST", f"/spaces/{SPACE}/keys/rotate", {"collection": "*"}),
        (["space", "invitation", SPACE], "GET", f"/spaces/{SPACE}/invitation", None),
    ],
)  # fmt: skip
def test_commands_make_one_request(
    node: Seen, argv: list[str], method: str, path: str, body: Any
) -> None:
    node.answer = {}
    assert main(["client", *argv, "--url", "http://node.test", "--json"]) == 0
    (request,) = node.requests
    assert request.method == method
    assert request.url.path == f"/api/v0{path}"
    assert _body(request) == body
    assert SPACE_HEADER.lower() not in request.headers


def test_space_option_and_env_send_the_space_header(
    node: Seen, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.answer = {"spaces": []}
    assert main(["client", "space", "list", "--url", "http://n.test", "--space", SPACE]) == 0
    assert node.requests[-1].headers[SPACE_HEADER] == SPACE
    monkeypatch.setenv(SPACE_ENV, SPACE)
    assert main(["client", "space", "list", "--url", "http://n.test"]) == 0
    assert node.requests[-1].headers[SPACE_HEADER] == SPACE


def test_the_space_header_is_sent_by_document_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"documents": [], "count": 0})

    real = ApiClient.__init__

    def patched(self: ApiClient, url: str, **kw: Any) -> None:
        real(self, url, **kw, transport=httpx.MockTransport(handler))

    monkeypatch.setattr(ApiClient, "__init__", patched)
    assert main(["client", "doc", "list", "notes", "--url", "http://n.test", "--space", SPACE]) == 0
    assert seen[-1].headers[SPACE_HEADER] == SPACE


def test_a_bad_space_header_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["client", "space", "list", "--url", "http://127.0.0.1:9", "--space", "tëam"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--space" in err


def test_invite_prints_the_invitation_alone_on_the_last_line(
    node: Seen, capsys: pytest.CaptureFixture[str]
) -> None:
    node.answer = {"user": USER, "invitation": "loomdb-invite1:xyz"}
    argv = ["client", "space", "invite", SPACE, "loomdb-user1:x", "--role", "read"]
    assert main([*argv, "--url", "http://n.test"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "loomdb-invite1:xyz"
    assert USER in out[0]


def test_cards_and_invitations_from_stdin_and_files(
    node: Seen, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.answer = {"space": SPACE, "name": "team", "root": USER, "admin": False,
                   "roles": {"*": ["read"]}, "users": 2, "key": None}  # fmt: skip
    # the whole output of 'space invite' piped in: its last line is the invitation
    monkeypatch.setattr("sys.stdin", io.StringIO("added user …:\nloomdb-invite1:abc\n\n"))
    assert main(["client", "space", "join", "-", "--url", "http://n.test"]) == 0
    assert _body(node.requests[-1]) == {"invitation": "loomdb-invite1:abc"}
    card = tmp_path / "card.txt"
    card.write_text("loomdb-user1:fromfile\n")
    node.answer = {"user": USER, "invitation": "loomdb-invite1:x"}
    argv = ["client", "space", "invite", SPACE, f"@{card}", "--role", "read"]
    assert main([*argv, "--url", "http://n.test"]) == 0
    assert _body(node.requests[-1])["card"] == "loomdb-user1:fromfile"


@pytest.mark.parametrize(
    "argv",
    [
        ["space", "invite", SPACE, "loomdb-user1:x"],  # no --role
        ["space", "invite", SPACE, "loomdb-user1:x", "--role", "owner"],
        ["space", "invite", SPACE, "@/nonexistent/card", "--role", "read"],
        ["space", "grant", SPACE, USER, "owner"],
        ["space", "grant", SPACE, USER],
        ["space", "revoke", SPACE, USER, "--effective-at", "-3"],
        ["space", "revoke", SPACE, USER, "--effective-at", "soon"],
        ["space", "rotate", SPACE, "--collection", " "],
        ["space", "users", ""],
        ["space", "create"],
        ["space"],
        ["space", "frobnicate"],
    ],
)
def test_bad_arguments_exit_2_without_a_traceback(
    node: Seen, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["client", *argv, "--url", "http://n.test"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "error:" in line]
    assert node.requests == []


def test_empty_stdin_is_a_usage_error(
    node: Seen, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    with pytest.raises(SystemExit) as exit_:
        main(["client", "space", "join", "-", "--url", "http://n.test"])
    assert exit_.value.code == 2
    assert "nothing read from stdin" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("status", "code", "exit_code"),
    [
        (403, "trust.forbidden", 10),
        (403, "trust.not_member", 10),
        (401, "auth.required", 11),
        (404, "document.not_found", 8),
        (422, "validation", 2),
        (409, "document.conflict", 9),
    ],
)
def test_api_errors_map_to_exit_codes(
    node: Seen, status: int, code: str, exit_code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    node.status = status
    node.answer = {"error": {"code": code, "message": "refused here"}}
    assert main(["client", "space", "rotate", SPACE, "--url", "http://n.test"]) == exit_code
    assert capsys.readouterr().err == "loomdb: error: refused here\n"


def test_human_output_of_spaces_and_users(node: Seen, capsys: pytest.CaptureFixture[str]) -> None:
    node.answer = {
        "users": [
            {"user": USER, "label": "Bea", "devices": ["12D3KooWx"], "root": False,
             "roles": {"notes": ["read"], "*": ["relay"]}, "revoked_from": 1 << 16},
        ]
    }  # fmt: skip
    assert main(["client", "space", "users", SPACE, "--url", "http://n.test"]) == 0
    out = capsys.readouterr().out
    assert f"{USER} (Bea)  *: relay; notes: read  1 device(s)  [revoked from 1970-" in out
    assert "(1 users)" in out
