"""TCP connect probe: resolve, connect (and optionally the TLS handshake, with the certificate's expiry), close.

Phases (``mogli_probe_phase_seconds``): ``resolve`` (DNS; absent for an IP address), ``connect`` (SYN to
established) and ``tls`` (handshake; with ``tls: true``). The phases that completed are reported when a later
one fails or times out, so a ``connect`` without a ``tls`` says the port answered and the handshake did not.
With ``tls: true`` the peer certificate's notAfter is ``mogli_tls_cert_expiry_timestamp_seconds`` (also with
``tls_verify: false``). Nothing is sent beyond the handshake: a camera's RTSP port, a radio's management port
or an MQTT broker see a connection that opens and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass, field

from agent.confload import check
from agent.probes.base import ProbeResult, literal, resolve
from agent.probes.tls import client_context, record_cert


def _hostport(v: str) -> str | None:
    host, sep, port = v.rpartition(":")
    if not sep or not host:
        return "must be HOST:PORT (IPv6 as [ADDR]:PORT)"
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f"port {port!r} must be 1..65535"
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        return "an IPv6 address goes in brackets: [ADDR]:PORT"
    return None


@dataclass(frozen=True)
class TcpConfig:
    target: str = field(metadata=check(validate=_hostport, doc="HOST:PORT"))
    name: str = ""  # label value for `target`; default: the target itself
    interval: float = field(default=10.0, metadata=check(min=0.1, max=86400))
    timeout: float = field(default=3.0, metadata=check(min=0.01, max=300))
    tls: bool = False  # a TLS handshake after the connect
    tls_server_name: str = ""  # SNI and the name the certificate must carry; default: the target's host
    tls_verify: bool = True
    ca_file: str = ""  # CA bundle for the server's certificate; empty: the system's CAs
    # the SSL context, built once per probe (agent/probes/tls.py)
    cache: dict[str, ssl.SSLContext] = field(default_factory=dict, init=False, repr=False, compare=False)


CLOSE_WAIT = 1.0
"""Seconds a closed TLS connection waits for the peer's close_notify before it is reset."""


def split_hostport(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


async def run(cfg: TcpConfig, result: ProbeResult) -> None:
    host, port = split_hostport(cfg.target)
    ctx = await client_context(cfg.cache, cfg.ca_file, cfg.tls_verify) if cfg.tls else None  # before the clock
    t0 = time.perf_counter()
    known = literal(host)
    if known is None:
        _, addr = await resolve(host, port)
        t0 = phase(result, "resolve", t0)
    else:
        addr = known[1]
    _, writer = await asyncio.open_connection(addr, port)
    try:
        t1 = phase(result, "connect", t0)
        result.detail["address"] = addr
        if ctx is not None:
            await writer.start_tls(ctx, server_hostname=cfg.tls_server_name or host)
            phase(result, "tls", t1)
            sslobj = writer.get_extra_info("ssl_object")
            if sslobj is not None:
                result.detail["tls_version"] = sslobj.version()
                der = sslobj.getpeercert(binary_form=True)
                if der:
                    record_cert(der, result)
    except BaseException:  # failed, or cancelled by the runner's timeout: no goodbye that could make it later
        writer.transport.abort()
        raise
    writer.close()  # TLS: our close_notify, then the peer's is awaited; one that never comes must not turn a
    with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):  # good run into a timeout: 1 s, then a reset
        await asyncio.wait_for(writer.wait_closed(), CLOSE_WAIT)
    writer.transport.abort()  # a no-op once the connection is closed


def phase(result: ProbeResult, name: str, start: float) -> float:
    """Record the phase that began at ``start`` and ends now; returns now (the next phase's start)."""
    now = time.perf_counter()
    result.gauge("mogli_probe_phase_seconds", now - start, phase=name)
    result.detail[f"{name}_s"] = round(now - start, 6)
    return now
