"""What the host tells others it listens on: ``0.0.0.0`` and ``::`` expanded.

A host listening on ``/ip4/0.0.0.0/tcp/9171`` (the default) listens on every
interface, but ``0.0.0.0`` is nobody's address. py-libp2p advertised it as it is —
in identify, in Kad-DHT provider records, in the addresses peers store — so a
default node could not be dialled by anyone who learnt of it that way. go-libp2p
resolves unspecified listen addresses to the interfaces' (``manet``'s
``ResolveUnspecifiedAddresses`` in ``Host.Addrs``); :func:`addrs_factory` does the same
through py-libp2p's ``addrs_factory`` hook: each unspecified address becomes one per
interface address of its family, public first, then private, loopback last (py-libp2p
dials the first address it knows of a peer), link-local left out. Interfaces are read
at most every :data:`REFRESH_SECONDS` (identify and provides ask often).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Sequence
from typing import Final

import ifaddr
import multiaddr

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
UNSPECIFIED: Final = ("0.0.0.0", "::")
REFRESH_SECONDS: Final = 30.0


def interface_ips() -> list[IP]:
    """This machine's IP addresses (every interface's), link-local ones left out (an IPv6
    one needs a zone id, which loomdb's multiaddrs do not carry; 169.254/16 is not routed)."""
    found: list[IP] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            if not address.is_link_local and address not in found:
                found.append(address)
    return found


def rank(ip: IP) -> int:
    """Public first, then private (a LAN's), loopback last."""
    return 2 if ip.is_loopback else 0 if ip.is_global else 1


def expand_unspecified(
    addrs: Sequence[multiaddr.Multiaddr], ips: Sequence[IP]
) -> list[multiaddr.Multiaddr]:
    """``addrs`` with each ``/ip4/0.0.0.0/…`` (``/ip6/::/…``) replaced by the same address
    on each of ``ips`` of its family, in :func:`rank`'s order; duplicates dropped. An
    unspecified address with no interface of its family is left out."""
    ranked = sorted(ips, key=rank)
    out: dict[str, multiaddr.Multiaddr] = {}
    for addr in addrs:
        text = str(addr)
        family, _, rest = text.lstrip("/").partition("/")
        host, _, tail = rest.partition("/")
        if family in ("ip4", "ip6") and host in UNSPECIFIED:
            version = 4 if family == "ip4" else 6
            for ip in ranked:
                if ip.version == version:
                    expanded = f"/{family}/{ip.compressed}/{tail}"
                    out.setdefault(expanded, multiaddr.Multiaddr(expanded))
        else:
            out.setdefault(text, addr)
    return list(out.values())


def addrs_factory(
    interfaces: Callable[[], Sequence[IP]] = interface_ips,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[list[multiaddr.Multiaddr]], list[multiaddr.Multiaddr]]:
    """py-libp2p's ``addrs_factory`` (go-libp2p's ``AddrsFactory``): see the module doc."""
    cache: list[Sequence[IP]] = []
    read_at = [0.0]

    def factory(candidates: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
        if not any(str(a).split("/")[2:3] in (["0.0.0.0"], ["::"]) for a in candidates):
            return candidates
        now = clock()
        if not cache or now - read_at[0] >= REFRESH_SECONDS:
            cache[:] = [interfaces()]
            read_at[0] = now
        return expand_unspecified(candidates, cache[0])

    return factory
