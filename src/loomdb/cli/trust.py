"""``loomdb client identity`` and ``loomdb client space …``: managed spaces over the
node's trust API (:mod:`loomdb.api.trust`).

Thin like every client command: one API call, the answer for people by
default, the API's JSON with ``--json``. Cards and invitations are long
single-line strings; where one is an argument, ``-`` reads it from stdin and
``@PATH`` from a file, and ``space invite`` / ``space invitation`` print the
invitation alone on their last line so it can be piped::

    loomdb client space invite team~z6Mk… "$(loomdb client identity --url $B --card)" \\
        --role read --role write | tail -n1 | loomdb client space join - --url $B
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from loomdb.cli.client import _seg, _table, _when, api_client, non_negative
from loomdb.trust.directory import ROLES
from loomdb.trust.spaces import ALL

Command = Callable[[Any, str, Callable[[argparse.Namespace], None], str], argparse.ArgumentParser]
"""``client.add_client_parser``'s ``command``: a subcommand with ``--url/--json/--space``."""


def _space(space: str) -> str:
    return f"/spaces/{_seg(space)}"


def text_arg(text: str) -> str:
    """A card or an invitation: inline, ``-`` for stdin, or ``@PATH``."""
    if text == "-":
        value = sys.stdin.read()
    elif text.startswith("@"):
        try:
            value = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {text[1:]}: {exc.strerror}") from None
    else:
        value = text
    # the last non-empty line: so the whole output of 'space invite' can be piped in
    lines = [line.strip() for line in value.splitlines() if line.strip()]
    if not lines:
        source = "stdin" if text == "-" else repr(text)
        raise argparse.ArgumentTypeError(f"nothing read from {source}")
    return lines[-1]


# --- output --------------------------------------------------------------------------


def _roles(roles: Mapping[str, list[str]]) -> str:
    """``{"*": ["read", "write"], "notes": ["read"]}`` → ``*: read,write; notes: read``."""
    scopes = sorted(roles, key=lambda c: (c != ALL, c))
    return "; ".join(f"{c}: {','.join(roles[c])}" for c in scopes if roles[c]) or "-"


def show_identity(info: dict[str, Any]) -> None:
    _table(
        {
            "user": info["user"],
            "peer_id": info["peer_id"],
            "x25519": info["x25519"],
            "card": info["card"],
        }
    )


def show_card(info: dict[str, Any]) -> None:
    print(info["card"])


def _space_line(space: dict[str, Any]) -> str:
    admin = "admin" if space["admin"] else "member"
    key = space.get("key") or "no key"
    return (
        f"{space['space']}  {admin}  roles {_roles(space['roles'])}  "
        f"{space['users']} user(s)  key {key}"
    )


def show_space(space: dict[str, Any]) -> None:
    _table(
        {
            "space": space["space"],
            "name": space["name"],
            "root": space["root"],
            "admin": "yes" if space["admin"] else "no",
            "roles": _roles(space["roles"]),
            "users": space["users"],
            "key": space.get("key") or "-",
        }
    )


def show_spaces(answer: dict[str, Any]) -> None:
    for space in answer["spaces"]:
        print(_space_line(space))
    print(f"({len(answer['spaces'])} managed spaces)")


def show_users(answer: dict[str, Any]) -> None:
    for user in answer["users"]:
        notes = []
        if user.get("root"):
            notes.append("root")
        if user.get("revoked_from") is not None:
            notes.append(f"revoked from {_when(user['revoked_from'])}")
        label = f" ({user['label']})" if user.get("label") else ""
        extra = f"  [{', '.join(notes)}]" if notes else ""
        devices = len(user.get("devices") or [])
        print(f"{user['user']}{label}  {_roles(user['roles'])}  {devices} device(s){extra}")
    print(f"({len(answer['users'])} users)")


def show_invited(answer: dict[str, Any]) -> None:
    print(f"added user {answer['user']}; give it this invitation (last line):")
    print(answer["invitation"])


def show_roles(answer: dict[str, Any]) -> None:
    print(f"{answer['user']}  {_roles(answer['roles'])}")
    rotated = answer.get("rotated") or []
    if rotated:
        print(f"rotated keys: {', '.join(rotated)}")


def show_revoked(answer: dict[str, Any]) -> None:
    print(f"revoked {answer['user']} from {_when(answer['revoked_from'])}")
    print(f"  (HLC {answer['revoked_from']})")
    rotated = answer.get("rotated") or []
    print(f"rotated keys: {', '.join(rotated) or '-'}")


def show_rotated(answer: dict[str, Any]) -> None:
    print(f"new key {answer['key']}")


def show_invitation(answer: dict[str, Any]) -> None:
    print(answer["invitation"])


# --- commands ----------------------------------------------------------------------------


def _run(
    args: argparse.Namespace,
    method: str,
    path: str,
    show: Callable[[Any], None],
    body: Any = None,
) -> None:
    with api_client(args) as api:
        answer = api.call(method, path, body)
    if args.json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
    else:
        show(answer)


