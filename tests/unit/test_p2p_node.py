"""The daemon's p2p settings, the ready line's addresses (``start --json`` too), and
the running node's address record (``<home>/p2p.json``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from loomdb.cli.main import _json_ready, build_parser, start_p2p_settings
from loomdb.errors import AddressInUseError, ValidationError
from loomdb.node.addrs import ADDRS_FILE, record_addrs, running_addrs
from loomdb.node.daemon import READY
from loomdb.node.p2p import P2P_READY, P2PSettings
from loomdb.transports.libp2p import DEFAULT_P2P_ADDR

PEER = "12D3KooWCugzopk9fYBy1pvYVi94Qr2y9PL4CjSpYZUaXir3YWb7"
ADDR = f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"


def test_start_listens_on_the_default_unless_told_otherwise() -> None:
    def settings(*argv: str) -> P2PSettings | None:
        settings: P2PSettings | None = start_p2p_settings(
            build_parser().parse_args(["start", *argv])
        )
        return settings

    assert settings() == P2PSettings((DEFAULT_P2P_ADDR,))
    assert settings("--p2p-addr", "/ip4/127.0.0.1/tcp/0", "--p2p-addr", "/ip6/::1/tcp/0") == (
        P2PSettings(("/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/0"))
    )
    assert settings("--peers", ADDR, ADDR) == P2PSettings((DEFAULT_P2P_ADDR,), (ADDR, ADDR))
    assert settings("--no-p2p") is None
    # the discovery switches land in their own fields
    only_mdns = settings("--mdns")
    assert only_mdns is not None and (only_mdns.mdns, only_mdns.dht) == (True, True)
    no_dht = settings("--no-dht")
    assert no_dht is not None and (no_dht.mdns, no_dht.dht) == (False, False)
    both = settings("--mdns", "--no-dht")
    assert both is not None and (both.mdns, both.dht) == (True, False)
    with pytest.raises(ValidationError):
        settings("--no-p2p", "--p2p-addr", "/ip4/127.0.0.1/tcp/0")


def test_settings_are_checked_before_anything_opens() -> None:
    P2PSettings(("/ip4/127.0.0.1/tcp/0",), (ADDR,)).check()
    for bad in [P2PSettings(()), P2PSettings(("/ip4/1.2.3.4/udp/1",))]:
        with pytest.raises(ValidationError):
            bad.check()
    with pytest.raises(ValidationError):
        P2PSettings(("/ip4/127.0.0.1/tcp/0",), ("/ip4/127.0.0.1/tcp/1",)).check()  # no /p2p/
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(AddressInUseError):
            P2PSettings((f"/ip4/127.0.0.1/tcp/{sock.getsockname()[1]}",)).check()


@pytest.mark.parametrize("relay", [False, True])
@pytest.mark.parametrize("addrs", [[], [ADDR], [ADDR, f"/ip6/::1/tcp/4001/p2p/{PEER}"]])
def test_start_json_reads_the_ready_line_with_its_addresses(
    relay: bool, addrs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    line = READY.format(peer_id=PEER, url="http://127.0.0.1:9181")
    line += " (relay)" if relay else ""
    line += P2P_READY.format(addrs=" ".join(addrs)) if addrs else ""
    _json_ready(line)
    got = json.loads(capsys.readouterr().out)
    assert got == {
        "event": "ready",
        "peer_id": PEER,
        "url": "http://127.0.0.1:9181",
        "relay": relay,
        "p2p": addrs,
    }


def test_the_address_record_holds_while_its_process_lives(tmp_path: Path) -> None:
    assert running_addrs(tmp_path) == []
    remove = record_addrs(tmp_path, [ADDR])
    assert running_addrs(tmp_path) == [ADDR]
    remove()
    assert running_addrs(tmp_path) == [] and not (tmp_path / ADDRS_FILE).exists()
    remove()  # twice is fine

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    (tmp_path / ADDRS_FILE).write_text(json.dumps({"pid": int(dead.stdout), "addrs": [ADDR]}))
    assert running_addrs(tmp_path) == []  # a node killed without removing it
    for junk in ["", "{", '{"pid": "x", "addrs": []}', '{"pid": 1}', "[]"]:
        (tmp_path / ADDRS_FILE).write_text(junk)
        assert running_addrs(tmp_path) == []
    (tmp_path / ADDRS_FILE).write_text(json.dumps({"pid": os.getpid(), "addrs": [ADDR]}))
    assert running_addrs(tmp_path) == [ADDR]
