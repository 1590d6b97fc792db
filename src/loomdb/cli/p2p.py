"""``loomdb client p2p info|peers|connect|disconnect``: the node's libp2p host, over
its API (:mod:`loomdb.api.p2p`). Thin like every client command: one API call,
the answer for people by default, the API's JSON with ``--json``.

``loomdb client sync /ip4/…/tcp/…/p2p/12D3KooW…`` (in :mod:`loomdb.cli.client`)
syncs over libp2p: the node dials the peer itself.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from loomdb.cli.client import _run, _table

Command = Callable[[Any, str, Callable[[argparse.Namespace], None], str], argparse.ArgumentParser]


def show_info(info: dict[str, Any]) -> None:
    counters = info["counters"]
    _table(
        {
            "peer_id": info["peer_id"],
            "listen": " ".join(info["listen"]) or "-",
            "peers": len(info["peers"]),
            "bootstrap": " ".join(info["bootstrap"]) or "-",
            "dials": f"{counters['dials']} ({counters['dial_failures']} failed)",
            "streams": f"{counters['streams_opened']} opened, {counters['streams_served']} served",
            "frames_served": counters["frames_served"],
            "refused": ", ".join(f"{k}: {v}" for k, v in sorted(counters["refused"].items()))
            or "-",
        }
    )


def show_peers(answer: dict[str, Any]) -> None:
    if not answer["peers"]:
        print("no peers connected")
    for peer in answer["peers"]:
        print(f"{peer['peer_id']}  {' '.join(peer['addrs']) or '-'}")


def show_connected(answer: dict[str, Any]) -> None:
    print(f"connected to {answer['peer_id']}")


def show_disconnected(answer: dict[str, Any]) -> None:
    done = "disconnected from" if answer["disconnected"] else "was not connected to"
    print(f"{done} {answer['peer_id']}")


def cmd_p2p_info(args: argparse.Namespace) -> None:
    _run(args, lambda api: api.call("GET", "/p2p/info"), show_info)


def cmd_p2p_peers(args: argparse.Namespace) -> None:
    _run(args, lambda api: api.call("GET", "/p2p/peers"), show_peers)


def cmd_p2p_connect(args: argparse.Namespace) -> None:
    _run(args, lambda api: api.call("POST", "/p2p/connect", {"addr": args.addr}), show_connected)


def cmd_p2p_disconnect(args: argparse.Namespace) -> None:
    body = {"peer": args.peer}
    _run(args, lambda api: api.call("POST", "/p2p/disconnect", body), show_disconnected)


def add_p2p_commands(groups: Any, command: Command) -> None:
    """Add ``p2p …`` to the ``client`` groups ``groups``."""
    help_ = "the node's libp2p host: info, peers, connect, disconnect"
    p2p = groups.add_parser("p2p", help=help_, description=help_)
    sub = p2p.add_subparsers(dest="client_command", metavar="COMMAND", required=True)
    command(sub, "info", cmd_p2p_info, "Peer ID, listen addresses, peers and counters")
    command(sub, "peers", cmd_p2p_peers, "the connected peers")
    p = command(sub, "connect", cmd_p2p_connect, "dial a peer")
    p.add_argument("addr", metavar="MULTIADDR", help="/ip4/HOST/tcp/PORT/p2p/12D3KooW…")
    p = command(sub, "disconnect", cmd_p2p_disconnect, "close the connections to a peer")
    p.add_argument("peer", metavar="PEER_ID", help="12D3KooW…")
