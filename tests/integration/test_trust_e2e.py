"""Trust end to end: real ``loomdb start`` processes on 127.0.0.1 driven by
``loomdb client identity|space|sync``, the HTTP API and the library.

Covers ACCEPTANCE.md T1 (strangers cannot authenticate or sync; a revoked user is
refused from the revocation on, even through a member that did not know yet),
T2 (replayed, altered, foreign challenges; expiry — see
:func:`test_t2_an_expired_challenge_is_refused_over_http`), T3 (keys go only to
readers; a user without the key syncs entries it cannot read; a blind relay) and
I2 (a relay with no key refuses entries by strangers and revoked users, and
directory entries forged by a non-admin).

Every wait is bounded (subprocess time-outs, ready lines); every node is killed
at teardown (``cluster``). The test process acts as extra users of its own
(``Member``): it has their keys, so it can log in and sign entries.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest

from loomdb.api.app import create_app
from loomdb.api.auth import auth_routes
from loomdb.clock import HybridLogicalClock, ManualClock, SystemClock
from loomdb.entries.cid import CID
from loomdb.entries.entry import DIRECTORY_KIND, Entry, build_entry
from loomdb.errors import LoomError, RemoteError, RevokedError, TrustError
from loomdb.identity.keys import SigningKey
from loomdb.identity.user import UserIdentity
from loomdb.stores import MemoryStore
from loomdb.stores.base import PutStatus
from loomdb.stores.remote import RemoteStore
from loomdb.sync import wire
from loomdb.sync.replicate import pull_changes_from, push_changes_to
from loomdb.transports.endpoint import SYNC_MEDIA_TYPE
from loomdb.transports.websocket import WebSocketChannel
from loomdb.trust.admin import decode_invitation, encode_card
from loomdb.trust.auth import AuthService, answer_challenge
from loomdb.trust.directory import UserRecord, encode_op, fold
from loomdb.trust.spaces import DIRECTORY_COLLECTION, DIRECTORY_DOCUMENT, parse_space_id
from tests.integration.nodes import CLIENT_TIMEOUT, Node, Nodes, client_sync, node_env, nodes

pytestmark = pytest.mark.integration

T = TypeVar("T")
SPACE_HEADER = "X-Loomdb-Space"
API = "/api/v0"


# --- fixtures and helpers ------------------------------------------------------------


@pytest.fixture
def cluster() -> Iterator[Nodes]:
    with nodes() as group:
        yield group


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return anyio.run(fn, backend="trio")


def cli(node: Node, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``loomdb client ARGS --url NODE`` to completion (bounded); never a traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "loomdb", "client", *args, "--url", node.url],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        env=node_env(),
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def cli_json(node: Node, *args: str, stdin: str | None = None) -> Any:
    done = cli(node, *args, "--json", stdin=stdin)
    assert done.returncode == 0, (args, done.returncode, done.stdout, done.stderr)
    return json.loads(done.stdout)


def refused(done: subprocess.CompletedProcess[str], codes: tuple[int, ...], *texts: str) -> str:
    """The command failed with one of ``codes`` and one clear line naming one of ``texts``."""
    assert done.returncode in codes, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert any(text in lines[0] for text in texts), lines[0]
    return lines[0]


def identity_of(node: Node) -> UserIdentity:
    """The node's user, read from its (unencrypted: see node_env) keyring file."""
    ring = json.loads((node.home / "keyring.json").read_text())
    assert ring["encryption"] == "none"
    keys = ring["keys"]
    users = {u["user_id"]: u for u in keys["users"]}
    return UserIdentity.from_dict(users[keys["default_user"]])


def named_keys_of(node: Node) -> list[str]:
    ring = json.loads((node.home / "keyring.json").read_text())
    return [k["key_id"] for k in ring["keys"]["named_keys"]]


def docs_api(node: Node, space: str) -> httpx.Client:
    """The node's document API addressing ``space`` (the X-Loomdb-Space header)."""
    http = node.http()
    http.headers[SPACE_HEADER] = space
    return http


