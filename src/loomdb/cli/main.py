"""The ``loomdb`` command: thin wrappers over the library.

Every command on a node's home takes ``--home`` the same way; every ``client``
command (:mod:`loomdb.cli.client`) takes ``--url`` and ``--json`` the same way.
Errors are mapped to exit codes in one table (``EXIT_CODES``); a user never
sees a traceback for a LoomError or a bad argument.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

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
from loomdb.node.home import NodeHome, default_home

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

    home = _home(args)
    anyio.run(run_demo, home, args.entries, print)


def cmd_start(args: argparse.Namespace) -> None:
    from loomdb.node.daemon import parse_address, run_daemon  # trio, Hypercorn, Loro
    from loomdb.transports.tls import CERT_FILE, KEY_FILE, TlsFiles, self_signed_cert

    host, port = parse_address(args.api)
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
        tls=tls,
        max_frame=args.max_frame,
        relay=args.relay,
        upstream=args.upstream,
        cache=args.cache,
        upstream_transport=args.upstream_transport,
        upstream_verify=args.upstream_cafile or not args.upstream_insecure,
        space=args.space,
        allow_hosts=tuple(args.api_allow_host),
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    p = command("start", cmd_start, "run the node: serve the HTTP API until SIGINT or SIGTERM")
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
    except LoomError as exc:
        print(f"loomdb: error: {exc.message}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("loomdb: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
