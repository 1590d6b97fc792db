"""A LAN in network namespaces, for the mDNS tests: one namespace holds a bridge,
each node namespace is joined to it by a veth pair::

    node 1 10.78.0.1 ─┐
    node 2 10.78.0.2 ─┼─ bridge "br0" (namespace "lan")
    node 3 10.78.0.3 ─┘

With ``lans``, a node is on the second LAN too, or only: bridge "br1" (same
namespace, its own segment), 10.79.0.0/24, interface ``eth1``.

Multicast (224.0.0.251:5353) crosses the bridge, so mDNS works between the
nodes; nothing leaves the namespaces (10.78.0.0/24 is private, no route out) and
the host's interfaces are never touched. Names carry this process's id; every
namespace is deleted afterwards, even when the test fails. Every command is
bounded in time. Needs root and ``ip`` (iproute2); no nftables.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

from tests.integration.netns import COMMAND_TIMEOUT, NetnsUnavailable, _ns, _run, _veth

NETS: Final = ("10.78.0", "10.79.0")


def require_available() -> None:
    """Fail (with the reason) where namespaces cannot be made: no ``ip``, not root. Never a
    skip: CI runs as root with iproute2 installed, so a skip there would hide the test."""
    if shutil.which("ip") is None:
        raise NetnsUnavailable("the LAN tests need ip (apt-get install iproute2, as .ci/run does)")
    if os.geteuid() != 0:
        raise NetnsUnavailable("the LAN tests must run as root (CI does): they create namespaces")


@dataclass(frozen=True)
class Lan:
    bridge: str
    hosts: tuple[str, ...]

    def ip(self, index: int, lan: int = 0) -> str:
        """Node ``index``'s address on LAN ``lan`` (interface ``eth<lan>``)."""
        return f"{NETS[lan]}.{index + 1}"

    def prefix(self, index: int) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[index]]

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.bridge, *self.hosts)


@contextmanager
def lan(count: int, lans: Sequence[Sequence[int]] | None = None) -> Iterator[Lan]:
    """``count`` node namespaces on one bridge (``lans[i]``: the LANs node ``i`` is
    on, 0 and/or 1); all deleted afterwards."""
    require_available()
    tag = f"lmd{os.getpid() % 100000}"
    net = Lan(bridge=f"{tag}lan", hosts=tuple(f"{tag}n{i}" for i in range(count)))
    try:
        for ns in net.namespaces:
            _run("ip", "netns", "add", ns)
            _ns(ns, "ip", "link", "set", "lo", "up")
        for k in range(len(NETS)):
            _ns(net.bridge, "ip", "link", "add", f"br{k}", "type", "bridge")
            _ns(net.bridge, "ip", "link", "set", f"br{k}", "up")
        for i, ns in enumerate(net.hosts):
            for k in (0,) if lans is None else lans[i]:
                _veth(ns, f"eth{k}", net.bridge, f"p{i}l{k}")
                _ns(net.bridge, "ip", "link", "set", f"p{i}l{k}", "master", f"br{k}")
                _ns(ns, "ip", "addr", "add", f"{net.ip(i, k)}/24", "dev", f"eth{k}")
        yield net
    finally:
        for ns in net.namespaces:  # deleting one deletes its interfaces, veth peers too
            subprocess.run(
                ["ip", "netns", "delete", ns],
                capture_output=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