def write(node: Node, space: str, collection: str, doc_id: str, value: dict[str, Any]) -> None:
    with docs_api(node, space) as http:
        r = http.post(f"/collections/{collection}/docs", json={"id": doc_id, "value": value})
        assert r.status_code == 201, r.text


def read_all(node: Node, space: str, collection: str) -> dict[str, Any]:
    with docs_api(node, space) as http:
        r = http.get(f"/collections/{collection}/docs", params={"limit": 1000})
        if r.status_code == 404:
            return {}
        assert r.status_code == 200, r.text
        return {d["id"]: d["value"] for d in r.json()["documents"]}


def read_one(node: Node, space: str, collection: str, doc_id: str) -> httpx.Response:
    with docs_api(node, space) as http:
        return http.get(f"/collections/{collection}/docs/{doc_id}")


def entry_cids(node: Node, space: str, collection: str, doc_id: str) -> set[str]:
    with docs_api(node, space) as http:
        r = http.get(f"/collections/{collection}/docs/{doc_id}/history")
        assert r.status_code == 200, r.text
        return {item["cid"] for item in r.json()["history"]}


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def invite(admin: Node, space: str, card: str, *roles: str, collection: str = "*") -> str:
    """``client space invite`` on the admin's node; the invitation (its last line)."""
    args = [a for r in roles for a in ("--role", r)]
    done = cli(admin, "space", "invite", space, card, *args, "--collection", collection)
    assert done.returncode == 0, (done.stdout, done.stderr)
    invitation = done.stdout.strip().splitlines()[-1]
    assert invitation.startswith("loomdb-invite1:")
    return invitation


def join(node: Node, invitation: str) -> dict[str, Any]:
    """``client space join -`` with the invitation piped in."""
    joined: dict[str, Any] = cli_json(node, "space", "join", "-", stdin=invitation + "\n")
    return joined


def card_of(node: Node) -> str:
    card = cli(node, "identity", "--card")
    assert card.returncode == 0, card.stderr
    return card.stdout.strip()


@dataclass
class Member:
    """A user the test process holds the keys of."""

    identity: UserIdentity
    label: str

    @classmethod
    def new(cls, label: str) -> Member:
        return cls(UserIdentity.generate(), label)

    @property
    def user(self) -> str:
        return self.identity.user_id

    @property
    def card(self) -> str:
        me = self.identity
        return encode_card(UserRecord(me.user_id, me.x25519_public_key, (), self.label))


def login(node: Node, identity: UserIdentity) -> httpx.Response:
    """Challenge, answer, token: the token response (200, or the refusal)."""
    with httpx.Client(base_url=f"{node.url}{API}", timeout=30.0, trust_env=False) as http:
        r = http.post("/auth/challenge")
        assert r.status_code == 200, r.text
        return http.post("/auth/token", json=answer_challenge(r.json(), identity))


def token_of(node: Node, identity: UserIdentity) -> str:
    r = login(node, identity)
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def raw_sync(node: Node, token: str | None, op: str = "count") -> httpx.Response:
    """One sync frame over HTTP, with ``Authorization: Bearer token``."""
    headers = {"content-type": SYNC_MEDIA_TYPE}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    with httpx.Client(timeout=30.0, trust_env=False) as http:
        return http.post(
            f"{node.url}{API}/sync", content=wire.encode_request(op, {}), headers=headers
        )


class FixedToken:
    """A token source that always gives the same token and counts refresh requests."""

    def __init__(self, token: str) -> None:
        self.value = token
        self.refreshes = 0

    async def token(self, *, refresh: bool = False) -> str:
        self.refreshes += refresh
        return self.value


def directory_heads(invitation: str) -> tuple[str, list[Entry]]:
    space, entries = decode_invitation(invitation)
    managed = parse_space_id(space)
    assert managed is not None
    return space, fold(managed, entries).heads