def cmd_identity(args: argparse.Namespace) -> None:
    _run(args, "GET", "/identity", show_card if args.card else show_identity)


def cmd_space_create(args: argparse.Namespace) -> None:
    _run(args, "POST", "/spaces", show_space, {"name": args.name})


def cmd_space_list(args: argparse.Namespace) -> None:
    _run(args, "GET", "/spaces", show_spaces)


def cmd_space_join(args: argparse.Namespace) -> None:
    _run(args, "POST", "/spaces/join", show_space, {"invitation": args.invitation})


def cmd_space_users(args: argparse.Namespace) -> None:
    _run(args, "GET", f"{_space(args.space_id)}/users", show_users)


def cmd_space_invite(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"card": args.card, "roles": args.role, "collection": args.collection}
    if args.label is not None:
        body["label"] = args.label
    _run(args, "POST", f"{_space(args.space_id)}/users", show_invited, body)


def cmd_space_revoke(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {}
    if args.effective_at is not None:
        body["effective_at"] = args.effective_at
    path = f"{_space(args.space_id)}/users/{_seg(args.user)}/revoke"
    _run(args, "POST", path, show_revoked, body)


def _role_change(action: str) -> Callable[[argparse.Namespace], None]:
    def run(args: argparse.Namespace) -> None:
        body = {
            "user": args.user,
            "role": args.role,
            "collection": args.collection,
            "action": action,
        }
        _run(args, "POST", f"{_space(args.space_id)}/roles", show_roles, body)

    return run


def cmd_space_rotate(args: argparse.Namespace) -> None:
    body = {"collection": args.collection}
    _run(args, "POST", f"{_space(args.space_id)}/keys/rotate", show_rotated, body)


def cmd_space_invitation(args: argparse.Namespace) -> None:
    _run(args, "GET", f"{_space(args.space_id)}/invitation", show_invitation)


def _nonblank(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


# --- the parser --------------------------------------------------------------------------------


def add_trust_commands(groups: Any, command: Command) -> None:
    """Add ``identity`` and ``space …`` to the ``client`` groups ``groups``."""
    p = command(groups, "identity", cmd_identity, "show this node's user and its card")
    p.add_argument("--card", action="store_true", help="print only the card (to paste or pipe)")

    help_ = "managed spaces: create, join, users, roles, keys, invitations"
    spaces = groups.add_parser("space", help=help_, description=help_)
    space = spaces.add_subparsers(dest="client_command", metavar="COMMAND", required=True)

    def space_command(
        name: str, run: Callable[[argparse.Namespace], None], help_: str
    ) -> argparse.ArgumentParser:
        p = command(space, name, run, help_)
        if name not in ("create", "list", "join"):
            p.add_argument("space_id", metavar="SPACE", type=_nonblank, help="NAME~ROOT_USER_ID")
        return p

    def collection(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument(
            "--collection", default=ALL, type=_nonblank, help=f"{what} (default '*': all)"
        )

    p = space_command("create", cmd_space_create, "create a managed space; you are its root")
    p.add_argument("name", help="1-63 characters a-z 0-9 . _ -")
    space_command("list", cmd_space_list, "list the managed spaces this node holds")
    p = space_command("join", cmd_space_join, "join a space with an invitation")
    p.add_argument(
        "invitation", metavar="INVITATION", type=text_arg, help="loomdb-invite1:…, - or @FILE"
    )
    space_command("users", cmd_space_users, "list a space's users, roles and revocations")
    p = space_command(
        "invite", cmd_space_invite, "add a user by its card; prints its invitation last"
    )
    p.add_argument("card", metavar="CARD", type=text_arg, help="loomdb-user1:…, - or @FILE")
    p.add_argument(
        "--role",
        choices=ROLES,
        action="append",
        required=True,
        help="a role to give (repeatable)",
    )
    collection(p, "the collection the roles are on")
    p.add_argument("--label", help="a name for people")
    p = space_command("revoke", cmd_space_revoke, "revoke a user and rotate the keys it held")
    p.add_argument("user", metavar="USER", help="the user id (z6Mk…)")
    p.add_argument(
        "--effective-at",
        metavar="HLC",
        type=non_negative,
        help="refuse its entries from this HLC time on (default: now)",
    )
    for name, action, help_ in (
        ("grant", "grant", "give a user a role"),
        ("ungrant", "revoke", "take a role from a user (rotates keys it no longer may read)"),
    ):
        p = space_command(name, _role_change(action), help_)
        p.add_argument("user", metavar="USER", help="the user id (z6Mk…)")
        p.add_argument("role", metavar="ROLE", choices=ROLES, help=" | ".join(ROLES))
        collection(p, "the collection")
    p = space_command("rotate", cmd_space_rotate, "make a new key version for the readers")
    collection(p, "the key's collection")
    space_command("invitation", cmd_space_invitation, "print a fresh invitation to the space")
