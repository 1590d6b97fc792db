"""Tickets: ``loomdb-ticket1:…``, what another node needs to reach this one — and,
optionally, to join one of its spaces — in one line to paste or a QR code to scan.

A ticket is ``loomdb-ticket1:`` and the base64url (no padding) of canonical CBOR::

    {"peer":   <the 38-byte binary Peer ID>,
     "addrs":  [<a binary multiaddr, without its final /p2p/<peer>>, …],   1-16 of them
     "space":  "<space id>",                                   optional, without "invite"
     "invite": <an invitation's packed body: zlib(CBOR {"space", "entries"})>}   optional

in the style of the user cards and invitations of :mod:`loomdb.trust.admin`:
versioned by its prefix, binary inside, the same ticket for the same contents.
Every address ends with the ticket's own Peer ID, so it is left out of each one
(40 bytes saved per address) and put back on decoding; a relayed address keeps its
relay's (``/ip4/R/tcp/P/p2p/RELAY/p2p-circuit``). An invitation is carried as the
bytes its text encodes, not base64 twice, and names the ticket's space itself (so
``"space"`` is left out then).

:meth:`Ticket.decode` refuses anything else with one :class:`ValidationError`
naming what is wrong: the prefix, the encoding, the size (at most
:data:`MAX_TICKET_CHARS`, so a ticket fits one API request), a field, an address
that is not ``/ip4|ip6/…/tcp/…`` (optionally through a relay) or is unspecified
(``0.0.0.0``), an invitation that does not verify or is to another space. A
:class:`Ticket` built in code is checked the same way, and each of its addresses'
last ``/p2p/`` must be its Peer ID.

:func:`dialable_addrs` turns what a host listens on into what a ticket offers:
``0.0.0.0`` / ``::`` become the machine's own addresses (its interfaces', public
ones first, loopback last), relayed addresses are kept. :func:`issue_ticket` and
:func:`connect_ticket` are what the API's routes run: they take the host and the
node's trust through small protocols, so nothing here imports libp2p.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import base58
import cbor2
import multiaddr

from loomdb.errors import ForbiddenError, TransportError, UnreachableError, ValidationError
from loomdb.identity.peer_id import PEER_ID_SIZE, public_key_from_peer_id
from loomdb.transports.announce import interface_ips, rank
from loomdb.trust.admin import INVITE_PREFIX, decode_invitation

TICKET_PREFIX: Final = "loomdb-ticket1:"
MAX_TICKET_CHARS: Final = 12 * 1024
"""Fits the p2p API's 16 KiB request body with room to spare; a ticket is for pasting."""
MAX_ADDRS: Final = 16
MAX_ADDR_BYTES: Final = 256
MAX_SPACE_CHARS: Final = 256
FIELDS: Final = frozenset({"peer", "addrs", "space", "invite"})

_PARSE_ERRORS: Final = (ValueError, TypeError, LookupError)  # what multiaddr raises
_CIRCUIT: Final = "p2p-circuit"
_DIRECT_SHAPES: Final = (["ip4", "tcp"], ["ip6", "tcp"])
_UNSPECIFIED: Final = ("0.0.0.0", "::")
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]*")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    """Strict: base64's decoder would skip characters outside the alphabet."""
    if _BASE64URL.fullmatch(text) is None or len(text) % 4 == 1:
        raise ValidationError(f"this {what} is not base64url (was it cut when pasted?)")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):  # pragma: no cover - the alphabet was checked
        raise ValidationError(f"this {what} is not base64url (was it cut when pasted?)") from None