def signed(
    author: SigningKey,
    space: str,
    collection: str,
    document: str,
    payload: bytes = b"not a real delta",
    parents: list[Entry] | None = None,
    kind: str = "create",
) -> Entry:
    """An entry signed by ``author`` now (public: no node has to read it)."""
    return build_entry(
        author=author,
        space=space,
        collection=collection,
        document=document,
        kind=kind,
        payload=payload,
        created_at=HybridLogicalClock(SystemClock()).now(),
        parents=parents or [],
    )


def forged_admin(author: SigningKey, user: str, invitation: str) -> Entry:
    """A directory ``role`` entry making ``user`` an admin of every collection, signed
    by ``author`` (after the directory's heads, as a real one would be)."""
    space, heads = directory_heads(invitation)
    op = {"op": "role", "user": user, "coll": "*", "roles": ["admin", "read", "write"]}
    return build_entry(
        author=author,
        space=space,
        collection=DIRECTORY_COLLECTION,
        document=DIRECTORY_DOCUMENT,
        kind=DIRECTORY_KIND,
        payload=encode_op(op),
        created_at=HybridLogicalClock(SystemClock()).now(),
        parents=heads,
    )


async def put_as(node: Node, identity: UserIdentity, entries: list[Entry]) -> dict[CID, str]:
    """Push ``entries`` to ``node`` logged in as ``identity``: each CID → ``ok`` or
    the refusal's code."""
    async with RemoteStore.connect(node.url, identity=identity) as remote:
        results = await remote.put_entries(entries)
    out = {}
    for result in results:
        if result.status is PutStatus.REJECTED:
            assert result.error is not None
            out[result.cid] = result.error.code
        else:
            out[result.cid] = "ok"
    return out


# --- T1 ------------------------------------------------------------------------------------


