"""How the daemon runs its libp2p host: settings, the checks before start, the sync
connector for multiaddr remotes, and the ready line's addresses.

``loomdb start`` listens on :data:`~loomdb.transports.libp2p.DEFAULT_P2P_ADDR`
unless told ``--p2p-addr`` (repeatable) or ``--no-p2p``. The host serves
``/loomdb/sync/1.0.0`` with the node's store server: each peer acts as the user
whose directory record lists its Peer ID as a device, space by space
(:mod:`loomdb.trust.devices`), else anonymously. ``POST /api/v0/sync/run`` with a
multiaddr ``remote`` (``/ip4/…/tcp/…/p2p/12D3KooW…``) syncs over libp2p: the
node dials the peer and proves who it is by Noise, with no sign-in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import trio

from loomdb.api.sync_run import Connect
from loomdb.entries.entry import Entry
from loomdb.errors import ValidationError
from loomdb.replication.feed import EntryFeed
from loomdb.replication.heads import DEFAULT_INTERVAL
from loomdb.replication.passive import PassiveReplication
from loomdb.replication.providers import Providers
from loomdb.replication.subscriptions import FILE as SUBSCRIPTIONS_FILE
from loomdb.replication.subscriptions import Subscriptions
from loomdb.stores.remote import RemoteStore
from loomdb.transports.libp2p import (
    DEFAULT_P2P_ADDR,
    P2PHost,
    check_listen_free,
    parse_listen_addr,
    parse_peer_addr,
)
from loomdb.transports.libp2p.dht import NodeDHT
from loomdb.transports.libp2p.mdns_records import choose_interfaces, local_interfaces
from loomdb.transports.libp2p.nat import DEFAULT_PUNCH_TIMEOUT, NatSettings, RelayServiceLimits

P2P_READY: Final = " and p2p at {addrs}"
"""Appended to the daemon's ready line when libp2p runs: the multiaddrs, space-separated."""


@dataclass(frozen=True, slots=True)
class P2PSettings:
    """``listen``: multiaddrs to listen on; ``peers``: bootstrap peers to keep connected;
    ``anti_entropy``: seconds between head exchanges with each peer; ``nat``: relay
    service, relays to reserve on, hole punching; ``mdns``: find and connect to peers
    on the LAN (:mod:`loomdb.transports.libp2p.mdns`); ``dht``: run the Kad-DHT
    (:mod:`~loomdb.transports.libp2p.dht`; ``--no-dht`` turns it off)."""

    listen: tuple[str, ...]
    peers: tuple[str, ...] = ()
    anti_entropy: float = DEFAULT_INTERVAL
    nat: NatSettings = field(default_factory=NatSettings)
    mdns: bool = False
    dht: bool = True

    @property
    def dht_server(self) -> bool:
        """DHT server mode, unless behind a NAT (reserving on relays): see dht.py."""
        return not self.nat.relays

    def check(self) -> None:
        """Before anything is opened: bad addresses are ``ValidationError``, a busy
        port ``AddressInUseError``."""
        addrs = [parse_listen_addr(a) for a in self.listen]
        if not addrs:
            raise ValidationError("give at least one --p2p-addr, or --no-p2p")
        for peer in self.peers:
            parse_peer_addr(peer)
        if not 0.1 <= self.anti_entropy <= 86400:
            raise ValidationError("--anti-entropy-seconds is between 0.1 and 86400")
        self.nat.check()
        if self.mdns:  # no interface for mDNS: a clear error now
            choose_interfaces(self.listen, local_interfaces())
        check_listen_free(addrs)


def ready_suffix(p2p: P2PHost | None) -> str:
    return "" if p2p is None else P2P_READY.format(addrs=" ".join(p2p.listen_addrs()))


def is_multiaddr(remote: str) -> bool:
    return remote.startswith("/")