@dataclass(frozen=True, slots=True)
class Ticket:
    """A peer, where to dial it (in order), and optionally a space and an invitation.

    ``addrs`` are whole multiaddrs, each ending in ``/p2p/<peer_id>``;
    ``invitation`` is ``loomdb-invite1:…`` to ``space`` (which it then needs)."""

    peer_id: str
    addrs: tuple[str, ...]
    space: str | None = None
    invitation: str | None = None

    def __post_init__(self) -> None:
        public_key_from_peer_id(self.peer_id)  # an Ed25519 Peer ID, or ValidationError
        if not isinstance(self.addrs, tuple) or not 1 <= len(self.addrs) <= MAX_ADDRS:
            raise ValidationError(f"a ticket holds 1 to {MAX_ADDRS} addresses")
        for addr in self.addrs:
            transport_part(addr, self.peer_id)
        if self.space is not None and (
            not isinstance(self.space, str) or not 0 < len(self.space) <= MAX_SPACE_CHARS
        ):
            raise ValidationError(f"a ticket's space id is 1 to {MAX_SPACE_CHARS} characters")
        if self.invitation is not None:
            if not isinstance(self.invitation, str):
                raise ValidationError("a ticket's invitation is loomdb-invite1:… text")
            space, _ = decode_invitation(self.invitation)
            if space != self.space:
                raise ValidationError(
                    f"a ticket's invitation is to its space ({self.space}), not to {space}"
                )

    def encode(self) -> str:
        """``loomdb-ticket1:…``; :class:`ValidationError` past :data:`MAX_TICKET_CHARS`."""
        value: dict[str, Any] = {
            "peer": base58.b58decode(self.peer_id),
            "addrs": [transport_part(a, self.peer_id).to_bytes() for a in self.addrs],
        }
        if self.space is not None and self.invitation is None:
            value["space"] = self.space
        if self.invitation is not None:
            value["invite"] = _unb64(self.invitation.strip()[len(INVITE_PREFIX) :], "invitation")
        text = TICKET_PREFIX + _b64(cbor2.dumps(value, canonical=True))
        if len(text) > MAX_TICKET_CHARS:
            raise ValidationError(
                f"this ticket would be {len(text)} characters, more than {MAX_TICKET_CHARS}: "
                "the space's directory is too large to carry in it (give a ticket without "
                "the invitation, and the invitation of `client space invite` apart)"
            )
        return text

    @classmethod
    def decode(cls, text: str) -> Ticket:
        """A ticket's text → the :class:`Ticket`; :class:`ValidationError` for anything else."""
        if not isinstance(text, str) or not text.strip().startswith(TICKET_PREFIX):
            raise ValidationError(f"a ticket starts with {TICKET_PREFIX!r}")
        text = text.strip()
        if len(text) > MAX_TICKET_CHARS:
            raise ValidationError(
                f"this ticket is too long: {len(text)} characters, at most {MAX_TICKET_CHARS}"
            )
        raw = _unb64(text[len(TICKET_PREFIX) :], "ticket")
        try:
            value = cbor2.loads(raw)
        except Exception:  # cbor2 raises many kinds on garbage; a ticket's is one error
            raise ValidationError("this ticket does not decode (was it cut when pasted?)") from None
        if not isinstance(value, dict) or not {"peer", "addrs"} <= set(value) <= FIELDS:
            raise ValidationError(
                "a ticket holds a peer and its addresses (and optionally a space, an invitation)"
            )
        peer = value["peer"]
        if type(peer) is not bytes or len(peer) != PEER_ID_SIZE:
            raise ValidationError(f"a ticket's peer is a {PEER_ID_SIZE}-byte binary Peer ID")
        peer_id = base58.b58encode(peer).decode("ascii")
        public_key_from_peer_id(peer_id)
        raws = value["addrs"]
        if not isinstance(raws, list) or not 1 <= len(raws) <= MAX_ADDRS:
            raise ValidationError(f"a ticket holds 1 to {MAX_ADDRS} addresses")
        addrs = tuple(f"{_read_addr(r)}/p2p/{peer_id}" for r in raws)
        space = value.get("space")
        if "space" in value and not isinstance(space, str):
            raise ValidationError("a ticket's space id is text")
        invitation = None
        if "invite" in value:
            packed = value["invite"]
            if type(packed) is not bytes:
                raise ValidationError("a ticket's invitation is bytes")
            if "space" in value:
                raise ValidationError("a ticket's invitation names its space: no space field")
            invitation = INVITE_PREFIX + _b64(packed)
            space, _ = decode_invitation(invitation)
        return cls(peer_id, addrs, space, invitation)

    def to_json(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "addrs": list(self.addrs),
            "space": self.space,
            "invitation": self.invitation is not None,
        }


