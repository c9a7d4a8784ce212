"""What every probe shares: the result type and the shallow error tree.

A probe is ``async def run(cfg, result) -> None``: it measures, adds its own
values to ``result`` and raises a :class:`ProbeError` (or lets an OSError or
timeout escape) on failure. The runner (agent/runner.py) owns the outcome:
success, duration, timeout and the failure ``reason`` label.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import ssl
from dataclasses import dataclass, field


class ProbeError(Exception):
    """A failure that is data. The class's ``reason`` becomes the metric label."""

    reason = "error"


class Timeout(ProbeError):
    reason = "timeout"


class Refused(ProbeError):
    reason = "refused"


class Unreachable(ProbeError):
    reason = "unreachable"


class Permission(ProbeError):
    reason = "permission"


class ProtocolError(ProbeError):
    reason = "protocol"


class ResolveError(ProbeError):
    reason = "resolve"


class TLSError(ProbeError):
    reason = "tls"


_ERRNO_REASONS = {
    errno.ECONNREFUSED: "refused",
    errno.ECONNRESET: "reset",
    errno.EHOSTUNREACH: "unreachable",
    errno.ENETUNREACH: "unreachable",
    errno.EHOSTDOWN: "unreachable",
    errno.ENETDOWN: "unreachable",
    errno.EADDRNOTAVAIL: "unreachable",
    errno.ETIMEDOUT: "timeout",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
}


def reason_of(exc: BaseException) -> str:
    """Map any exception a probe raised to a short, bounded reason label."""
    if isinstance(exc, ProbeError):
        return exc.reason
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return "tls"
    if isinstance(exc, OSError):
        if exc.errno in _ERRNO_REASONS:
            return _ERRNO_REASONS[exc.errno]
        if isinstance(exc, ConnectionError):
            return "connection"
        return "oserror"
    return "error"


def literal(host: str, family: int = socket.AF_UNSPEC) -> tuple[int, str] | None:
    """(address family, address) of an IP address (an IPv6 one may carry a %scope, kept); None for a host name,
    which needs :func:`resolve`. ResolveError for an address of another family than ``family``."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    fam = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    if family not in (socket.AF_UNSPEC, fam):
        raise ResolveError(f"{host} is not an {'ipv4' if family == socket.AF_INET else 'ipv6'} address")
    return fam, host if "%" in host else str(ip)


async def resolve(host: str, port: int | None = None, family: int = socket.AF_UNSPEC,
                  socktype: int = socket.SOCK_STREAM) -> tuple[int, str]:
    """(address family, address) of the first answer of the system resolver; failure is ``resolve``."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, family=family, type=socktype)
    except socket.gaierror as e:
        raise ResolveError(f"cannot resolve {host}: {e.strerror}") from None
    fam, _, _, _, addr = infos[0]
    return fam, str(addr[0])


Labels = tuple[tuple[str, str], ...]


@dataclass
class ProbeResult:
    """What one probe run adds beyond success and duration.

    Values are recorded against the probe's own ``probe``/``target`` labels plus
    the extra labels given here. Counters are increments; the agent keeps totals.
    Counters the kernel already keeps (interface bytes, station retries) are
    reported with :meth:`counter_value` as the cumulative value itself.
    """

    gauges: list[tuple[str, Labels, float]] = field(default_factory=list)
    counters: list[tuple[str, Labels, float]] = field(default_factory=list)
    observations: list[tuple[str, Labels, list[float]]] = field(default_factory=list)  # values of one run
    counter_values: list[tuple[str, Labels, float]] = field(default_factory=list)
    detail: dict[str, object] = field(default_factory=dict)  # for `mogli-agent probe` output

    def gauge(self, name: str, value: float, **labels: str) -> None:
        self.gauges.append((name, tuple(sorted(labels.items())), value))

    def count(self, name: str, inc: float = 1.0, **labels: str) -> None:
        self.counters.append((name, tuple(sorted(labels.items())), inc))

    def counter_value(self, name: str, value: float, **labels: str) -> None:
        """A counter whose cumulative value someone else keeps (the kernel): recorded as the new total."""
        self.counter_values.append((name, tuple(sorted(labels.items())), value))

    def observe(self, name: str, *values: float, **labels: str) -> None:
        """Values for a histogram: each run adds one histogram sample per series with all of them."""
        self.observations.append((name, tuple(sorted(labels.items())), list(values)))