def test_t1_strangers_are_refused_members_sync_and_a_revoked_user_is_refused_from_then_on(
    cluster: Nodes, tmp_path: Path
) -> None:
    a = cluster.launch(tmp_path / "a")
    b = cluster.launch(tmp_path / "b")
    c = cluster.launch(tmp_path / "c")
    cluster.wait_ready()
    space = cli_json(a, "space", "create", "team")["space"]
    assert space.startswith("team~")
    write(a, space, "notes", "a1", {"by": "a", "n": 1})
    write(a, space, "notes", "a2", {"by": "a", "n": 2})
    a1_cids = entry_cids(a, space, "notes", "a1")
    b_id = identity_of(b)
    identity = cli_json(b, "identity")
    assert identity["user"] == b_id.user_id

    # -- B is a stranger: no token, no sync (exit 10: a TrustError), nothing moved
    r = login(a, b_id)
    assert (r.status_code, error_code(r)) == (403, "trust.not_member"), r.text
    # (B's node logs in, is refused, and tries anonymously: refused for the space)
    refused(cli(b, "sync", a.url, "--space", space), (10, 11), "not a member", "not in its")
    assert read_all(b, space, "notes") == {}

    async def anonymous() -> tuple[int | str, list[str], list[Entry | None]]:
        async with RemoteStore.connect(a.url) as remote:
            mirror = MemoryStore()
            pulled: int | str
            try:
                pulled = (await pull_changes_from(mirror, remote, space)).pulled
            except (TrustError, RemoteError) as exc:  # refused outright is fine too
                pulled = str(getattr(exc, "remote_code", exc.code))
            assert await mirror.count() == 0
            listed = await remote.list_spaces()
            got = await remote.get_entries([CID.parse(c) for c in a1_cids])
            return pulled, listed, got

    pulled, listed, got = run(anonymous)
    assert pulled == 0 or str(pulled).startswith("trust."), pulled
    assert space not in listed  # an anonymous client does not even see the space
    assert got == [None] * len(a1_cids)

    # -- A invites B (its card from 'client identity' on B); B joins; they sync
    invitation = invite(a, space, card_of(b), "read", "write")
    joined = join(b, invitation)
    assert (joined["space"], joined["admin"]) == (space, False)
    assert joined["roles"] == {"*": ["read", "write"]}
    users = cli_json(a, "space", "users", space)["users"]
    assert {u["user"] for u in users} == {identity["user"], cli_json(a, "identity")["user"]}
    write(b, space, "notes", "b-before", {"by": "b"})
    report = client_sync(a.url, "--space", space, url=b.url)
    assert report["rejected"] == []
    assert report["pulled"] >= 2 and report["pushed"] >= 1
    assert read_all(b, space, "notes") == read_all(a, space, "notes")
    assert set(read_all(a, space, "notes")) == {"a1", "a2", "b-before"}

    # -- C, a member too, gets everything from A
    join(c, invite(a, space, card_of(c), "read", "write"))
    assert client_sync(a.url, "--space", space, url=c.url)["rejected"] == []
    assert set(read_all(c, space, "notes")) == {"a1", "a2", "b-before"}

    # -- A revokes B while B holds a token and an open WebSocket to A
    async def revoke_while_connected() -> tuple[dict[str, Any], FixedToken, LoomError]:
        source = FixedToken(token_of(a, b_id))
        channel = WebSocketChannel(a.url, token_source=source)
        try:
            before = wire.decode_reply(await channel.request(wire.encode_request("count", {})))
            assert isinstance(before, int)
            done = await anyio.to_thread.run_sync(
                lambda: cli_json(a, "space", "revoke", space, b_id.user_id)
            )
            with pytest.raises(LoomError) as cut:
                await channel.request(wire.encode_request("count", {}))
        finally:
            await channel.aclose()
        return done, source, cut.value

    revoked, source, cut = run(revoke_while_connected)
    assert revoked["user"] == b_id.user_id and revoked["revoked_from"] > 0
    # every key B held rotates: the space key, and the key the notes collection got
    # when A (an admin) first wrote there
    assert sorted(k.split(".")[0] for k in revoked["rotated"]) == ["c-ab5aa97074c4", "space"]
    # the open WebSocket was closed (4401) at its next frame; the channel asked for a
    # new token, reconnected with the same old one and was refused again
    assert isinstance(cut, RevokedError), cut
    assert source.refreshes == 1
    old_token = source.value
    r = raw_sync(a, old_token)  # the same token over HTTP
    assert r.status_code == 401, r.text
    assert error_code(r) == "trust.revoked"
    assert r.headers["www-authenticate"].startswith("Bearer")

    # -- B is now refused at the challenge, by HTTP and by 'client sync'
    r = login(a, b_id)
    assert (r.status_code, error_code(r)) == (403, "trust.revoked"), r.text
    refused(cli(b, "sync", a.url, "--space", space), (10,), "revoked")

    # -- B writes after its revocation (its node does not know of it) and its node
    #    syncs into C, which does not know either; then C syncs with A
    write(b, space, "notes", "b-after", {"by": "b", "after": True})
    b_after = entry_cids(b, space, "notes", "b-after")
    write(c, space, "notes", "c1", {"by": "c"})
    via_c = client_sync(c.url, "--space", space, url=b.url)
    assert via_c["rejected"] == [] and via_c["pushed"] >= 1
    assert "b-after" in read_all(c, space, "notes")  # C took it: it had no revocation

    to_a = client_sync(a.url, "--space", space, url=c.url)
    rejected = {r["cid"]: r for r in to_a["rejected"]}
    assert set(rejected) == b_after, to_a
    for rejection in rejected.values():
        assert rejection["side"] == "remote"
        assert rejection["reason"].startswith("trust.revoked"), rejection
    assert to_a["pushed"] >= 1  # C's own entries landed
    on_a = read_all(a, space, "notes")
    assert set(on_a) == {"a1", "a2", "b-before", "c1"}  # B's entries from before stay
    # C pulled the revocation from A: C itself now refuses B's entries
    users = cli_json(c, "space", "users", space)["users"]
    assert {u["user"]: u["revoked_from"] for u in users}[b_id.user_id] == revoked["revoked_from"]
    assert cluster.stop_all(a, b, c) == [0, 0, 0]