def _read_addr(raw: Any) -> str:
    """One binary address of a ticket (its ``/p2p/<peer>`` left off) → its text."""
    if type(raw) is not bytes or not 0 < len(raw) <= MAX_ADDR_BYTES:
        raise ValidationError(f"a ticket's address is 1 to {MAX_ADDR_BYTES} bytes")
    try:
        addr = multiaddr.Multiaddr(raw)
        text = str(addr)
        # py-multiaddr reads some truncated forms leniently: one spelling only
        canonical = multiaddr.Multiaddr(text).to_bytes() == raw
    except _PARSE_ERRORS:
        canonical = False
    if not canonical:
        raise ValidationError("a ticket's address is not a multiaddr (was it cut?)")
    _check_shape(addr, text)
    return text


def transport_part(addr: str, peer_id: str) -> multiaddr.Multiaddr:
    """``addr`` without its final ``/p2p/<peer_id>``, checked: ``/ip4|ip6/HOST/tcp/PORT``,
    optionally ``/p2p/RELAY/p2p-circuit`` after it, never unspecified."""
    try:
        whole = multiaddr.Multiaddr(addr)
        items = list(whole.items())
    except _PARSE_ERRORS as exc:
        raise ValidationError(f"bad multiaddr {addr!r}: {exc}") from None
    if not items or items[-1][0].name != "p2p":
        raise ValidationError(f"address {addr!r} does not end with /p2p/{peer_id}")
    if items[-1][1] != peer_id:
        raise ValidationError(
            f"address {addr!r} is of peer {items[-1][1]}, not of the ticket's {peer_id}"
        )
    transport = whole.decapsulate(multiaddr.Multiaddr(f"/p2p/{peer_id}"))
    _check_shape(transport, addr)
    if any(p.name == "p2p" and value == peer_id for p, value in items[:-1]):
        raise ValidationError(f"address {addr!r}: its relay is the peer itself")
    return transport


def _check_shape(addr: multiaddr.Multiaddr, text: str) -> None:
    items = list(addr.items())
    names = [p.name for p, _ in items]
    direct = names[:2]
    relayed = names[2:] == ["p2p", _CIRCUIT]
    if direct not in _DIRECT_SHAPES or not (len(names) == 2 or relayed):
        raise ValidationError(
            f"a ticket's address {text!r} is not /ip4|ip6/HOST/tcp/PORT "
            "(optionally /p2p/RELAY/p2p-circuit after it)"
        )
    if str(items[0][1]) in _UNSPECIFIED or int(str(items[1][1])) == 0:
        raise ValidationError(f"a ticket's address {text!r} cannot be dialled (unspecified)")
    if relayed:
        public_key_from_peer_id(str(items[2][1]))  # the relay's: an Ed25519 Peer ID


# --- what a ticket offers ------------------------------------------------------------------


def dialable_addrs(
    listen: Iterable[str],
    interfaces: Callable[[], Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address]] = (
        interface_ips
    ),
) -> list[str]:
    """What a host listens on (``…/p2p/<id>``, relayed ones too), as a ticket offers
    it: each unspecified address replaced by the machine's own of its family, in
    :func:`~loomdb.transports.announce.rank`'s order; duplicates dropped; at most
    :data:`MAX_ADDRS`."""
    out: list[str] = []
    ips: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address] | None = None
    for addr in listen:
        family, _, rest = addr.lstrip("/").partition("/")
        host, _, tail = rest.partition("/")
        if family in ("ip4", "ip6") and host in _UNSPECIFIED:
            if ips is None:
                ips = sorted(interfaces(), key=rank)
            version = 4 if family == "ip4" else 6
            out += [f"/{family}/{ip.compressed}/{tail}" for ip in ips if ip.version == version]
        else:
            out.append(addr)
    return list(dict.fromkeys(out))[:MAX_ADDRS]


# --- giving and using tickets --------------------------------------------------------------

DIAL_SECONDS: Final = 30.0
"""No address of a ticket is tried once this long has passed since the first
(each dial is bounded by the host's connect time-out)."""


class Host(Protocol):
    """What tickets need of :class:`~loomdb.transports.libp2p.P2PHost`."""

    peer_id: str

    def listen_addrs(self) -> list[str]: ...

    def peers(self) -> list[dict[str, Any]]: ...

    async def connect(self, addr: str) -> str: ...


