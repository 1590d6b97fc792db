"""Real ``loomdb start`` processes for multi-node tests, and the client CLI around them.

A :class:`Node` is one subprocess on a free port of 127.0.0.1 (``--api
127.0.0.1:0``); its ready line gives its URL (``http://`` or ``https://``). Its
stderr goes to a file (a chatty node never blocks on a full pipe). Every wait is
bounded; :class:`Nodes` kills whatever it started, even when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from loomdb.node.runtime import TOKEN_FILE
from loomdb.transports.tls import client_context

READY = re.compile(rb"ready, API at (https?://\S+)[^\n]*\n")
P2P_ADDRS = re.compile(rb" and p2p at ([^\n]+)\n")
LOCAL_P2P = ("--p2p-addr", "/ip4/127.0.0.1/tcp/0")
"""The p2p address of every node a test starts, unless it gives its own p2p options:
loopback and a free port, never the default 0.0.0.0:9171."""
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
CLIENT_TIMEOUT = 120.0


def node_env(**extra: str) -> dict[str, str]:
    """The environment of a node or client: no keyring secret, no default URL."""
    env = {k: v for k, v in os.environ.items() if k not in ("LOOMDB_KEYRING_SECRET", "LOOMDB_URL")}
    env.update(extra)
    return env


class Node:
    """One ``loomdb [-v] start --home HOME --api 127.0.0.1:0 [ARGS...]`` subprocess; without
    p2p options in ARGS, it listens for libp2p on ``/ip4/127.0.0.1/tcp/0`` (:data:`LOCAL_P2P`)."""

    def __init__(
        self,
        home: Path,
        *args: str,
        verbose: bool = False,
        api: str = "127.0.0.1:0",
        prefix: Sequence[str] = (),
    ) -> None:
        """``prefix``: the command runs under it (e.g. ``ip netns exec NS``)."""
        self.home = home
        self.args = args
        home.parent.mkdir(parents=True, exist_ok=True)
        self.log = home.parent / f"{home.name}-{time.monotonic_ns()}.log"
        self.url = ""
        self.p2p_addrs: list[str] = []  # the multiaddrs of the ready line
        self._stderr = self.log.open("wb")
        command = [*prefix, sys.executable, "-m", "loomdb", *(["-v"] if verbose else [])]
        if not any(a.startswith(("--p2p-addr", "--no-p2p")) for a in args):
            args = (*LOCAL_P2P, *args)
        command += ["start", "--home", str(home), "--api", api, *args]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._stderr, env=node_env(), bufsize=0
        )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        out = b""
        deadline = time.monotonic() + timeout
        while (found := READY.search(out)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"node not ready in {timeout} s: {out!r} {self.stderr()}")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise AssertionError(f"node exited before ready: {self.stderr()}")
                out += chunk
        self.url = found.group(1).decode()
        p2p = P2P_ADDRS.search(found.group(0))
        self.p2p_addrs = p2p.group(1).decode().split() if p2p else []
        return self.url

    def stderr(self) -> str:
        self._stderr.flush()
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Stop the node (it closes its stores) and wait for it; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self._stderr.flush()
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    @property
    def token(self) -> str:
        """The node's admin token (``loomdb start`` made it in the home)."""
        return (self.home / TOKEN_FILE).read_text().strip()

    def http(self, cafile: Path | None = None, *, admin: bool = True) -> httpx.Client:
        """A client of the node's API (trusting ``cafile`` for an https node), with
        the admin token unless ``admin`` is false (a stranger's client)."""
        verify: Any = True if cafile is None else client_context(cafile)
        headers = {"Authorization": f"Bearer {self.token}"} if admin else {}
        return httpx.Client(
            base_url=f"{self.url}/api/v0",
            timeout=30.0,
            trust_env=False,
            verify=verify,
            headers=headers,
        )

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def store_path(self) -> Path:
        return self.home / "store.db"


class Nodes:
    """Starts nodes, and kills every one of them on :meth:`close`."""

    def __init__(self) -> None:
        self.started: list[Node] = []

    def launch(
        self,
        home: Path,
        *args: str,
        verbose: bool = False,
        api: str = "127.0.0.1:0",
        prefix: Sequence[str] = (),
    ) -> Node:
        """Start a node without waiting for it (start several, then :meth:`wait_ready`)."""
        node = Node(home, *args, verbose=verbose, api=api, prefix=prefix)
        self.started.append(node)
        return node

    def wait_ready(self) -> None:
        """Wait until every node launched is ready (they start side by side)."""
        for node in self.started:
            if not node.url:
                node.wait_ready()

    def start(
        self,
        home: Path,
        *args: str,
        verbose: bool = False,
        api: str = "127.0.0.1:0",
        prefix: Sequence[str] = (),
    ) -> Node:
        node = self.launch(home, *args, verbose=verbose, api=api, prefix=prefix)
        node.wait_ready()
        return node

    def stop_all(self, *group: Node) -> list[int]:
        """SIGTERM every node of ``group`` at once, then wait for each; their statuses."""
        for node in group:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        # not node.stop(): a second SIGTERM during the shutdown would kill the node
        return [node.proc.wait(timeout=STOP_TIMEOUT) for node in group]

    def close(self) -> None:
        errors: list[BaseException] = []
        for node in self.started:
            try:
                node.close()
            except BaseException as exc:  # kill the others before reporting
                errors.append(exc)
        self.started.clear()
        if errors:
            raise errors[0]


@contextmanager
def nodes() -> Iterator[Nodes]:
    group = Nodes()
    try:
        yield group
    finally:
        group.close()


def loomdb(*args: str, timeout: float = CLIENT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``python -m loomdb ARGS`` to completion (bounded), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "loomdb", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=node_env(),
        check=False,
    )


def client_sync(remote: str, *args: str, url: str) -> dict[str, Any]:
    """``loomdb client sync REMOTE --url URL ARGS --json``; it must succeed; its report."""
    run = loomdb("client", "sync", remote, "--url", url, *args, "--json")
    assert run.returncode == 0, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    report: dict[str, Any] = json.loads(run.stdout)
    assert report["event"] == "done", report
    return report


def api_sync(node: Node, remote: str, **body: Any) -> dict[str, Any]:
    """``POST /api/v0/sync/run`` on ``node`` (what ``client sync`` does, without a
    subprocess); the final ``done`` event. An ``error`` event fails the test."""
    body = {"remote": remote, **body}
    with node.http() as http, http.stream("POST", "/sync/run", json=body) as r:
        assert r.status_code == 200, r.read()
        events = [json.loads(line) for line in r.iter_lines() if line.strip()]
    assert events, "no events"
    final: dict[str, Any] = events[-1]
    assert final["event"] == "done", final
    return final


def create_docs(node: Node, collection: str, docs: Sequence[tuple[str, dict[str, Any]]]) -> None:
    with node.http() as http:
        for doc_id, value in docs:
            r = http.post(f"/collections/{collection}/docs", json={"id": doc_id, "value": value})
            assert r.status_code == 201, r.text


def documents(node: Node, collection: str) -> dict[str, Any]:
    """Every document of ``collection`` on ``node``, id → value."""
    with node.http() as http:
        r = http.get(f"/collections/{collection}/docs", params={"limit": 1000})
        assert r.status_code == 200, r.text
        return {d["id"]: d["value"] for d in r.json()["documents"]}