# --- T2 ------------------------------------------------------------------------------------


def test_t2_replayed_altered_and_foreign_challenges_and_tokens_are_refused(
    cluster: Nodes, tmp_path: Path
) -> None:
    a = cluster.launch(tmp_path / "a")
    b = cluster.launch(tmp_path / "b")
    cluster.wait_ready()
    tester = Member.new("tester")
    for node in (a, b):  # a member of a space on each node
        space = cli_json(node, "space", "create", "t2")["space"]
        invite(node, space, tester.card, "read")
    me = tester.identity

    with httpx.Client(base_url=f"{a.url}{API}", timeout=30.0, trust_env=False) as http:
        # a good answer gives a token once; the same answer again is refused
        challenge = http.post("/auth/challenge").json()
        answer = answer_challenge(challenge, me)
        first = http.post("/auth/token", json=answer)
        assert first.status_code == 200, first.text
        assert first.headers["cache-control"] == "no-store"
        replay = http.post("/auth/token", json=answer)
        assert (replay.status_code, error_code(replay)) == (401, "auth.challenge"), replay.text

        # a failed attempt uses the challenge up: the right answer after it is refused
        challenge = http.post("/auth/challenge").json()
        good = answer_challenge(challenge, me)
        bad = {
            **good,
            "signature": answer_challenge(challenge, UserIdentity.generate())["signature"],
        }
        assert http.post("/auth/token", json=bad).status_code == 401
        late = http.post("/auth/token", json=good)
        assert (late.status_code, error_code(late)) == (401, "auth.challenge")

        # an altered challenge (a longer life), signed by the user, is refused
        challenge = http.post("/auth/challenge").json()
        longer = {**challenge, "expires": challenge["expires"] + 3_600_000}
        r = http.post("/auth/token", json=answer_challenge(longer, me))
        assert (r.status_code, error_code(r)) == (401, "auth.challenge")

        # A's challenge answered to B: refused by B, and A's challenge is still good
        challenge = http.post("/auth/challenge").json()
        answer = answer_challenge(challenge, me)
        with httpx.Client(base_url=f"{b.url}{API}", timeout=30.0, trust_env=False) as other:
            foreign = other.post("/auth/token", json=answer)
            assert (foreign.status_code, error_code(foreign)) == (401, "auth.challenge")
            assert "another server" in foreign.json()["error"]["message"]
            token_a = http.post("/auth/token", json=answer).json()["token"]
            token_b = token_of(b, me)
            # malformed answers are 422/400, never 500
            assert other.post("/auth/token", json={"nope": 1}).status_code == 422
            as_json = {"content-type": "application/json"}
            assert other.post("/auth/token", content=b"{", headers=as_json).status_code == 400
            assert other.post("/auth/token", content=b"{}").status_code == 415

    # tokens: each node takes its own only; junk and missing schemes are 401
    assert raw_sync(a, token_a).status_code == 200
    assert raw_sync(b, token_b).status_code == 200
    foreign = raw_sync(b, token_a)
    assert (foreign.status_code, error_code(foreign)) == (401, "auth.token"), foreign.text
    junk = raw_sync(a, "not-a-jwt")
    assert (junk.status_code, error_code(junk)) == (401, "auth.token")
    tampered = token_a[:-4] + ("AAAA" if not token_a.endswith("AAAA") else "BBBB")
    assert raw_sync(a, tampered).status_code == 401
    assert raw_sync(a, None).status_code == 200  # anonymous: allowed, reaches open spaces only

    async def websocket_with(token: str) -> LoomError:
        channel = WebSocketChannel(b.url, token_source=FixedToken(token))
        try:
            with pytest.raises(LoomError) as refused_:
                await channel.request(wire.encode_request("count", {}))
        finally:
            await channel.aclose()
        return refused_.value

    error = run(lambda: websocket_with(token_a))
    assert error.code == "auth.token", error
    assert cluster.stop_all(a, b) == [0, 0]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_t2_an_expired_challenge_is_refused_over_http() -> None:
    """Expiry, at the library level behind the real HTTP routes, in-process: a running
    node's challenge lifetime (60 s) cannot be shortened from outside."""
    clock = ManualClock(1_800_000_000_000)
    user = UserIdentity.generate()
    service = AuthService(SigningKey.generate(), lambda _user: None, clock=clock)
    app = create_app(None, extra_routes=auth_routes(service))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://node.test"
    ) as http:
        challenge = (await http.post(f"{API}/auth/challenge")).json()
        clock.advance(service.challenge_ttl_ms)  # exactly at expiry
        r = await http.post(f"{API}/auth/token", json=answer_challenge(challenge, user))
        assert (r.status_code, error_code(r)) == (401, "auth.challenge")
        assert "expired" in r.json()["error"]["message"]
        challenge = (await http.post(f"{API}/auth/challenge")).json()
        clock.advance(service.challenge_ttl_ms - 1)  # just in time
        r = await http.post(f"{API}/auth/token", json=answer_challenge(challenge, user))
        assert r.status_code == 200, r.text