class Trust(Protocol):
    """What tickets need of :class:`~loomdb.trust.admin.NodeTrust`."""

    async def add_user(
        self,
        space: str,
        card: str,
        roles: Sequence[str],
        collection: str = ...,
        label: str | None = None,
    ) -> dict[str, Any]: ...

    async def join(self, invitation: str) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Invite:
    """Who a ticket invites: a user's card, its roles on a collection, a label."""

    card: str
    roles: tuple[str, ...]
    collection: str = "*"
    label: str | None = None


def _own_addrs(host: Host) -> tuple[str, ...]:
    """:func:`dialable_addrs` of the host, each one a ticket accepts."""
    out = []
    for addr in dialable_addrs(host.listen_addrs()):
        try:
            transport_part(addr, host.peer_id)
        except ValidationError:
            continue  # e.g. an IPv6 address with a zone: not for a ticket
        out.append(addr)
    if not out:
        raise ValidationError("this node listens on no address another node could dial")
    return tuple(out)


async def issue_ticket(
    host: Host, trust: Trust | None, space: str | None = None, invite: Invite | None = None
) -> dict[str, Any]:
    """A ticket to this node (and ``space``); with ``invite``, the user is added to
    the managed space first (:meth:`NodeTrust.add_user`) and the invitation made for
    it rides in the ticket. The answer: ``ticket`` (its text), what it holds, and
    ``invited`` (the user id, or ``None``)."""
    addrs = _own_addrs(host)
    invitation = invited = None
    if invite is not None:
        if space is None:
            raise ValidationError("an invitation is to a space: name it (--space)")
        if trust is None:
            raise ForbiddenError("a relay administers no space, so it invites nobody")
        added = await trust.add_user(
            space, invite.card.strip(), invite.roles, invite.collection, invite.label
        )
        invitation, invited = added["invitation"], added["user"]
    ticket = Ticket(host.peer_id, addrs, space, invitation)
    try:
        text = ticket.encode()
    except ValidationError as exc:
        raise ValidationError(
            f"{exc.message}; user {invited} was added to {space} all the same "
            f"(its invitation: `loomdb client space invitation {space}`)"
        ) from None
    return {"ticket": text, **ticket.to_json(), "invited": invited}


async def connect_ticket(
    host: Host,
    trust: Trust | None,
    text: str,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Dial the ticket's peer at its addresses in order until one answers (none
    tried after :data:`DIAL_SECONDS`; none at all when it is connected already),
    then join the space of its invitation. ``UnreachableError`` when none answers;
    nothing is joined then. The answer: ``peer_id``, ``addr`` (the one connected
    to; ``None`` if it was already), ``already``, ``failed`` (``[{addr, error}]``
    before it), ``space``, ``joined`` (:meth:`NodeTrust.join`'s answer or ``None``)."""
    ticket = Ticket.decode(text)
    if ticket.peer_id == host.peer_id:
        raise ValidationError("that is this node's own ticket")
    if ticket.invitation is not None and trust is None:
        raise ForbiddenError("a relay joins no space: this ticket carries an invitation")
    failed: list[dict[str, Any]] = []
    start = clock()
    used = None
    # py-libp2p's dial returns at once for a peer connected already, whatever the address
    already = any(p["peer_id"] == ticket.peer_id for p in host.peers())
    for addr in () if already else ticket.addrs:
        if failed and clock() - start > DIAL_SECONDS:
            break
        try:
            await host.connect(addr)
        except TransportError as exc:
            failed.append({"addr": addr, "error": {"code": exc.code, "message": exc.message}})
            continue
        used = addr
        break
    if used is None and not already:
        last = failed[-1]["error"]["message"]
        raise UnreachableError(
            f"cannot reach {ticket.peer_id} at any of the {len(failed)} address(es) "
            f"tried of its ticket ({len(ticket.addrs)}); the last: {last}"
        )
    joined = None
    if ticket.invitation is not None:
        assert trust is not None
        joined = await trust.join(ticket.invitation)
    return {
        "peer_id": ticket.peer_id,
        "connected": True,
        "addr": used,
        "already": already,
        "failed": failed,
        "space": ticket.space,
        "joined": joined,
    }


__all__ = [
    "DIAL_SECONDS",
    "Host",
    "Invite",
    "Trust",
    "connect_ticket",
    "issue_ticket",
    "MAX_ADDRS",
    "MAX_TICKET_CHARS",
    "TICKET_PREFIX",
    "Ticket",
    "dialable_addrs",
    "interface_ips",
    "transport_part",
]
