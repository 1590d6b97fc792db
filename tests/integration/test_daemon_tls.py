"""A real daemon (run_daemon in a subprocess) serving HTTPS and WSS with a
self-signed certificate, with a sync handler plugged in.

Every wait is bounded; the node is killed in a finally.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import pytest

from loomdb.errors import UnreachableError, ValidationError
from loomdb.node.daemon import run_daemon
from loomdb.node.runtime import TOKEN_FILE
from loomdb.transports.http import HttpChannel
from loomdb.transports.tls import TlsFiles, client_context, self_signed_cert
from loomdb.transports.websocket import WebSocketChannel

pytestmark = pytest.mark.integration

READY = re.compile(rb"ready, API at (\S+)")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

# The sync handler reverses frames; the lead's store server takes its place.
NODE = """
import sys
from pathlib import Path
from loomdb.node.daemon import run_daemon
from loomdb.transports.tls import TlsFiles

async def reverse(frame: bytes) -> bytes:
    return frame[::-1]

home, cert, key = sys.argv[1:4]
tls = TlsFiles(Path(cert), Path(key))
run_daemon(home, "127.0.0.1", 0, tls=tls, sync_handler=lambda db: reverse)
"""


@contextmanager
def tls_node(home: Path, tls: TlsFiles) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    env = {k: v for k, v in os.environ.items() if k != "LOOMDB_KEYRING_SECRET"}
    log = home.parent / "node.log"
    with log.open("wb") as stderr:  # a file, not a pipe: a chatty node never blocks
        proc = subprocess.Popen(
            [sys.executable, "-c", NODE, str(home), str(tls.cert), str(tls.key)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            bufsize=0,
        )
    try:
        assert proc.stdout is not None
        out = b""
        deadline = time.monotonic() + START_TIMEOUT
        while (found := READY.search(out)) is None:
            left = deadline - time.monotonic()
            assert left > 0, f"node not ready in {START_TIMEOUT} s: {out!r}"
            if select.select([proc.stdout], [], [], left)[0]:
                chunk = os.read(proc.stdout.fileno(), 4096)
                assert chunk, f"node exited before ready: {log.read_text(errors='replace')}"
                out += chunk
        yield proc, found.group(1).decode()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()


async def exchange(url: str, cafile: Path) -> list[bytes]:
    replies = []
    for channel in (
        HttpChannel(url, verify=str(cafile)),
        WebSocketChannel(url, verify=str(cafile)),
    ):
        try:
            replies.append(await channel.request(b"over tls", timeout=20))
        finally:
            await channel.aclose()
    untrusted = WebSocketChannel(url)  # the system's authorities do not know this node
    try:
        with pytest.raises(UnreachableError):
            await untrusted.request(b"x", timeout=20)
    finally:
        await untrusted.aclose()
    return replies


def test_a_node_serves_https_and_wss_with_a_self_signed_certificate(tmp_path: Path) -> None:
    tls = self_signed_cert(tmp_path / "tls")
    with tls_node(tmp_path / "home", tls) as (proc, url):
        assert url.startswith("https://127.0.0.1:")
        token = (tmp_path / "home" / TOKEN_FILE).read_text().strip()
        with httpx.Client(
            verify=client_context(tls.cert),
            timeout=20,
            trust_env=False,
            headers={"Authorization": f"Bearer {token}"},
        ) as http:
            node = http.get(f"{url}/api/v0/node").json()
            assert node["relay"] is False
            assert node["peer_id"].startswith("12D3KooW")
        assert anyio.run(exchange, url, tls.cert, backend="trio") == [b"slt revo"] * 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STOP_TIMEOUT) == 0


def test_tls_files_that_do_not_load_stop_the_node_before_it_starts(tmp_path: Path) -> None:
    home = tmp_path / "home"
    missing = TlsFiles(tmp_path / "cert.pem", tmp_path / "key.pem")
    with pytest.raises(ValidationError, match="cannot load the TLS certificate"):
        run_daemon(home, "127.0.0.1", 0, tls=missing, announce=lambda line: None)
    assert not home.exists()