# --- T3 and I2 ------------------------------------------------------------------------------


def test_t3_keys_go_to_readers_only_and_a_blind_relay_enforces_membership(
    cluster: Nodes, tmp_path: Path
) -> None:
    a = cluster.launch(tmp_path / "a")
    b = cluster.launch(tmp_path / "b")
    r = cluster.launch(tmp_path / "relay", "--relay")
    cluster.wait_ready()
    space = cli_json(a, "space", "create", "t3")["space"]
    tester = Member.new("pusher")  # pushes what the test builds
    gone = Member.new("gone")  # to be revoked
    invite(a, space, tester.card, "read", "write")
    invite(a, space, gone.card, "read", "write")
    # the relay: a user with the relay role, and never a key
    invite(a, space, card_of(r), "relay")
    invitation_b = invite(a, space, card_of(b), "read", collection="notes")
    joined = join(b, invitation_b)
    assert joined["roles"] == {"notes": ["read"]}
    # written once B may read notes: under the key of 'notes', granted to B
    write(a, space, "notes", "n1", {"text": "for B"})
    write(a, space, "secret", "s1", {"text": "not for B"})

    # R pulls the whole space from A; B pulls from R what it may read
    from_a = client_sync(a.url, "--pull", "--space", space, url=r.url)
    assert from_a["rejected"] == [] and from_a["pulled"] >= 2
    from_r = client_sync(r.url, "--pull", "--space", space, url=b.url)
    assert from_r["rejected"] == []
    assert read_all(b, space, "notes") == {"n1": {"text": "for B"}}
    assert read_all(b, space, "secret") == {}  # never pulled: B has no role on it
    assert named_keys_of(r) == []  # the relay holds no key at all

    # I2: the relay refuses, with no key, entries by a stranger and by a revoked user,
    # and keeps the rest of the batch
    stranger = SigningKey.generate()
    revoked = cli_json(a, "space", "revoke", space, gone.user)
    assert client_sync(a.url, "--pull", "--space", space, url=r.url)["rejected"] == []

    async def push_bad_batch() -> dict[str, Any]:
        local = MemoryStore()
        _, directory = decode_invitation(invitation_b)
        await local.put_entries(directory)
        bad_stranger = signed(stranger, space, "notes", "x1")
        bad_revoked = signed(gone.identity.signing_key, space, "notes", "x2")
        good = signed(tester.identity.signing_key, space, "notes", "x3")
        await local.put_entries([bad_stranger, bad_revoked, good])
        async with RemoteStore.connect(r.url, identity=tester.identity) as remote:
            report = await push_changes_to(local, remote, space)
            held = await remote.has_entries([bad_stranger.cid, bad_revoked.cid, good.cid])
        return {
            "report": report.as_dict(),
            "cids": {bad_stranger.cid: "stranger", bad_revoked.cid: "revoked", good.cid: "good"},
            "held": held,
        }

    pushed = run(push_bad_batch)
    reasons = {
        pushed["cids"][CID.parse(x["cid"])]: x["reason"] for x in pushed["report"]["rejected"]
    }
    assert set(reasons) == {"stranger", "revoked"}, pushed["report"]
    assert reasons["stranger"].startswith("trust.not_member")
    assert reasons["revoked"].startswith("trust.revoked")
    assert pushed["report"]["pushed"] == 1  # the good one landed
    assert pushed["held"] == [False, False, True]
    assert revoked["user"] == gone.user

    # a directory entry forged by B (a member, not an admin) giving itself admin:
    # refused by A and by the relay
    b_id = identity_of(b)
    forged = forged_admin(b_id.signing_key, b_id.user_id, invitation_b)
    assert run(lambda: put_as(a, b_id, [forged])) == {forged.cid: "trust.not_admin"}
    assert run(lambda: put_as(r, b_id, [forged])) == {forged.cid: "trust.not_admin"}
    users = {u["user"]: u for u in cli_json(a, "space", "users", space)["users"]}
    assert users[b_id.user_id]["roles"] == {"notes": ["read"]}

    # A revokes B and rotates; a note written afterwards reaches B's node through
    # the relay (a path that should not carry it: B is revoked), and B cannot read it
    old_notes_key = {k for k in named_keys_of(b) if k.startswith("c-")}
    assert old_notes_key  # B got the key of 'notes'
    gone_b = cli_json(a, "space", "revoke", space, b_id.user_id)
    assert gone_b["rotated"]
    write(a, space, "notes", "n2", {"text": "after B left"})
    assert client_sync(a.url, "--pull", "--space", space, url=r.url)["rejected"] == []
    to_b = client_sync(b.url, "--push", "--space", space, url=r.url)
    assert to_b["rejected"] == [] and to_b["pushed"] >= 1
    n2 = read_one(b, space, "notes", "n2")
    assert n2.status_code != 200, n2.text
    assert error_code(n2) == "key.missing", n2.text
    assert read_one(b, space, "notes", "n1").status_code == 200  # the old key still reads n1
    assert not set(gone_b["rotated"]) & set(named_keys_of(b))
    assert named_keys_of(r) == []
    assert cluster.stop_all(a, b, r) == [0, 0, 0]


