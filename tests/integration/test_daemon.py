"""A real node (`loomdb start` as a subprocess) driven over HTTP and by `loomdb client`.

Covers ACCEPTANCE.md L1-L5 on one node, its signals (SIGTERM, SIGINT, kill -9)
and the command line's failures. Every wait is bounded; every node is killed in
a finally.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.nodes import STOP_TIMEOUT, Node
from tests.integration.nodes import node_env as _env
from tests.support import run_python

pytestmark = pytest.mark.integration

PEOPLE_SCHEMA = {"fields": {"name": {"type": "string", "required": True}, "age": "int"}}


@contextmanager
def running_node(home: Path) -> Iterator[Node]:
    node = Node(home)
    try:
        node.wait_ready()
        yield node
    finally:
        node.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A node shared by the tests that neither stop nor restart it."""
    with running_node(tmp_path_factory.mktemp("shared") / "home") as shared:
        yield shared


def loomdb(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = _env(**({"LOOMDB_URL": url} if url else {}))
    return run_python("-m", "loomdb", *args, env=env, timeout=60)


def ok(*args: str, url: str) -> Any:
    """Run a client command with --json; it must succeed; its JSON output."""
    run = loomdb(*args, "--json", url=url)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    return json.loads(run.stdout) if run.stdout.strip() else None


def fails(*args: str, url: str | None = None, code: int) -> str:
    run = loomdb(*args, url=url)
    assert run.returncode == code, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert lines, "no message"
    return run.stderr


def snapshot(http: httpx.Client, coll: str) -> dict[str, Any]:
    """Every document of ``coll`` with its history: what a restart must keep."""
    docs = http.get(f"/collections/{coll}/docs", params={"limit": 1000}).json()["documents"]
    return {
        d["id"]: (d, http.get(f"/collections/{coll}/docs/{d['id']}/history").json()) for d in docs
    }


# --- L1 ---------------------------------------------------------------------------


def test_l1_crud_through_the_cli_and_a_schema_that_stores_nothing(node: Node) -> None:
    url = node.url
    info = ok("client", "collection", "add", "l1", "--schema", json.dumps(PEOPLE_SCHEMA), url=url)
    assert info["schema"]["fields"]["age"]["type"] == "int"
    assert ok("client", "collection", "get", "l1", url=url)["name"] == "l1"
    assert "l1" in [c["name"] for c in ok("client", "collection", "list", url=url)["collections"]]

    made = ok("client", "doc", "create", "l1", "--id", "ada", '{"name": "Ada", "age": 36}', url=url)
    assert made["value"] == {"name": "Ada", "age": 36}
    assert ok("client", "doc", "get", "l1", "ada", url=url)["value"] == made["value"]
    updated = ok(
        "client", "doc", "update", "l1", "ada", '{"age": 37, "x": 1}', "--unset", "x", url=url
    )
    assert updated["value"] == {"name": "Ada", "age": 37}

    entries = ok("client", "node", url=url)["stats"]["entries"]
    err = fails("client", "doc", "create", "l1", "--id", "bad", '{"name": "B", "age": "x"}',
                url=url, code=9)  # fmt: skip
    assert "age" in err
    assert len(err.strip().splitlines()) == 1
    fails("client", "doc", "create", "l1", '{"age": 3}', url=url, code=9)  # name is required
    assert ok("client", "node", url=url)["stats"]["entries"] == entries  # nothing stored
    fails("client", "doc", "get", "l1", "bad", url=url, code=8)
    listed = ok("client", "doc", "list", "l1", url=url)
    assert [d["id"] for d in listed["documents"]] == ["ada"]

    human = loomdb("client", "doc", "get", "l1", "ada", url=url)
    assert human.returncode == 0
    assert '"name": "Ada"' in human.stdout
    assert "heads" in human.stdout

    assert ok("client", "doc", "delete", "l1", "ada", url=url)["deleted"] is True
    assert "deleted" in fails("client", "doc", "get", "l1", "ada", url=url, code=8)
    fails("client", "doc", "delete", "l1", "ada", url=url, code=8)
    assert ok("client", "doc", "list", "l1", url=url)["count"] == 0


# --- L2 ---------------------------------------------------------------------------


def test_l2_sigterm_and_restart_keep_documents_history_and_heads(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with running_node(home) as first:
        with first.http() as http:
            for i in range(5):
                doc = {"id": f"d{i}", "value": {"i": i, "likes": {"$counter": 0}}}
                assert http.post("/collections/l2/docs", json=doc).status_code == 201
            for i in range(5):
                http.patch(f"/collections/l2/docs/d{i}", json={"set": {"step": 2}})
                http.post(f"/collections/l2/docs/d{i}/increment", json={"field": "likes"})
            assert http.delete("/collections/l2/docs/d4").status_code == 204
            before = snapshot(http, "l2")
            stats = http.get("/node").json()["stats"]
            peer_id = http.get("/node").json()["peer_id"]
        assert first.stop(signal.SIGTERM) == 0
        assert "Traceback" not in first.stderr()
    assert sorted(before) == ["d0", "d1", "d2", "d3"]

    with running_node(home) as second, second.http() as http:
        assert snapshot(http, "l2") == before  # values, heads, histories
        node = http.get("/node").json()
        assert node["peer_id"] == peer_id
        assert node["stats"] == stats
        assert http.get("/collections/l2/docs/d4").status_code == 404
        # and it carries on from where it was
        r = http.patch("/collections/l2/docs/d0", json={"set": {"step": 3}})
        assert r.json()["value"]["step"] == 3
        history = http.get("/collections/l2/docs/d0/history").json()["history"]
        assert history[-1]["parents"] == before["d0"][0]["heads"]


def test_l2_kill_9_during_writes_loses_no_acknowledged_write(tmp_path: Path) -> None:
    home = tmp_path / "home"
    writers = 4
    created: list[list[str]] = [[] for _ in range(writers)]
    increments = [0] * writers
    stop = threading.Event()

    def write(n: int, node: Node) -> None:
        with node.http() as http:
            i = 0
            while not stop.is_set() and i < 10_000:
                try:
                    if i % 2:
                        r = http.post(f"/collections/kill/docs/c{n}/increment", json={"field": "n"})
                        if r.status_code != 200:
                            return
                        increments[n] += 1
                    else:
                        doc_id = f"w{n}-{i}"
                        r = http.post(
                            "/collections/kill/docs",
                            json={"id": doc_id, "value": {"n": n, "i": i, "pad": "x" * 500}},
                        )
                        if r.status_code != 201:
                            return
                        created[n].append(doc_id)
                except httpx.HTTPError:
                    return  # the node died under us: this write was not acknowledged
                i += 1

    threads: list[threading.Thread] = []
    node = Node(home)
    try:
        node.wait_ready()
        with node.http() as http:
            for n in range(writers):
                value = {"n": {"$counter": 0}}
                r = http.post("/collections/kill/docs", json={"id": f"c{n}", "value": value})
                assert r.status_code == 201
        threads += [threading.Thread(target=write, args=(n, node)) for n in range(writers)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while sum(map(len, created)) < 80 and time.monotonic() < deadline:
            time.sleep(0.01)
        node.proc.kill()  # SIGKILL, writes in flight
        assert node.proc.wait(timeout=STOP_TIMEOUT) == -signal.SIGKILL
    finally:
        stop.set()
        node.close()
        for t in threads:
            t.join(timeout=30)
    assert sum(map(len, created)) >= 80

    with running_node(home) as again, again.http() as http:
        for n in range(writers):
            for doc_id in created[n]:
                r = http.get(f"/collections/kill/docs/{doc_id}")
                assert r.status_code == 200, (doc_id, r.text)
                assert r.json()["value"]["n"] == n
            counter = http.get(f"/collections/kill/docs/c{n}").json()["value"]["n"]
            assert increments[n] <= counter <= increments[n] + 1  # + one unacknowledged
        # the store is whole: every document reads, with its history
        docs = http.get("/collections/kill/docs", params={"limit": 1000}).json()
        assert docs["count"] >= sum(map(len, created)) + writers
        for doc in docs["documents"][:20]:
            assert http.get(f"/collections/kill/docs/{doc['id']}/history").status_code == 200


# --- L3 ---------------------------------------------------------------------------


def _concurrently(node: Node, jobs: list[Callable[[httpx.Client], Any]]) -> list[Any]:
    """Run each job on its own HTTP client and thread, all released at once."""
    barrier = threading.Barrier(len(jobs), timeout=20)

    def run(job: Callable[[httpx.Client], Any]) -> Any:
        with node.http() as http:
            http.get("/node")  # connect before the race
            barrier.wait()
            return job(http)

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(run, jobs))


def test_l3_concurrent_edits_of_one_document(node: Node) -> None:
    doc = "/collections/l3/docs/doc"
    with node.http() as http:
        value = {"a": 0, "b": 0, "title": "", "likes": {"$counter": 0}, "body": {"$text": "|"}}
        assert http.post("/collections/l3/docs", json={"id": "doc", "value": value}).is_success

    def set_field(field: str, value: Any) -> Callable[[httpx.Client], int]:
        return lambda h: h.patch(doc, json={"set": {field: value}}).status_code

    def increments(n: int) -> Callable[[httpx.Client], list[int]]:
        return lambda h: [
            h.post(f"{doc}/increment", json={"field": "likes", "by": 1}).status_code
            for _ in range(n)
        ]

    def typing(word: str) -> Callable[[httpx.Client], list[int]]:
        return lambda h: [
            h.post(f"{doc}/text", json={"field": "body", "index": 0, "insert": ch}).status_code
            for ch in word
        ]

    # different fields: both survive
    assert _concurrently(node, [set_field("a", 1), set_field("b", 2)]) == [200, 200]
    # the same field: one value, the same for every reader
    assert _concurrently(node, [set_field("title", "x"), set_field("title", "y")]) == [200] * 2
    # counters: concurrent increments sum
    done = _concurrently(node, [increments(15), increments(15), increments(10)])
    assert all(s == 200 for statuses in done for s in statuses)
    # text: concurrent inserts interleave, nothing lost
    done = _concurrently(node, [typing("abcdef"), typing("UVWXYZ")])
    assert all(s == 200 for statuses in done for s in statuses)

    readers = _concurrently(node, [lambda h: h.get(doc).json()["value"]] * 3)
    final = readers[0]
    assert readers == [final] * 3
    assert final["a"] == 1
    assert final["b"] == 2
    assert final["title"] in ("x", "y")
    assert final["likes"] == 40
    body = final["body"]
    assert sorted(body) == sorted("|abcdefUVWXYZ")
    assert body.endswith("|")
    lower = [c for c in body if c.islower()]
    upper = [c for c in body if c.isupper()]
    assert "".join(lower) == "fedcba"  # each writer typed at index 0
    assert "".join(upper) == "ZYXWVU"


# --- L4 ---------------------------------------------------------------------------


def test_l4_history_and_an_older_version_through_the_cli(node: Node) -> None:
    url = node.url
    ok("client", "doc", "create", "l4", "--id", "n", '{"text": "v1"}', url=url)
    ok("client", "doc", "update", "l4", "n", '{"text": "v2"}', url=url)
    ok("client", "doc", "update", "l4", "n", '{"text": "v3", "extra": true}', url=url)
    history = ok("client", "doc", "history", "l4", "n", url=url)["history"]
    assert [h["kind"] for h in history] == ["create", "change", "change"]
    assert history[0]["parents"] == []
    assert history[1]["parents"] == [history[0]["cid"]]
    assert history[2]["parents"] == [history[1]["cid"]]
    assert len({h["author"] for h in history}) == 1
    assert history[0]["created_at"] < history[1]["created_at"] < history[2]["created_at"]

    old = ok("client", "doc", "get", "l4", "n", "--at", history[0]["cid"], url=url)
    assert old["value"] == {"text": "v1"}
    assert ok("client", "doc", "get", "l4", "n", url=url)["value"] == {"text": "v3", "extra": True}

    human = loomdb("client", "doc", "history", "l4", "n", url=url)
    assert human.returncode == 0
    assert all(h["cid"] in human.stdout for h in history)
    assert "create" in human.stdout


# --- L5 ---------------------------------------------------------------------------


def test_l5_query_with_filters_sort_and_limit(node: Node) -> None:
    url = node.url
    ok("client", "collection", "add", "l5", "--schema", json.dumps(PEOPLE_SCHEMA), url=url)
    people = [("a", 19, "Rome"), ("b", 25, "Paris"), ("c", 41, "Paris"), ("d", 30, "Paris"),
              ("e", 36, "London"), ("f", 52, "Paris")]  # fmt: skip
    with node.http() as http:
        for name, age, city in people:
            value = {"name": name.upper(), "age": age, "city": city}
            assert http.post("/collections/l5/docs", json={"id": name, "value": value}).is_success

    found = ok("client", "doc", "query", "l5", "--where", "city=Paris", "--where", "age>=30",
               "--sort", "age:desc", "--limit", "2", url=url)  # fmt: skip
    assert [d["id"] for d in found["documents"]] == ["f", "c"]
    assert found["count"] == 3
    found = ok("client", "doc", "query", "l5", "--where", "city=Paris", "--where", "age>=30",
               "--sort", "age:desc", "--limit", "2", "--offset", "2", url=url)  # fmt: skip
    assert [d["id"] for d in found["documents"]] == ["d"]
    where = json.dumps([{"field": "age", "op": "lt", "value": 30}])
    found = ok("client", "doc", "query", "l5", "--where", where, "--sort", "age", url=url)
    assert [d["id"] for d in found["documents"]] == ["a", "b"]
    found = ok("client", "doc", "query", "l5", "--where", 'name in ["A", "E"]', url=url)
    assert sorted(d["id"] for d in found["documents"]) == ["a", "e"]

    human = loomdb("client", "doc", "query", "l5", "--where", "age>40", "--sort", "age", url=url)
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["c", "f"]
    assert lines[-1] == "(2 of 2 documents)"
    # a query the database cannot run is a clear error
    fails("client", "doc", "query", "l5", "--where", "age>[1]", url=url, code=9)


# --- the process and the command line ------------------------------------------------


def test_sigint_stops_the_node_with_status_0(tmp_path: Path) -> None:
    with running_node(tmp_path / "home") as node:
        with node.http() as http:
            assert http.post("/collections/x/docs", json={"value": {}}).status_code == 201
        assert node.stop(signal.SIGINT) == 0
        assert "Traceback" not in node.stderr()


def test_a_busy_port_is_refused(node: Node, tmp_path: Path) -> None:
    port = node.url.rsplit(":", 1)[1]
    run = subprocess.run(
        [sys.executable, "-m", "loomdb", "start", "--home", str(tmp_path / "h"),
         "--api", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=60, env=_env(), check=False,
    )  # fmt: skip
    assert run.returncode == 7  # TransportError
    assert "in use" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "h").exists()  # refused before anything was made


def test_an_unreachable_node_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = fails("client", "doc", "list", "x", url=f"http://127.0.0.1:{port}", code=7)
    assert "cannot reach a loomdb node" in err
    assert len(err.strip().splitlines()) == 1


def test_the_api_answers_json_errors_over_real_http(node: Node) -> None:
    with node.http() as http:
        r = http.get("/no/such/route")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "route.not_found"
        as_json = {"content-type": "application/json"}
        r = http.post("/collections", content=b"{not json", headers=as_json)
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "request.json"
        r = http.post("/collections", content=b"x" * (4 * 1024 * 1024 + 1), headers=as_json)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request.too_large"
        assert http.get(f"{node.url}/openapi.json").json()["openapi"].startswith("3.1")


@pytest.mark.parametrize(
    "args",
    [
        ["client"],
        ["client", "doc"],
        ["client", "doc", "create", "c", "{bad json"],
        ["client", "doc", "create", "c", "[1, 2]"],
        ["client", "doc", "create", "c", "@/no/such/file.json"],
        ["client", "doc", "update", "c", "id"],
        ["client", "doc", "query", "c", "--where", "age"],
        ["client", "doc", "query", "c", "--sort", "age:sideways"],
        ["client", "doc", "list", "c", "--limit", "-1"],
        ["client", "collection", "add", "c", "--schema", "nope"],
        ["client", "node", "--url", "ftp://127.0.0.1:1"],
        ["start", "--api", "nonsense"],
        ["start", "--api", "127.0.0.1:99999"],
    ],
)
def test_bad_arguments_exit_2_without_a_traceback(args: list[str], tmp_path: Path) -> None:
    if args[0] == "start":
        args = [*args, "--home", str(tmp_path / "h")]
    run = loomdb(*args)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "error:" in run.stderr
    assert "Traceback" not in run.stderr
