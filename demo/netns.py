"""Network namespaces for the demo (root only): one per node plus a hub, veth pairs, nftables loss.

Every address lives inside a namespace created here (10.77.0.0/24 on a bridge in the hub namespace),
so nothing is configured in, or sent to, the machine's own network. The hub is the operations centre
side of every node's uplink: the demo process listens there (a socket opened inside the namespace with
setns(2) in a short-lived thread) and relays to the collector on 127.0.0.1 in the root namespace.

Names: namespaces ``mogdemo-<pid>-<node>`` and ``mogdemo-<pid>-hub``; veths exist only inside them.
A leftover of a killed demo (its pid gone) is removed by the next start.
"""

from __future__ import annotations

import ctypes
import os
import re
import socket
import subprocess
import threading
from collections.abc import Callable
from typing import TypeVar

PREFIX = "mogdemo-"
HUB_IP = "10.77.0.1"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def nft(ns: str, script: str, check: bool = True) -> None:
    r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"nft in {ns}: {r.stderr.strip()}")


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run fn in a fresh thread that joined network namespace ns (setns is per thread), e.g. to make a
    socket there; a socket keeps its namespace for life, whichever thread uses it later."""
    libc = ctypes.CDLL(None, use_errno=True)
    out: dict[str, T] = {}
    err: list[BaseException] = []

    def target() -> None:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"setns {ns}: {os.strerror(e)}")
            out["v"] = fn()
        except BaseException as e:
            err.append(e)
        finally:
            os.close(fd)

    t = threading.Thread(target=target, name=f"netns-{ns}")
    t.start()
    t.join()
    if err:
        raise err[0]
    return out["v"]


def listen_in(ns: str, host: str, port: int) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(64)
        s.setblocking(False)
        return s

    return in_netns(ns, make)


def remove_stale() -> list[str]:
    """Delete namespaces of earlier demos whose process is gone (killed with SIGKILL, say)."""
    gone = []
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{PREFIX}(\d+)-\S+", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            ip("netns", "del", name, check=False)
            gone.append(name)
    return gone


class Topology:
    """Hub namespace with bridge br0 (10.77.0.1/24); node i gets namespace with eth0 10.77.0.(10+i)/24,
    its peer in the hub on br0."""

    def __init__(self, nodes: list[str]):
        self.tag = f"{PREFIX}{os.getpid()}"
        self.hub = f"{self.tag}-hub"
        self.nodes = nodes
        self.created: list[str] = []

    def ns(self, node: str) -> str:
        return f"{self.tag}-{node}"

    def addr(self, node: str) -> str:
        return f"10.77.0.{10 + self.nodes.index(node)}"

    def up(self) -> None:
        for name in [self.hub, *(self.ns(n) for n in self.nodes)]:
            ip("netns", "add", name)
            self.created.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        ip("-n", self.hub, "addr", "add", f"{HUB_IP}/24", "dev", "br0")
        ip("-n", self.hub, "link", "set", "br0", "up")
        for i, n in enumerate(self.nodes):
            ns = self.ns(n)
            ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"v{i}", "netns", self.hub)
            ip("-n", self.hub, "link", "set", f"v{i}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{self.addr(n)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            # the node's uplink impairment lives here: an empty chain until a fault is set
            nft(ns, "table inet mogdemo {\n chain out { type filter hook output priority 0; }\n}\n")

    def set_loss(self, node: str, percent: int) -> None:
        """Drop `percent` % of the node's packets towards the hub (100: the uplink is cut; 0: clean)."""
        rule = "" if percent <= 0 else (
            f"add rule inet mogdemo out ip daddr {HUB_IP} drop\n" if percent >= 100 else
            f"add rule inet mogdemo out ip daddr {HUB_IP} numgen random mod 100 < {percent} drop\n")
        nft(self.ns(node), "flush chain inet mogdemo out\n" + rule)

    def down(self) -> list[str]:
        """Remove every namespace (and with it the veths and nft tables inside). Returns what failed."""
        failed = []
        for name in reversed(self.created):
            if name != self.hub:
                nft(name, "delete table inet mogdemo\n", check=False)
            if ip("netns", "del", name, check=False).returncode != 0:
                failed.append(name)
        self.created = [n for n in self.created if n in failed]
        return failed


def exec_prefix(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]
