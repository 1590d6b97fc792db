"""``loomdb client doc import`` and the CLI's edges against real ``loomdb start`` processes:
batches, a refused line, stdin, the progress bar; unknown collections, a closed pipe,
``--json`` everywhere; one process per node home."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.nodes import LOCAL_P2P, STOP_TIMEOUT, Node, Nodes, loomdb, node_env, nodes

pytestmark = pytest.mark.integration

SCHEMA = {"fields": {"name": {"type": "string", "required": True}, "age": "int"}}
TIMEOUT = 120.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Nodes]:
    with nodes() as group:
        yield group


@pytest.fixture(scope="module")
def node(cluster: Nodes, tmp_path_factory: pytest.TempPathFactory) -> Node:
    return cluster.start(tmp_path_factory.mktemp("import") / "home")


def people(n: int, **changes: Any) -> list[str]:
    """``n`` JSON lines of people; ``changes`` maps a 1-based line number to its text."""
    lines = [json.dumps({"id": f"p{i}", "name": f"P{i}", "age": i}) for i in range(1, n + 1)]
    for key, text in changes.items():
        lines[int(key.removeprefix("line")) - 1] = text
    return lines


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def count(node: Node, collection: str) -> int:
    with node.http() as http:
        r = http.get(f"/collections/{collection}/docs", params={"limit": 1})
        assert r.status_code == 200, r.text
        return int(r.json()["count"])


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "loomdb", *args],
        input=stdin,
        capture_output=True,
        timeout=TIMEOUT,
        env=node_env(),
        check=False,
    )


def test_import_writes_every_line_in_batches(node: Node, tmp_path: Path) -> None:
    lines = people(2345)
    lines.insert(100, "   ")  # blank lines are skipped (and counted)
    source = write(tmp_path / "people.jsonl", lines)
    done = loomdb("client", "--url", node.url, "doc", "import", "people", str(source),
                  "--id-field", "id", "--batch", "500", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["imported"], report["lines"], report["requests"]) == (2345, 2346, 5)
    assert count(node, "people") == 2345
    with node.http() as http:
        got = http.get("/collections/people/docs/p2345").json()
    assert got["value"] == {"name": "P2345", "age": 2345}  # the id field became the id

    piped = run("client", "doc", "import", "stdin", "-", "--url", node.url,
                stdin="\n".join(people(1200)).encode())  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert b"imported 1,200 documents into stdin from stdin" in piped.stdout
    assert count(node, "stdin") == 1200
    assert b"Traceback" not in piped.stderr


def test_a_refused_line_is_named_and_every_line_before_it_is_written(
    node: Node, tmp_path: Path
) -> None:
    made = loomdb("client", "collection", "add", "typed", "--schema", json.dumps(SCHEMA),
                  "--url", node.url)  # fmt: skip
    assert made.returncode == 0, made.stderr
    bad = json.dumps({"id": "p1234", "name": "P1234", "age": "old"})
    source = write(tmp_path / "typed.jsonl", people(1500, line1234=bad))
    args = ("client", "doc", "import", "typed", str(source), "--id-field", "id", "--url", node.url)
    refused = loomdb(*args, "--batch", "500", "--json")
    assert refused.returncode == 9, refused.stderr  # a schema violation
    assert "line 1234: field 'age' must be int" in refused.stderr
    assert "imported 1233 documents (every line before 1234)" in refused.stderr
    assert "--skip-lines 1233" in refused.stderr and "Traceback" not in refused.stderr
    report = json.loads(refused.stdout)
    assert report["imported"] == 1233 and report["skip_lines"] == 1233
    assert report["error"]["lines"] == [1234, 1234] and report["error"]["written"] == "no"
    assert count(node, "typed") == 1233  # lines 1001-1233 of the refused batch, resent

    again = loomdb(*args, "--skip-lines", "1233")  # not fixed: the same line, nothing written
    assert again.returncode == 9 and "line 1234" in again.stderr
    assert count(node, "typed") == 1233
    write(source, people(1500))  # fixed
    rest = loomdb(*args, "--skip-lines", "1233")
    assert rest.returncode == 0, rest.stderr
    assert "imported 267 documents" in rest.stdout
    assert count(node, "typed") == 1500

    taken = loomdb(*args, "--batch", "100")  # every id exists now: the first line is refused
    assert taken.returncode == 9 and "line 1: document 'p1' already exists" in taken.stderr
    assert "imported 0 documents (none)" in taken.stderr


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('{"name": "x", ', "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"n": NaN}', "not valid JSON"),
        ('{"name": "no id"}', "no string field 'id'"),
    ],
)
def test_a_line_that_is_not_a_document_stops_the_import_there(
    node: Node, tmp_path: Path, line: str, fragment: str
) -> None:
    collection = f"bad{abs(hash(line)) % 10_000}"
    source = write(tmp_path / "bad.jsonl", people(20, line7=line))
    got = loomdb("client", "doc", "import", collection, str(source), "--id-field", "id",
                 "--url", node.url)  # fmt: skip
    assert got.returncode == 2, got.stderr
    assert f"line 7: {fragment}" in got.stderr and "imported 6 documents" in got.stderr
    assert count(node, collection) == 6
    assert "Traceback" not in got.stderr


def test_the_progress_bar_shows_on_a_terminal(node: Node, tmp_path: Path) -> None:
    source = write(tmp_path / "bar.jsonl", people(1500))
    parent, child = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loomdb", "client", "doc", "import", "bar", str(source),
             "--batch", "300", "--url", node.url],
            stdout=subprocess.PIPE, stderr=child, env=node_env(),
        )  # fmt: skip
        os.close(child)
        child = -1
        shown = b""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if select.select([parent], [], [], 1.0)[0]:
                try:
                    chunk = os.read(parent, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            elif proc.poll() is not None:
                break
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        os.close(parent)
        if child != -1:
            os.close(child)
    assert proc.returncode == 0, shown
    assert b"[" + b"#" * 30 + b"] 100% 1,500 documents" in shown, shown
    assert b"\r[" in shown  # redrawn in place
    assert b"imported 1,500 documents into bar" in out


def test_reads_of_an_unknown_collection_exit_8(node: Node) -> None:
    for args in (["doc", "list", "nosuch"], ["doc", "query", "nosuch", "--where", "age>3"]):
        got = loomdb("client", *args, "--url", node.url)
        assert got.returncode == 8, got.stderr
        assert "no collection 'nosuch'" in got.stderr
    for name in ("..", " padded"):
        got = loomdb("client", "collection", "add", name, "--url", node.url)
        assert got.returncode == 2 and "collection name" in got.stderr, got.stderr
    bad = loomdb("client", "doc", "query", "people", "--where", "age >", "--url", node.url)
    assert bad.returncode == 2 and "cannot read condition" in bad.stderr


def test_a_closed_pipe_is_not_a_traceback(node: Node) -> None:
    with node.http() as http:
        for i in range(5):
            assert http.post("/collections/pipe/docs", json={"value": {"n": i}}).is_success
    # ``loomdb client doc list pipe | head -1``, with the reader gone before the first write
    proc = subprocess.Popen(
        [sys.executable, "-m", "loomdb", "client", "doc", "list", "pipe", "--url", node.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=node_env(),
    )  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 141, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err and b"Exception" not in err


def test_one_process_per_node_home(cluster: Nodes, tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = cluster.start(home)
    second = subprocess.run(
        [sys.executable, "-m", "loomdb", "start", "--home", str(home), "--api", "127.0.0.1:0",
         *LOCAL_P2P],
        capture_output=True, text=True, timeout=TIMEOUT, env=node_env(), check=False,
    )  # fmt: skip
    assert second.returncode == 4, second.stderr  # a StoreError
    assert f"node home {home} is in use by loomdb start (pid {first.proc.pid})" in second.stderr
    assert "Traceback" not in second.stderr
    demo = loomdb("demo", "--home", str(home), "--entries", "10")
    assert demo.returncode == 4 and "in use by loomdb start" in demo.stderr
    assert loomdb("id", "--home", str(home)).returncode == 0  # reading the home is fine

    first.proc.send_signal(signal.SIGKILL)  # a crash: the kernel drops the lock
    first.proc.wait(timeout=STOP_TIMEOUT)
    again = cluster.start(home)
    with again.http() as http:
        assert http.get("/node").status_code == 200
    assert again.stop() == 0
    demo = loomdb("demo", "--home", str(home), "--entries", "10", "--json")
    assert demo.returncode == 0, demo.stderr
    assert json.loads(demo.stdout)["written"] == 10


def test_start_json_prints_the_ready_line_as_json(cluster: Nodes, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "loomdb", "start", "--home", str(tmp_path / "home"),
         "--api", "127.0.0.1:0", *LOCAL_P2P, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=node_env(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
        assert ready, "no ready line"
        line = json.loads(proc.stdout.readline())
        assert line["event"] == "ready" and line["relay"] is False
        assert line["peer_id"].startswith("12D3KooW")
        assert line["url"].startswith("http://127.0.0.1:")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STOP_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()