def test_t3_a_reader_of_one_collection_reads_what_was_written_there_before_it_joined(
    cluster: Nodes, tmp_path: Path
) -> None:
    a = cluster.launch(tmp_path / "a")
    b = cluster.launch(tmp_path / "b")
    cluster.wait_ready()
    space = cli_json(a, "space", "create", "t3old")["space"]
    write(a, space, "notes", "n0", {"text": "before B"})
    join(b, invite(a, space, card_of(b), "read", collection="notes"))
    assert client_sync(a.url, "--pull", "--space", space, url=b.url)["rejected"] == []
    n0 = read_one(b, space, "notes", "n0")
    assert n0.status_code == 200, n0.text


def test_t3_a_reader_of_every_collection_gets_the_key_of_a_collection_with_its_own(
    cluster: Nodes, tmp_path: Path
) -> None:
    a = cluster.launch(tmp_path / "a")
    d = cluster.launch(tmp_path / "d")
    cluster.wait_ready()
    space = cli_json(a, "space", "create", "t3all")["space"]
    invite(a, space, Member.new("notes-only").card, "read", collection="notes")  # 'notes' key
    join(d, invite(a, space, card_of(d), "read", "write"))
    write(a, space, "notes", "n", {"v": 1})  # under the key of 'notes'
    assert client_sync(a.url, "--space", space, url=d.url)["rejected"] == []
    n = read_one(d, space, "notes", "n")
    assert n.status_code == 200, n.text