def p2p_connector(p2p: P2PHost | None, fallback: Connect) -> Connect:
    """``sync_run_route``'s connector: a multiaddr remote over libp2p, on the host's
    shared channel to that peer (one stream per peer, whatever the number of syncs;
    frames of the host's ``max_frame``), any other remote as ``fallback`` opens it."""

    async def connect(body: dict[str, Any]) -> RemoteStore:
        remote: str = body["remote"]
        if not is_multiaddr(remote):
            return await fallback(body)
        if p2p is None:
            raise ValidationError("this node runs without libp2p (--no-p2p): give a URL")
        peer = str(parse_peer_addr(remote).peer_id)
        if body.get("peer_id", peer) != peer:
            raise ValidationError(f"peer_id {body['peer_id']} is not the peer {remote} names")
        return RemoteStore(p2p.peer_channel(remote))  # the peer's one long-lived stream

    return connect


def p2p_settings(
    addrs: Sequence[str] | None,
    no_p2p: bool,
    peers: Sequence[str],
    anti_entropy: float | None = None,
    nat: NatSettings | None = None,
    *,
    dht: bool = True,
) -> P2PSettings | None:
    """``loomdb start``'s options as settings (None: no libp2p)."""
    if no_p2p:
        if addrs or peers or anti_entropy is not None or nat is not None:
            raise ValidationError(
                "--no-p2p and --p2p-addr/--peers/--anti-entropy-seconds/--relay… do not go together"
            )
        return None
    interval = DEFAULT_INTERVAL if anti_entropy is None else anti_entropy
    return P2PSettings(
        tuple(addrs or (DEFAULT_P2P_ADDR,)),
        tuple(peers),
        interval,
        nat or NatSettings(),
        dht=dht,
    )


def with_mdns(settings: P2PSettings | None, mdns: bool) -> P2PSettings | None:
    """``start --mdns`` on top of :func:`p2p_settings`'s settings."""
    if not mdns:
        return settings
    if settings is None:
        raise ValidationError("--no-p2p and --mdns do not go together")
    return replace(settings, mdns=True)


def nat_settings(
    *,
    relay_service: bool,
    relays: Sequence[str],
    no_hole_punch: bool,
    punch_seconds: float | None,
    limits: dict[str, int | None],
) -> NatSettings | None:
    """``loomdb start``'s relay and hole-punch options (None: none given). ``limits``:
    :class:`RelayServiceLimits` fields, None for the default."""
    given = {k: v for k, v in limits.items() if v is not None}
    if given and not relay_service:
        raise ValidationError("--relay-max-reservations/-seconds/-bytes need --relay-service")
    if not (relay_service or relays or no_hole_punch or punch_seconds is not None):
        return None
    return NatSettings(
        service=RelayServiceLimits(**given) if relay_service else None,
        relays=tuple(relays),
        hole_punch=not no_hole_punch,
        punch_timeout=DEFAULT_PUNCH_TIMEOUT if punch_seconds is None else punch_seconds,
    )


@asynccontextmanager
async def passive_replication(
    home: Path,
    p2p: P2PHost,
    local: Any,
    *,
    feed: EntryFeed,
    check: Callable[[Entry], None],
    settings: P2PSettings,
    default_space: str,
    dht: NodeDHT | None = None,
) -> AsyncIterator[PassiveReplication]:
    """Gossip and head exchange on ``p2p`` (running) until the block ends, with the
    subscriptions saved in ``home``; with ``dht`` (running), what the node holds is
    provided on it, and history no peer at hand has is looked for there."""
    subscriptions = Subscriptions(home / SUBSCRIPTIONS_FILE)
    providers = None if dht is None else Providers(dht, p2p, local, feed, subscriptions)
    replication = PassiveReplication(
        p2p,
        local,
        feed,
        subscriptions,
        check,
        anti_entropy=settings.anti_entropy,
        default_space=default_space,
        providers=providers,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(replication.run)
        if providers is not None:
            nursery.start_soon(providers.run)
        try:
            yield replication
        finally:
            nursery.cancel_scope.cancel()
