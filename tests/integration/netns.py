"""Network namespaces with NATs, for tests of relays and hole punching.

The topology (the one in the py-libp2p field notes), made from nothing and torn
down by :func:`nat_topology` even when a test fails::

    A 10.77.1.2 ── lan ─ router RA ─ wan 198.51.100.2 ─┐
                                                       ├─ bridge "pub": relay R 198.51.100.1
    B 10.77.2.2 ── lan ─ router RB ─ wan 198.51.100.3 ─┘

Each router masquerades its LAN behind its WAN address with nftables, and drops
what comes in on its WAN unless conntrack knows it (a stateful firewall: an
unsolicited SYN gets no RST, which would kill a simultaneous open). ``nat``:
``"port-preserving"`` (plain ``masquerade``: the source port kept when free) or
``"symmetric"`` (``masquerade random``: a new random port per connection). No
route joins the two LANs: A and B reach each other only through R, or through a
hole punched in both NATs.

Every address exists only inside the namespaces (198.51.100.0/24 is TEST-NET-2,
10.77.0.0/16 private); the host's own interfaces and routes are never touched.
Names carry this process's id, so two runs side by side do not collide. Every
command is bounded in time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

COMMAND_TIMEOUT: Final = 20.0
RELAY_IP: Final = "198.51.100.1"
A_IP: Final = "10.77.1.2"
B_IP: Final = "10.77.2.2"
NATS: Final = ("port-preserving", "symmetric")


class NetnsUnavailable(AssertionError):
    """Namespaces cannot be made here (not root, no ``ip``/``nft``): the test fails."""


def _run(*args: str, input: str | None = None) -> None:
    done = subprocess.run(
        list(args),
        input=input,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")


def check_available() -> None:
    """Raise :class:`NetnsUnavailable` with the reason when namespaces cannot be made."""
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        raise NetnsUnavailable(
            f"network-namespace tests need {' and '.join(missing)} "
            "(apt-get install iproute2 nftables, as .ci/run does)"
        )
    if os.geteuid() != 0:
        raise NetnsUnavailable(
            "network-namespace tests must run as root (CI does): they create namespaces, "
            "veth pairs and nftables rules"
        )


@dataclass(frozen=True)
class Topology:
    """The namespaces made: run a command in one with :meth:`prefix`."""

    relay: str
    a: str
    b: str
    routers: tuple[str, str]
    public: str
    nat: str

    def prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.public, self.relay, *self.routers, self.a, self.b)


def _nft_rules(nat: str) -> str:
    masquerade = "masquerade random" if nat == "symmetric" else "masquerade"
    return f"""
table ip loomnat {{
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" {masquerade}
  }}
}}
table inet loomfw {{
  chain forward {{
    type filter hook forward priority filter; policy accept;
    ct state established,related accept
    iifname "wan" drop
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    ct state established,related accept
    iifname "wan" drop
  }}
}}
"""


def _ns(ns: str, *args: str) -> None:
    _run("ip", "netns", "exec", ns, *args)


def _veth(left_ns: str, left: str, right_ns: str, right: str) -> None:
    """A veth pair ``left`` (in ``left_ns``) ─ ``right`` (in ``right_ns``), made
    inside the namespaces (never in the host's)."""
    _ns(
        left_ns, "ip", "link", "add", left, "type", "veth", "peer", "name", right, "netns", right_ns
    )
    _ns(left_ns, "ip", "link", "set", left, "up")
    _ns(right_ns, "ip", "link", "set", right, "up")


def _build(t: Topology) -> None:
    for ns in t.namespaces:
        _run("ip", "netns", "add", ns)
        _ns(ns, "ip", "link", "set", "lo", "up")
    _ns(t.public, "ip", "link", "add", "br0", "type", "bridge")
    _ns(t.public, "ip", "link", "set", "br0", "up")
    # The relay and the routers' WAN sides on the bridge.
    for ns, name, ip in (
        (t.relay, "eth0", RELAY_IP),
        (t.routers[0], "wan", "198.51.100.2"),
        (t.routers[1], "wan", "198.51.100.3"),
    ):
        port = f"p{ip.rsplit('.', 1)[1]}"
        _veth(ns, name, t.public, port)
        _ns(t.public, "ip", "link", "set", port, "master", "br0")
        _ns(ns, "ip", "addr", "add", f"{ip}/24", "dev", name)
    # Each LAN: the host behind its router.
    for router, host, net in ((t.routers[0], t.a, "10.77.1"), (t.routers[1], t.b, "10.77.2")):
        _veth(router, "lan", host, "eth0")
        _ns(router, "ip", "addr", "add", f"{net}.1/24", "dev", "lan")
        _ns(host, "ip", "addr", "add", f"{net}.2/24", "dev", "eth0")
        _ns(host, "ip", "route", "add", "default", "via", f"{net}.1")
        _ns(router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        _run("ip", "netns", "exec", router, "nft", "-f", "-", input=_nft_rules(t.nat))


def _teardown(t: Topology) -> None:
    # Deleting a namespace deletes its interfaces (and the veth peers with them).
    for ns in t.namespaces:
        subprocess.run(
            ["ip", "netns", "delete", ns],
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )


@contextmanager
def nat_topology(nat: str) -> Iterator[Topology]:
    """Build the topology with ``nat`` routers; delete every namespace afterwards."""
    if nat not in NATS:
        raise ValueError(f"nat is one of {NATS}")
    check_available()
    tag = f"lm{os.getpid() % 100000}"
    t = Topology(
        relay=f"{tag}r",
        a=f"{tag}a",
        b=f"{tag}b",
        routers=(f"{tag}ra", f"{tag}rb"),
        public=f"{tag}pub",
        nat=nat,
    )
    try:
        try:
            _build(t)
        except RuntimeError as exc:
            raise NetnsUnavailable(f"cannot build the namespaces: {exc}") from None
        yield t
    finally:
        _teardown(t)


def in_ns(t: Topology, ns: str, args: Sequence[str]) -> list[str]:
    return [*t.prefix(ns), *args]