def test_t3_a_user_whose_read_role_is_revoked_syncs_new_entries_it_cannot_read(
    cluster: Nodes, tmp_path: Path
) -> None:
    a = cluster.launch(tmp_path / "a")
    d = cluster.launch(tmp_path / "d")
    cluster.wait_ready()
    space = cli_json(a, "space", "create", "t3d")["space"]
    write(a, space, "notes", "old", {"v": 1})
    d_user = cli_json(d, "identity")["user"]
    join(d, invite(a, space, card_of(d), "read", "relay"))
    assert client_sync(a.url, "--pull", "--space", space, url=d.url)["rejected"] == []
    assert read_all(d, space, "notes") == {"old": {"v": 1}}

    ungrant = cli_json(a, "space", "ungrant", space, d_user, "read")
    assert ungrant["roles"] == {"*": ["relay"]}
    # every key D could read rotates: the space key and the key notes got at A's first write
    assert sorted(k.split(".")[0] for k in ungrant["rotated"]) == ["c-ab5aa97074c4", "space"]
    new_key = next(k for k in ungrant["rotated"] if k.startswith("c-"))
    write(a, space, "notes", "new", {"v": 2})
    pulled = client_sync(a.url, "--pull", "--space", space, url=d.url)  # relay role: it may
    assert pulled["rejected"] == [] and pulled["pulled"] >= 1
    new = read_one(d, space, "notes", "new")
    assert error_code(new) == "key.missing", new.text
    assert read_one(d, space, "notes", "old").status_code == 200
    assert new_key not in named_keys_of(d)
    spaces = cli_json(d, "space", "list")["spaces"]
    space_key = next(k for k in ungrant["rotated"] if k.startswith("space."))
    assert spaces[0]["key"] == space_key  # D knows the key exists, not its secret
    assert cluster.stop_all(a, d) == [0, 0]


# --- the CLI against a real node ----------------------------------------------------------


def test_cli_space_commands_against_a_node(cluster: Nodes, tmp_path: Path) -> None:
    a = cluster.start(tmp_path / "a")
    created = cli(a, "space", "create", "cli")
    assert created.returncode == 0, created.stderr
    space = f"cli~{cli_json(a, 'identity')['user']}"
    assert space in created.stdout
    refused(cli(a, "space", "create", "cli"), (9,), "exists")  # a conflict
    refused(cli(a, "space", "create", "Bad Name"), (2,), "space name")
    refused(cli(a, "space", "users", f"nope~{space.split('~')[1]}"), (8,), "nope")
    refused(cli(a, "space", "join", "loomdb-invite1:AAAA"), (2,), "invitation")
    refused(cli(a, "space", "invite", space, "loomdb-user1:xx", "--role", "read"), (2,), "card")
    listed = cli(a, "space", "list")
    assert listed.returncode == 0 and space in listed.stdout
    tester = Member.new("t")
    assert invite(a, space, tester.card, "read")
    users = cli(a, "space", "users", space)
    assert tester.user in users.stdout and "(t)" in users.stdout
    granted = cli_json(a, "space", "grant", space, tester.user, "write", "--collection", "notes")
    assert granted["roles"] == {"*": ["read"], "notes": ["write"]}
    rotated = cli_json(a, "space", "rotate", space)
    assert rotated["key"].endswith("@2")
    invitation = cli(a, "space", "invitation", space)
    assert invitation.stdout.strip().splitlines()[-1].startswith("loomdb-invite1:")
    revoked = cli(a, "space", "revoke", space, tester.user, "--effective-at", str(1 << 16))
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    # a relay has a user (to log in elsewhere) and no space of its own
    assert cli_json(relay := cluster.start(tmp_path / "relay", "--relay"), "identity")["user"]
    assert cli_json(relay, "space", "list") == {"spaces": []}


def test_a_relay_refuses_to_create_a_space_and_stays_keyless(
    cluster: Nodes, tmp_path: Path
) -> None:
    relay = cluster.start(tmp_path / "relay", "--relay")
    done = cli(relay, "space", "create", "mine")
    assert named_keys_of(relay) == []
    assert done.returncode != 0, done.stdout
    assert relay.stop() == 0
    cluster.start(relay.home, "--relay")  # it starts again: still a relay
