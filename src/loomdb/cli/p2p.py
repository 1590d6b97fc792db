"""``loomdb client p2p info|peers|connect|disconnect|replicator``: the node's libp2p host, over
its API (:mod:`loomdb.api.p2p`). Thin like every client command: one API call,
the answer for people by default, the API's JSON with ``--json``.

``loomdb client sync /ip4/…/tcp/…/p2p/12D3KooW…`` (in :mod:`loomdb.cli.client`)
syncs over libp2p: the node dials the peer itself.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from loomdb.cli.client import _run, _table, document_arg
from loomdb.cli.tickets import add_ticket_command, connect_body, show_connected_by
from loomdb.cli.trust import text_arg

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
            **_replicator_states(info),
            **_replication_rows(info),
            **_mdns_row(info),
            **_dht_rows(info),
        }
    )


def _mdns_row(info: dict[str, Any]) -> dict[str, str]:
    mdns = info.get("mdns")
    if mdns is None:
        return {}
    if not mdns["enabled"]:
        return {"mdns": "off"}
    connected = sum(1 for p in mdns["peers"] if p["connected"])
    where = ", ".join(mdns["interfaces"])
    return {"mdns": f"on ({where}): {mdns['discovered']} discovered, {connected} connected"}


def _dht_rows(info: dict[str, Any]) -> dict[str, str]:
    dht = info.get("dht")
    if dht is None:
        return {"dht": "off"} if "dht" in info else {}
    return {
        "dht": f"{dht['mode']}, {dht['routing_table']} peers in its routing table",
        "dht_provided": f"{dht['keys_provided']} of {dht['keys']} keys "
        f"({dht['keys_pending']} pending, {dht['keys_skipped']} skipped)",
        "dht_lookups": f"{dht['lookups']} ({dht['lookup_failures']} found nobody), "
        f"{dht['provider_dials']} providers dialled ({dht['provider_dial_failures']} failed)",
    }


def _replicator_states(info: dict[str, Any]) -> dict[str, str]:
    summary = info.get("replicators")
    if summary is None:
        return {}
    states = ", ".join(f"{n} {state}" for state, n in sorted(summary["states"].items()))
    return {"replicators": states or "-"}


def _scope(rep: dict[str, Any]) -> str:
    parts = [*rep["collections"], *(f"{c}/{d}" for c, d in rep["documents"])]
    return f"{rep['space']}: {', '.join(parts)}" if parts else rep["space"]


def show_replicator(rep: dict[str, Any]) -> None:
    error = rep["last_error"]
    _table(
        {
            "peer": rep["peer"],
            "addr": rep["addr"],
            "scope": _scope(rep),
            "state": rep["state"],
            "lag": rep["lag"],
            "pushed": f"{rep['pushed']} ({rep['refused']} refused)",
            "cursor": rep["cursor"],
            "last_error": f"{error['code']}: {error['message']}" if error else "-",
            "next_retry": _when(rep["next_retry"]),
        }
    )


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def show_replicators(answer: dict[str, Any]) -> None:
    if not answer["replicators"]:
        print("no replicators")
    for rep in answer["replicators"]:
        error = rep["last_error"]
        why = f"  {error['code']}" if error and rep["state"] in ("failing", "refused") else ""
        print(f"{rep['peer']}  {_scope(rep)}  {rep['state']}  lag {rep['lag']}{why}")


def show_deleted(answer: dict[str, Any]) -> None:
    for rep in answer["deleted"]:
        print(f"deleted the replicator to {rep['peer']} ({rep['space']})")


# --- subscriptions (gossip) -----------------------------------------------------------


def _replication_rows(info: dict[str, Any]) -> dict[str, str]:
    rep = info.get("replication")
    if rep is None:
        return {}
    gossip, heads = rep["gossip"], rep["head_exchange"]
    dropped = {
        k: gossip[k]
        for k in (
            "oversized",
            "malformed",
            "unverifiable",
            "refused",
            "store_refused",
            "inbox_full",
        )
        if gossip[k]
    }
    lost = {k: v for k, v in (info.get("pubsub") or {}).get("drops", {}).items() if v}
    subs = rep["subscriptions"]
    return {
        "following": f"{subs['collections']} collections, {subs['documents']} documents",
        "topics": str(len(rep["topics"])),
        "gossip": f"{gossip['published']} published, {gossip['received']} received, "
        f"{gossip['stored']} stored, {gossip['fetched']} fetched",
        "gossip_dropped": ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items())) or "-",
        "pubsub_dropped": ", ".join(f"{k}: {v}" for k, v in sorted(lost.items())) or "-",
        "head_exchange": f"every {heads['interval_seconds']:g} s; {heads['runs']} runs, "
        f"{heads['pulled']} pulled, {heads['failed']} failed",
    }


def show_collections(answer: dict[str, Any]) -> None:
    if not answer["collections"]:
        print("no collections followed")
    for item in answer["collections"]:
        print(f"{item['space']}  {item['collection']}")


def show_documents(answer: dict[str, Any]) -> None:
    if not answer["documents"]:
        print("no documents followed")
    for item in answer["documents"]:
        print(f"{item['space']}  {item['collection']}/{item['document']}")


def _show_changed(what: str) -> Callable[[dict[str, Any]], None]:
    def show(answer: dict[str, Any]) -> None:
        key = "added" if "added" in answer else "removed"
        names = [
            f"{i['collection']}/{i['document']}" if "document" in i else i["collection"]
            for i in answer[key]
        ]
        print(
            f"{key} {len(names)} {what}{'s' if len(names) != 1 else ''}: {' '.join(names) or '-'}"
        )

    return show


def show_document_sync(answer: dict[str, Any]) -> None:
    if not answer["peers"]:
        print("no peers connected")
    for peer in answer["peers"]:
        error = peer.get("error")
        done = f"{error['code']}: {error['message']}" if error else f"{peer['pulled']} pulled"
        via = "  (found on the DHT)" if peer.get("via") == "dht" else ""
        print(f"{peer['peer_id']}  {done}{via}")


def _names_body(args: argparse.Namespace, key: str) -> dict[str, Any]:
    body: dict[str, Any] = {key: args.names}
    if args.space:
        body["space"] = args.space
    return body


def _subscription_command(path: str, key: str, method: str, what: str) -> Callable[..., None]:
    def cmd(args: argparse.Namespace) -> None:
        body = _names_body(args, key)
        _run(args, lambda api: api.call(method, path, body), _show_changed(what))

    return cmd


def cmd_collection_getall(args: argparse.Namespace) -> None:
    _run(args, lambda api: api.call("GET", "/p2p/collections"), show_collections)


def cmd_document_getall(args: argparse.Namespace) -> None:
    _run(args, lambda api: api.call("GET", "/p2p/documents"), show_documents)


def cmd_document_sync(args: argparse.Namespace) -> None:
    body = _names_body(args, "documents")
    _run(args, lambda api: api.call("POST", "/p2p/documents/sync", body), show_document_sync)


def add_subscription_commands(sub: Any, command: Command) -> None:
    """``p2p collection add|remove|getall`` and ``p2p document add|remove|getall|sync``."""
    help_ = "follow collections by gossip (their documents, new ones too): add, remove, getall"
    group = sub.add_parser("collection", help=help_, description=help_)
    colls = group.add_subparsers(dest="client_command", metavar="COMMAND", required=True)
    for name, method, text in (("add", "POST", "follow"), ("remove", "DELETE", "stop following")):
        cmd = _subscription_command("/p2p/collections", "collections", method, "collection")
        p = command(colls, name, cmd, f"{text} collections (one bad name: none changed)")
        p.add_argument("names", metavar="COLLECTION", nargs="+")
    command(colls, "getall", cmd_collection_getall, "the collections followed")

    help_ = "follow documents by gossip (their updates): add, remove, getall, sync"
    group = sub.add_parser("document", help=help_, description=help_)
    docs = group.add_subparsers(dest="client_command", metavar="COMMAND", required=True)
    for name, method, text in (("add", "POST", "follow"), ("remove", "DELETE", "stop following")):
        cmd = _subscription_command("/p2p/documents", "documents", method, "document")
        p = command(docs, name, cmd, f"{text} documents (one bad name: none changed)")
        p.add_argument("names", metavar="COLLECTION/DOC", nargs="+")
    command(docs, "getall", cmd_document_getall, "the documents followed")
    help_ = "pull documents from every connected peer, once (what none has: from DHT providers)"
    p = command(docs, "sync", cmd_document_sync, help_)
    p.add_argument("names", metavar="COLLECTION/DOC", nargs="+")


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
    body = connect_body(args.addr)
    show = show_connected if "addr" in body else show_connected_by
    _run(args, lambda api: api.call("POST", "/p2p/connect", body), show)


def cmd_p2p_disconnect(args: argparse.Namespace) -> None:
    body = {"peer": args.peer}
    _run(args, lambda api: api.call("POST", "/p2p/disconnect", body), show_disconnected)


def cmd_replicator_set(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"addr": args.addr}
    if args.space:
        body["space"] = args.space
    if args.collection:
        body["collections"] = args.collection
    if args.document:
        body["documents"] = args.document
    _run(args, lambda api: api.call("POST", "/p2p/replicators", body), show_replicator)


def cmd_replicator_delete(args: argparse.Namespace) -> None:
    body = {"peer": args.peer, **({"space": args.space} if args.space else {})}
    _run(args, lambda api: api.call("DELETE", "/p2p/replicators", body), show_deleted)


def cmd_replicator_getall(args: argparse.Namespace) -> None:
    _run(args, lambda api: api.call("GET", "/p2p/replicators"), show_replicators)


def add_replicator_commands(sub: Any, command: Command) -> None:
    """``p2p replicator set|delete|getall``."""
    help_ = "push a space, collections or documents to a peer: set, delete, getall"
    group = sub.add_parser("replicator", help=help_, description=help_)
    reps = group.add_subparsers(dest="client_command", metavar="COMMAND", required=True)
    help_ = "replicate to a peer: push what it lacks, then each new local entry (--space: which)"
    p = command(reps, "set", cmd_replicator_set, help_)
    p.add_argument("addr", metavar="PEER_MULTIADDR", help="/ip4/HOST/tcp/PORT/p2p/12D3KooW…")
    p.add_argument(
        "-c", "--collection", action="append", default=[], help="only this collection (repeatable)"
    )
    p.add_argument(
        "--document",
        metavar="COLLECTION/DOC",
        type=document_arg,
        action="append",
        default=[],
        help="only this document (repeatable)",
    )
    p = command(reps, "delete", cmd_replicator_delete, "stop replicating to a peer")
    p.add_argument("peer", metavar="PEER_ID", help="12D3KooW… (--space: only that space's)")
    command(reps, "getall", cmd_replicator_getall, "the replicators and their states")


def add_p2p_commands(groups: Any, command: Command) -> None:
    """Add ``p2p …`` to the ``client`` groups ``groups``."""
    help_ = "the node's libp2p host: info, peers, connect, disconnect"
    p2p = groups.add_parser("p2p", help=help_, description=help_)
    sub = p2p.add_subparsers(dest="client_command", metavar="COMMAND", required=True)
    command(sub, "info", cmd_p2p_info, "Peer ID, listen addresses, peers and counters")
    command(sub, "peers", cmd_p2p_peers, "the connected peers")
    p = command(sub, "connect", cmd_p2p_connect, "dial a peer (by a ticket: and join its space)")
    p.add_argument(
        "addr",
        metavar="TICKET|MULTIADDR",
        type=text_arg,
        help="loomdb-ticket1:… (- or @FILE: its last line) or /ip4/HOST/tcp/PORT/p2p/12D3KooW…",
    )
    p = command(sub, "disconnect", cmd_p2p_disconnect, "close the connections to a peer")
    p.add_argument("peer", metavar="PEER_ID", help="12D3KooW…")
    add_ticket_command(sub, command)  # p2p ticket: loomdb.cli.tickets
    add_replicator_commands(sub, command)
    add_subscription_commands(sub, command)
