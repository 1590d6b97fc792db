"""The wire side of mDNS discovery (:mod:`loomdb.transports.libp2p.mdns`): which
interfaces mDNS runs on, what we announce, and the TXT records of the libp2p mDNS
spec — written, read, and checked before anything heard is believed. Pure
functions (only :func:`local_interfaces` looks at the machine).

* :func:`choose_interfaces`: the interfaces carrying the listen addresses; for
  ``0.0.0.0`` every non-loopback, non-link-local IPv4 one (explicitly, never
  zeroconf's "all"). Loopback has no multicast; IPv6 is not done.
* :func:`encode_txt` / :func:`parse_txt`: one ``dnsaddr=<multiaddr>`` string per
  address, the key repeated as the spec writes it (zeroconf's property dicts cannot
  repeat a key, hence raw rdata); py-libp2p's ``dnsaddr2=…`` keys are read too.
* :func:`peer_from_txt`: an announcement's peer and the addresses we would dial:
  parsed as ours (:func:`~loomdb.transports.libp2p.host.parse_peer_addr`), one
  peer, inside the subnet of an interface mDNS runs on, not relayed, bounded.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import ifaddr

from loomdb.errors import ValidationError
from loomdb.transports.libp2p.host import parse_listen_addr, parse_peer_addr
from loomdb.transports.libp2p.nat import is_circuit

SERVICE_TYPE: Final = "_p2p._udp.local."
TXT_KEY: Final = b"dnsaddr"
MAX_TXT_STRING: Final = 255  # DNS: one length byte per character-string


# --- interfaces ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interface:
    """One IPv4 address of a network interface, with its subnet."""

    name: str
    ip: str
    prefix: int

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.ip}/{self.prefix}", strict=False)


def local_interfaces() -> list[Interface]:
    """Every IPv4 address of this machine's (this namespace's) interfaces."""
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4:
                found.append(Interface(str(adapter.name), str(ip.ip), int(ip.network_prefix)))
    return found


def _usable(iface: Interface) -> bool:
    ip = ipaddress.IPv4Address(iface.ip)
    return not (ip.is_loopback or ip.is_link_local or ip.is_unspecified)


def choose_interfaces(listen: Iterable[str], available: Sequence[Interface]) -> list[Interface]:
    """The interfaces mDNS runs on: those carrying the listen addresses (multiaddrs);
    for ``0.0.0.0``, every non-loopback, non-link-local IPv4 one. ``ValidationError``
    when that leaves none (loopback only, IPv6 only, or no LAN interface)."""
    chosen: list[Interface] = []
    for text in listen:
        addr = parse_listen_addr(text)
        protocols = [p.name for p in addr.protocols()]
        if protocols[0] != "ip4":
            continue
        ip = ipaddress.IPv4Address(str(addr.value_for_protocol("ip4")))
        if ip.is_unspecified:
            chosen += [i for i in available if _usable(i)]
        elif not ip.is_loopback:
            chosen += [i for i in available if i.ip == str(ip)]
    unique = list(dict.fromkeys(chosen))
    if not unique:
        raise ValidationError(
            "--mdns needs an IPv4 listen address on a LAN interface (loopback has no "
            "multicast): give --p2p-addr /ip4/<LAN address>/tcp/PORT or /ip4/0.0.0.0/tcp/PORT"
        )
    return unique


def advertised_addrs(
    transport_addrs: Iterable[str], interfaces: Sequence[Interface], peer_id: str
) -> list[str]:
    """What we announce: each IPv4 listen address (``0.0.0.0`` expanded to the chosen
    interfaces' addresses, loopback left out), ending in ``/p2p/<Peer ID>``."""
    out: list[str] = []
    for text in transport_addrs:
        addr = parse_listen_addr(text.split("/p2p/", 1)[0])
        if next(p.name for p in addr.protocols()) != "ip4":
            continue
        ip = ipaddress.IPv4Address(str(addr.value_for_protocol("ip4")))
        port = int(addr.value_for_protocol("tcp"))
        if ip.is_unspecified:
            hosts = [i.ip for i in interfaces]
        elif ip.is_loopback:
            hosts = []
        else:
            hosts = [str(ip)]
        out += [f"/ip4/{h}/tcp/{port}/p2p/{peer_id}" for h in hosts]
    return list(dict.fromkeys(out))


# --- TXT records -----------------------------------------------------------------------


def encode_txt(addrs: Iterable[str]) -> bytes:
    """The TXT record's rdata: one ``dnsaddr=<addr>`` string per address (the spec
    repeats the key, which zeroconf's property dicts cannot; hence raw bytes)."""
    out = bytearray()
    for addr in addrs:
        string = TXT_KEY + b"=" + addr.encode("ascii")
        if len(string) > MAX_TXT_STRING:
            raise ValidationError(f"address too long for a TXT record: {addr}")
        out += bytes([len(string)]) + string
    return bytes(out)


def _is_dnsaddr_key(key: bytes) -> bool:
    suffix = key.lower().removeprefix(TXT_KEY)
    return len(suffix) < len(key) and (suffix == b"" or suffix.isdigit())


def parse_txt(text: bytes, limit: int = 32) -> list[str]:
    """The ``dnsaddr`` values of a TXT record's rdata (``dnsaddr``, and py-libp2p's
    ``dnsaddrN``), at most ``limit``; anything else, or truncated, is skipped."""
    values: list[str] = []
    at = 0
    while at < len(text) and len(values) < limit:
        length = text[at]
        string = text[at + 1 : at + 1 + length]
        at += 1 + length
        if len(string) < length:
            break  # truncated
        key, sep, value = string.partition(b"=")
        if not sep or not _is_dnsaddr_key(key):
            continue
        try:
            values.append(value.decode("ascii"))
        except UnicodeDecodeError:
            continue
    return values


def peer_from_txt(
    text: bytes, own_peer: str, lan: Sequence[Interface], max_addrs: int
) -> tuple[str, list[str]] | None:
    """The peer a TXT record announces and its usable addresses (see the module doc),
    or None: none usable, or it is us."""
    networks = [i.network for i in lan]
    peer: str | None = None
    addrs: list[str] = []
    for value in parse_txt(text):
        if is_circuit(value):
            continue
        try:
            info = parse_peer_addr(value)
        except ValidationError:
            continue
        peer_id = info.peer_id.to_base58()
        if peer is not None and peer_id != peer:
            continue
        ip_text = info.addrs[0].value_for_protocol(info.addrs[0].protocols()[0].code)
        try:
            ip = ipaddress.ip_address(str(ip_text))
        except ValueError:
            continue
        if not any(ip in net for net in networks) or ip.is_unspecified or ip.is_multicast:
            continue
        peer = peer_id
        if value not in addrs:
            addrs.append(value)
        if len(addrs) >= max_addrs:
            break
    if peer is None or peer == own_peer:
        return None
    return peer, addrs
