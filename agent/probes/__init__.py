"""The one registry of probe kinds: config validation and the runner both use it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agent.probes import icmp, tcp
from agent.probes.base import ProbeResult


@dataclass(frozen=True)
class ProbeKind:
    config: type[Any]  # frozen dataclass with at least target, name, interval, timeout
    run: Callable[[Any, ProbeResult], Awaitable[None]]
    doc: str


PROBES: dict[str, ProbeKind] = {
    "icmp": ProbeKind(icmp.IcmpConfig, icmp.run, "ICMP echo rounds to an IP address or host name"),
    "tcp": ProbeKind(tcp.TcpConfig, tcp.run, "TCP connect (and TLS handshake) to HOST:PORT"),
}
