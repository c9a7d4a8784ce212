"""TCP connect probe: resolve, connect (and optionally TLS), then close.

Metrics: the runner's ``mogli_probe_*`` plus ``mogli_probe_phase_seconds`` for
the phases ``resolve``, ``connect`` and ``tls``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass, field

from agent.confload import check
from agent.probes.base import ProbeResult, resolve


def _hostport(v: str) -> str | None:
    host, sep, port = v.rpartition(":")
    if not sep or not host:
        return "must be HOST:PORT (IPv6 as [ADDR]:PORT)"
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f"port {port!r} must be 1..65535"
    return None


@dataclass(frozen=True)
class TcpConfig:
    target: str = field(metadata=check(validate=_hostport, doc="HOST:PORT"))
    name: str = ""  # label value for `target`; default: the target itself
    interval: float = field(default=10.0, metadata=check(min=0.1, max=86400))
    timeout: float = field(default=3.0, metadata=check(min=0.01, max=300))
    tls: bool = False
    tls_server_name: str = ""
    tls_verify: bool = True


def split_hostport(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


async def run(cfg: TcpConfig, result: ProbeResult) -> None:
    host, port = split_hostport(cfg.target)
    t0 = time.perf_counter()
    _, addr = await resolve(host, port)
    t1 = time.perf_counter()
    result.gauge("mogli_probe_phase_seconds", t1 - t0, phase="resolve")
    _, writer = await asyncio.open_connection(addr, port)
    t2 = time.perf_counter()
    result.gauge("mogli_probe_phase_seconds", t2 - t1, phase="connect")
    result.detail.update(address=addr, connect_s=round(t2 - t1, 6))
    try:
        if cfg.tls:
            ctx = ssl.create_default_context()
            if not cfg.tls_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            await writer.start_tls(ctx, server_hostname=cfg.tls_server_name or host)
            t3 = time.perf_counter()
            result.gauge("mogli_probe_phase_seconds", t3 - t2, phase="tls")
            result.detail["tls_s"] = round(t3 - t2, 6)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
