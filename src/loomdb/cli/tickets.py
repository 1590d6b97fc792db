"""``loomdb client p2p ticket`` and what ``client p2p connect TICKET`` prints: tickets
(:mod:`loomdb.node.ticket`) over the node's API (:mod:`loomdb.api.tickets`).

``ticket`` prints a line saying what the ticket holds, its QR code (half blocks,
:mod:`loomdb.cli.qr`; ``--no-qr`` leaves it out) and the ticket alone on the last
line, so it can be piped like an invitation::

    loomdb client p2p ticket --space team~z6Mk… --invite "$CARD" --role read --url $A \\
        | loomdb client p2p connect - --url $B
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from loomdb.cli.client import _run
from loomdb.cli.qr import qr_code, render
from loomdb.cli.trust import text_arg
from loomdb.errors import ValidationError
from loomdb.node.ticket import TICKET_PREFIX
from loomdb.trust.directory import ROLES
from loomdb.trust.spaces import ALL

Command = Callable[[Any, str, Callable[[argparse.Namespace], None], str], argparse.ArgumentParser]


def connect_body(text: str) -> dict[str, str]:
    """``p2p connect``'s body: a multiaddr starts with ``/``, a ticket with its prefix
    (any version: the node says which it reads); anything else is neither."""
    if text.startswith("/"):
        return {"addr": text}
    if text.startswith("loomdb-ticket"):  # loomdb-ticket1:, or a version this node lacks
        return {"ticket": text}
    raise ValidationError(
        f"expected a ticket ({TICKET_PREFIX}…) or a multiaddr (/ip4/HOST/tcp/PORT/p2p/12D3KooW…),"
        f" not {text[:24]!r}"
    )


def _sync_hint(answer: dict[str, Any]) -> str:
    peer = answer["addr"] or f"{answer['peer_id']}'s address"
    return f"loomdb client sync {peer} --space {answer['space']}"


def show_connected_by(answer: dict[str, Any]) -> None:
    failed = answer["failed"]
    tried = f" ({len(failed)} address(es) before it did not answer)" if failed else ""
    if answer["already"]:
        print(f"connected to {answer['peer_id']} already")
    else:
        print(f"connected to {answer['peer_id']} at {answer['addr']}{tried}")
    joined = answer["joined"]
    if joined is not None:
        roles = "; ".join(f"{c}: {','.join(r)}" for c, r in sorted(joined["roles"].items()))
        print(f"joined space {joined['space']} ({roles or 'no roles'})")
    if answer["space"] is not None:
        print(f"sync the space: {_sync_hint(answer)}")


def _what(answer: dict[str, Any]) -> str:
    parts = [f"{len(answer['addrs'])} address(es)"]
    if answer["space"] is not None:
        parts.append(f"space {answer['space']}")
    if answer["invited"] is not None:
        parts.append(f"an invitation for user {answer['invited']}")
    return f"ticket to {answer['peer_id']}: {', '.join(parts)}"


def _show_ticket(args: argparse.Namespace) -> Callable[[dict[str, Any]], None]:
    def show(answer: dict[str, Any]) -> None:
        text = answer["ticket"]
        print(_what(answer))
        if not args.no_qr:
            code = qr_code(text)
            if code is None:
                print(f"(no QR code: {len(text)} characters are more than one can hold)")
            else:
                print(render(code, invert=args.qr_invert))
        print(text)

    return show


def cmd_p2p_ticket(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {}
    if args.space:
        body["space"] = args.space
    if args.invite is not None:
        if not args.role:
            raise ValidationError("--invite needs the roles to give: --role ROLE (repeatable)")
        invite: dict[str, Any] = {"card": args.invite, "roles": args.role}
        if args.collection != ALL:
            invite["collection"] = args.collection
        if args.label is not None:
            invite["label"] = args.label
        body["invite"] = invite
    elif args.role or args.label is not None or args.collection != ALL:
        raise ValidationError("--role, --collection and --label go with --invite CARD")
    _run(args, lambda api: api.call("POST", "/p2p/ticket", body), _show_ticket(args))


def add_ticket_command(sub: Any, command: Command) -> None:
    """``p2p ticket``."""
    help_ = "print a ticket to this node (Peer ID, addresses; --space, --invite) and its QR code"
    p = command(sub, "ticket", cmd_p2p_ticket, help_)
    p.add_argument(
        "--invite",
        metavar="CARD",
        type=text_arg,
        help="add this user (loomdb-user1:…, - or @FILE) to the managed --space; "
        "the ticket carries its invitation",
    )
    p.add_argument("--role", choices=ROLES, action="append", default=[], help="with --invite")
    p.add_argument("--collection", default=ALL, help="with --invite: the roles' (default '*')")
    p.add_argument("--label", help="with --invite: a name for people")
    p.add_argument("--no-qr", action="store_true", help="print the ticket without its QR code")
    p.add_argument(
        "--qr-invert", action="store_true", help="draw the dark modules (light terminals)"
    )
