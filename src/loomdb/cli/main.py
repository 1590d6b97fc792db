"""The ``loomdb`` command: thin wrappers over the library.

Every command on a node's home takes ``--home`` the same way; every ``client``
command (:mod:`loomdb.cli.client`) takes ``--url`` and ``--json`` the same way.
Errors are mapped to exit codes in one table (``EXIT_CODES``); a user never
sees a traceback for a LoomError or a bad argument.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import anyio

from loomdb.cli.client import add_client_parser
from loomdb.errors import (
    AuthError,
    CryptoKeyError,
    DocumentError,
    EntryError,
    KeyringError,
    LoomError,
    NotFoundError,
    StoreError,
    TransportError,
    TrustError,
    ValidationError,
)
from loomdb.node.addrs import running_addrs
from loomdb.node.home import NodeHome, default_home
from loomdb.node.lock import HomeLock

EXIT_USAGE = 2
EXIT_CODES: list[tuple[type[LoomError], int]] = [  # first match wins
    (ValidationError, EXIT_USAGE),
    (KeyringError, 3),
    (StoreError, 4),
    (EntryError, 5),
    (CryptoKeyError, 6),
    (TransportError, 7),
    (NotFoundError, 8),
    (DocumentError, 9),
    (TrustError, 10),
    (AuthError, 11),
    (LoomError, 1),
]
DEFAULT_API = "127.0.0.1:9181"
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool its pipe closed


def exit_code(error: LoomError) -> int:
    return next(code for cls, code in EXIT_CODES if isinstance(error, cls))


def _home_path(args: argparse.Namespace) -> Path:
    return Path(args.home or default_home())


def _home(args: argparse.Namespace) -> NodeHome:
    return NodeHome.open(_home_path(args))


def cmd_init(args: argparse.Namespace) -> None:
    home = _home(args)
    _print_identity(home, args.json)


def cmd_id(args: argparse.Namespace) -> None:
    path = _home_path(args)
    if not (path / "keyring.json").exists():
        raise ValidationError(f"no node at {path}: run 'loomdb init --home {path}' first")
    _print_identity(NodeHome.open(path), args.json)


def _print_identity(home: NodeHome, as_json: bool) -> None:
    info = {
        "home": str(home.path),
        "peer_id": home.peer_id,
        "multiaddr": home.listen_multiaddr(),
        "listening": " ".join(running_addrs(home.path)) or "-",  # a running node's
        "user_id": home.user.user_id,
        "keyring_encrypted": home.keyring.encrypted,
    }
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for name, value in info.items():
            print(f"{name:<{width}}  {value}")


def cmd_demo(args: argparse.Namespace) -> None:
    from loomdb.demo import run_demo

    with HomeLock(_home_path(args), "loomdb demo"):  # it writes the store
        home = _home(args)
        summary = anyio.run(run_demo, home, args.entries, _quiet if args.json else print)
    if args.json:
        print(json.dumps(summary, indent=2))


def _quiet(line: str) -> None:
    return None


def _json_ready(line: str) -> None:
    """``start --json``: the ready line as one JSON object."""
    from loomdb.node.daemon import READY
    from loomdb.node.p2p import P2P_READY

    pattern = re.escape(READY).replace(r"\{peer_id\}", r"(?P<peer_id>\S+)")
    pattern = pattern.replace(r"\{url\}", r"(?P<url>\S+)") + r"(?P<relay> \(relay\))?"
    p2p = re.escape(P2P_READY).replace(r"\{addrs\}", r"(?P<p2p>.+)")
    found = re.fullmatch(f"{pattern}(?:{p2p})?", line)
    if found is None:  # not the line we know: pass it on as it is
        print(json.dumps({"event": "ready", "line": line}), flush=True)
        return
    ready = {"event": "ready", "peer_id": found["peer_id"], "url": found["url"]}
    ready["relay"] = found["relay"] is not None
    ready["p2p"] = found["p2p"].split() if found["p2p"] else []
    print(json.dumps(ready), flush=True)


def start_nat_settings(args: argparse.Namespace) -> Any:
    """``start``'s relay and hole-punching options as the node's NAT settings."""
    from loomdb.node.p2p import nat_settings

    return nat_settings(
        relay_service=args.relay_service,
        relays=args.relays,
        no_hole_punch=args.no_hole_punch,
        punch_seconds=args.hole_punch_seconds,
        limits={
            "reservations": args.relay_max_reservations,
            "reservation_seconds": args.relay_reservation_seconds,
            "circuit_seconds": args.relay_circuit_seconds,
            "circuit_bytes": args.relay_circuit_bytes,
        },
    )


def start_p2p_settings(args: argparse.Namespace) -> Any:
    """``start``'s libp2p options as the node's P2P settings (None: ``--no-p2p``)."""
    from loomdb.node.p2p import p2p_settings, with_mdns

    p2p = p2p_settings(
        args.p2p_addr,
        args.no_p2p,
        args.peers,
        args.anti_entropy_seconds,
        start_nat_settings(args),
        dht=not args.no_dht,
    )
    return with_mdns(p2p, args.mdns)


def cmd_start(args: argparse.Namespace) -> None:
    from loomdb.node.daemon import parse_address, run_daemon  # trio, Hypercorn, Loro
    from loomdb.transports.tls import CERT_FILE, KEY_FILE, TlsFiles, self_signed_cert

    host, port = parse_address(args.api)
    p2p = start_p2p_settings(args)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValidationError("give both --tls-cert and --tls-key")
    if args.self_signed_tls and args.tls_cert:
        raise ValidationError("--self-signed-tls or --tls-cert/--tls-key, not both")
    tls = None
    if args.tls_cert:
        tls = TlsFiles(Path(args.tls_cert), Path(args.tls_key))
    elif args.self_signed_tls:
        tls_dir = _home_path(args) / "tls"
        existing = TlsFiles(tls_dir / CERT_FILE, tls_dir / KEY_FILE)  # self_signed_cert's
        tls = (
            existing
            if existing.cert.exists() and existing.key.exists()
            else self_signed_cert(tls_dir, hostnames=(host, "localhost"))
        )
    run_daemon(
        _home_path(args),
        host,
        port,
        announce=_json_ready if args.json else None,
        tls=tls,
        max_frame=args.max_frame,
        relay=args.relay,
        upstream=args.upstream,
        cache=args.cache,
        upstream_transport=args.upstream_transport,
        upstream_verify=args.upstream_cafile or not args.upstream_insecure,
        space=args.space,
        allow_hosts=tuple(args.api_allow_host),
        p2p=p2p,
        replicator_retry=args.replicator_retry_intervals,
    )


def _retry_intervals(text: str) -> Any:
    from loomdb.replication.replicator_state import RetrySchedule

    try:
        return RetrySchedule.parse(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


class Parser(argparse.ArgumentParser):
    """argparse for every ``loomdb`` command: no abbreviated options (a script's
    ``--lim`` would break the day a ``--limiter`` came), a misspelt option reported
    by the command it was given to, and the closest match of a misspelt name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self._unrecognized(extras)
        assert parsed is not None
        return parsed, extras

    def _unrecognized(self, extras: list[str]) -> NoReturn:
        first = extras[0]
        known = [s for a in self._actions for s in a.option_strings]
        close = difflib.get_close_matches(first.partition("=")[0], known, n=1)
        hint = f" (did you mean {close[0]}?)" if first.startswith("-") and close else ""
        self.error(f"unrecognized argument{'s' if len(extras) > 1 else ''}: "
                   f"{' '.join(extras)}{hint}")  # fmt: skip

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        if choices is not None and value not in choices and isinstance(value, str):
            names = [str(c) for c in choices]
            close = difflib.get_close_matches(value, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise argparse.ArgumentError(
                action, f"invalid choice: {value!r}{hint} (choose from {', '.join(names)})"
            )
        super()._check_value(action, value)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="loomdb",
        description="loomdb: a peer-to-peer, offline-first, end-to-end-encrypted document database",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str, run: Callable[[argparse.Namespace], None], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--home", help="node home directory (default: $LOOMDB_HOME or ~/.loomdb)")
        p.set_defaults(run=run)
        return p

    p = command("init", cmd_init, "create a node home (node key, user identity, keys) or show it")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command("id", cmd_id, "print this node's Peer ID, multiaddr and user id")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command("demo", cmd_demo, "write, verify, relay and read entries on this node's store")
    p.add_argument("--entries", type=_positive, default=20_000, help="how many entries to write")
    p.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    p = command("start", cmd_start, "run the node: serve the HTTP API until SIGINT or SIGTERM")
    p.add_argument("--json", action="store_true", help="print the ready line as JSON")
    p.add_argument(
        "--api",
        metavar="HOST:PORT",
        default=DEFAULT_API,
        help=f"where to serve the API; port 0: any free port (default {DEFAULT_API})",
    )
    p.add_argument(
        "--api-allow-host",
        metavar="NAME",
        action="append",
        default=[],
        help="a Host name or address the API answers to besides loopback and the one it is "
        "bound to (repeatable; '*': any, e.g. behind a reverse proxy)",
    )
    p.add_argument(
        "--relay",
        action="store_true",
        help="store and forward entries only: no database, no keys (a blind relay)",
    )
    p.add_argument(
        "--space",
        default=os.environ.get("LOOMDB_SPACE") or "main",
        help="the space the document API works on by default (default: $LOOMDB_SPACE, else main)",
    )
    p.add_argument("--upstream", metavar="URL", help="relay: forward every request to this node")
    p.add_argument("--cache", action="store_true", help="relay with --upstream: keep copies")
    p.add_argument("--upstream-transport", choices=["ws", "http"], default="ws")
    p.add_argument("--upstream-cafile", metavar="PATH", help="trust this CA for the upstream")
    p.add_argument("--upstream-insecure", action="store_true", help="skip upstream TLS checks")
    p.add_argument("--tls-cert", metavar="PATH", help="serve HTTPS/WSS with this certificate")
    p.add_argument("--tls-key", metavar="PATH", help="… and this private key")
    p.add_argument(
        "--self-signed-tls",
        action="store_true",
        help="serve HTTPS/WSS with a self-signed certificate kept in <home>/tls (for tests)",
    )
    p.add_argument(
        "--max-frame",
        type=_positive,
        default=8 * 1024 * 1024,
        metavar="BYTES",
        help="largest sync frame accepted or sent (default 8 MiB)",
    )
    p.add_argument(
        "--p2p-addr",
        metavar="MULTIADDR",
        action="append",
        help="where the libp2p host listens (repeatable; port 0: any free port; "
        "/ip4/HOST/tcp/PORT/ws for WebSocket; "
        "default /ip4/0.0.0.0/tcp/9171)",
    )
    p.add_argument("--no-p2p", action="store_true", help="run no libp2p host")
    p.add_argument(
        "--no-dht",
        action="store_true",
        help="run no Kad-DHT: provide nothing, look for no providers",
    )
    p.add_argument(
        "--peers",
        metavar="MULTIADDR",
        nargs="+",
        action="extend",
        default=[],
        help="bootstrap peers (/ip4/HOST/tcp/PORT/p2p/12D3KooW…), kept connected",
    )
    p.add_argument(
        "--mdns",
        action="store_true",
        help="find peers on the LAN by mDNS and connect to them (off by default; only on "
        "the interfaces of the --p2p-addr addresses, every non-loopback one for 0.0.0.0)",
    )
    p.add_argument(
        "--relay-service",
        action="store_true",
        help="be a circuit relay v2 for other peers (reservations and circuits, within limits)",
    )
    for flag, what in (
        ("--relay-max-reservations", "reservations held at once (default 128)"),
        ("--relay-reservation-seconds", "how long a reservation lasts (default 3600)"),
        ("--relay-circuit-seconds", "longest a relayed connection lasts (default 3600)"),
        ("--relay-circuit-bytes", "most bytes a relayed connection carries (default 256 MiB)"),
    ):
        p.add_argument(flag, metavar="N", type=_positive, default=None, help=f"relay: {what}")
    p.add_argument(
        "--relays",
        metavar="MULTIADDR",
        nargs="+",
        action="extend",
        default=[],
        help="circuit relays (/ip4/HOST/tcp/PORT/p2p/12D3KooW…) to reserve on and be reached "
        "through (advertised as …/p2p-circuit/p2p/<this node>)",
    )
    p.add_argument(
        "--no-hole-punch",
        action="store_true",
        help="stay relayed: no DCUtR upgrade to a direct connection",
    )
    p.add_argument(
        "--hole-punch-seconds",
        metavar="SECONDS",
        type=float,
        default=None,
        help="how long one hole-punch attempt may take, in the background (default 10)",
    )
    p.add_argument(
        "--anti-entropy-seconds",
        metavar="SECONDS",
        type=float,
        default=None,
        help="how often the node reconciles what it follows with each peer (default 30; "
        "also on every new connection)",
    )
    p.add_argument(
        "--replicator-retry-intervals",
        metavar="SECONDS,…",
        type=_retry_intervals,
        default=None,
        help="how long a failing replicator waits before each new try, the last repeated "
        "(default 30,60,120,240,480,960,1920)",
    )
    add_client_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with a usage message on bad arguments
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="loomdb: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        args.run(args)
        sys.stdout.flush()  # here, where a closed pipe can still be caught
    except LoomError as exc:
        print(f"loomdb: error: {exc.message}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("loomdb: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader left (``loomdb client doc list c | head -1``): not an error of
        # ours. Point stdout at /dev/null so the exit's own flush cannot fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return 0


if __name__ == "__main__":
    sys.exit(main())
