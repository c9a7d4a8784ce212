"""HTTP(S) probe: GET or HEAD a URL with phase timings, status, body check and certificate expiry.

Phases (``mogli_probe_phase_seconds``): ``resolve`` (DNS; absent for an IP literal), ``connect``
(TCP), ``tls`` (handshake; https only) and ``first_byte`` (request sent to response headers).
Each run uses a fresh connection (no pooling, no DNS cache), so every run measures every phase.
With redirects followed, the phases and certificate are those of the last hop.
"""

from __future__ import annotations

import re
import ssl
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohappyeyeballs
import aiohttp
from aiohttp.client_exceptions import ClientConnectorCertificateError, ClientConnectorError, ClientConnectorSSLError
from aiohttp.helpers import ceil_timeout

from agent.confload import check
from agent.probes.base import ProbeError, ProbeResult, ProtocolError, ResolveError, TLSError
from agent.probes.tls import client_context, record_cert


class StatusMismatch(ProbeError):
    reason = "status"


class BodyMismatch(ProbeError):
    reason = "body"


def _url(v: str) -> str | None:
    try:
        u = urlsplit(v)
        _ = u.port
    except ValueError as e:
        return f"not a valid URL: {e}"
    if u.scheme not in ("http", "https") or not u.hostname:
        return "must be an http:// or https:// URL"
    return None


def _regex(v: str) -> str | None:
    try:
        re.compile(v)
    except re.error as e:
        return f"not a valid regular expression: {e}"
    return None


def _statuses(v: list[int]) -> str | None:
    bad = [s for s in v if not 100 <= s <= 599]
    return f"status codes must be 100..599, got {bad}" if bad else None


@dataclass(frozen=True)
class HttpConfig:
    target: str = field(metadata=check(validate=_url, doc="http:// or https:// URL"))
    name: str = ""
    interval: float = field(default=30.0, metadata=check(min=0.1, max=86400))
    timeout: float = field(default=10.0, metadata=check(min=0.01, max=300))
    method: Literal["GET", "HEAD"] = "GET"
    valid_status: list[int] = field(default_factory=list, metadata=check(validate=_statuses))  # empty: 2xx
    body_pattern: str = field(default="", metadata=check(validate=_regex))  # regex searched in the body
    follow_redirects: bool = True
    max_body_bytes: int = field(default=1_048_576, metadata=check(min=0, max=1 << 30))
    tls_verify: bool = True
    ca_file: str = ""  # CA bundle for the server's certificate; empty: the system's CAs
    # the SSL context, built once per probe: loading the system CAs takes ~70 ms of blocked event loop
    cache: dict[str, ssl.SSLContext] = field(default_factory=dict, init=False, repr=False, compare=False)


# --- the connector that splits TCP connect from the TLS handshake ---------------------------------------

class _PhaseConnector(aiohttp.TCPConnector):
    """aiohttp's connector, with the moment the TCP connection stands and the peer certificate noted.

    aiohttp connects the socket (aiohappyeyeballs) and then runs the TLS handshake in
    loop.create_connection; this override is its ``_wrap_create_connection`` with a mark in between.
    """

    def __init__(self, marks: dict[str, Any], **kw: Any):
        super().__init__(**kw)
        self._marks = marks

    async def _wrap_create_connection(
        self, *args: Any, addr_infos: Any, req: Any, timeout: Any,
        client_error: type[Exception] = ClientConnectorError, **kwargs: Any,
    ) -> tuple[Any, Any]:
        try:
            async with ceil_timeout(timeout.sock_connect, ceil_threshold=timeout.ceil_threshold):
                sock = await aiohappyeyeballs.start_connection(
                    addr_infos=addr_infos, local_addr_infos=self._local_addr_infos,
                    happy_eyeballs_delay=self._happy_eyeballs_delay, interleave=self._interleave, loop=self._loop,
                )
                self._marks["tcp"] = time.perf_counter()
                self._marks["peer"] = sock.getpeername()[0]
                transport, proto = await self._loop.create_connection(*args, **kwargs, sock=sock)
        except ssl.CertificateError as exc:
            raise ClientConnectorCertificateError(req.connection_key, exc) from exc
        except ssl.SSLError as exc:
            raise ClientConnectorSSLError(req.connection_key, exc) from exc
        except OSError as exc:
            if exc.errno is None and isinstance(exc, TimeoutError):
                raise
            raise client_error(req.connection_key, exc) from exc
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            self._marks["cert"] = sslobj.getpeercert(binary_form=True)
        return transport, proto


def _trace(marks: dict[str, Any]) -> aiohttp.TraceConfig:
    tc = aiohttp.TraceConfig()

    def mark(key: str) -> Any:
        async def on(_s: aiohttp.ClientSession, _c: SimpleNamespace, _p: Any) -> None:
            marks[key] = time.perf_counter()
        return on

    async def new_connection(_s: aiohttp.ClientSession, _c: SimpleNamespace, _p: Any) -> None:
        for key in ("dns_start", "dns_end", "tcp", "cert", "peer", "create_end", "sent"):
            marks.pop(key, None)  # a redirect to another host: measure the last hop only
        marks["create_start"] = time.perf_counter()

    tc.on_connection_create_start.append(new_connection)
    tc.on_connection_create_end.append(mark("create_end"))
    tc.on_dns_resolvehost_start.append(mark("dns_start"))
    tc.on_dns_resolvehost_end.append(mark("dns_end"))
    tc.on_request_headers_sent.append(mark("sent"))
    return tc


async def _read_body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks, n = [], 0
    while n < limit:
        chunk = await resp.content.read(min(65536, limit - n))
        if not chunk:
            break
        chunks.append(chunk)
        n += len(chunk)
    return b"".join(chunks)


async def run(cfg: HttpConfig, result: ProbeResult) -> None:
    marks: dict[str, Any] = {}
    ctx = await client_context(cfg.cache, cfg.ca_file, cfg.tls_verify) if cfg.target.startswith("https:") else None
    conn = _PhaseConnector(marks, use_dns_cache=False, force_close=True, limit=1)
    t_headers: float | None = None
    try:
        async with aiohttp.ClientSession(
            connector=conn, trace_configs=[_trace(marks)], timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
        ) as session, session.request(
            cfg.method, cfg.target, allow_redirects=cfg.follow_redirects, ssl=ctx if ctx is not None else True,
            headers={"User-Agent": "mogli-agent"},
        ) as resp:
            t_headers = time.perf_counter()
            body = b"" if cfg.method == "HEAD" else await _read_body(resp, cfg.max_body_bytes)
            length = float(resp.content_length or 0) if cfg.method == "HEAD" else float(len(body))
            status = resp.status
    except aiohttp.ClientConnectorCertificateError as e:
        raise TLSError(f"certificate: {e.certificate_error}") from None
    except aiohttp.ClientSSLError as e:
        raise TLSError(str(e)) from None
    except aiohttp.ClientConnectorDNSError as e:
        raise ResolveError(str(e)) from None
    except aiohttp.ClientConnectorError as e:
        raise e.os_error from None
    except (aiohttp.ClientResponseError, aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as e:
        raise ProtocolError(f"{type(e).__name__}: {e}") from None
    finally:  # also on failure and timeout: the phases that completed say where it got stuck
        _phases(marks, t_headers, result)
    result.gauge("mogli_http_status_code", status)
    result.gauge("mogli_http_content_length_bytes", length)
    result.detail.update(status=status, bytes=int(length))
    if "peer" in marks:
        result.detail["address"] = marks["peer"]
    if marks.get("cert"):
        record_cert(marks["cert"], result)
    ok = cfg.valid_status or range(200, 300)
    if status not in ok:
        raise StatusMismatch(f"status {status} not in {cfg.valid_status or '2xx'}")
    if cfg.body_pattern and not re.search(cfg.body_pattern, body.decode("utf-8", errors="replace")):
        raise BodyMismatch(f"body does not match {cfg.body_pattern!r}")


def _phases(marks: dict[str, Any], t_headers: float | None, result: ProbeResult) -> None:
    def phase(name: str, start: str, end: str | float | None) -> None:
        t_end = marks.get(end) if isinstance(end, str) else end
        if start in marks and t_end is not None and t_end >= marks[start]:
            d = t_end - marks[start]
            result.gauge("mogli_probe_phase_seconds", d, phase=name)
            result.detail[f"{name}_s"] = round(d, 6)

    phase("resolve", "dns_start", "dns_end")
    phase("connect", "dns_end" if "dns_end" in marks else "create_start", "tcp")
    if "cert" in marks:
        phase("tls", "tcp", "create_end")
    phase("first_byte", "sent", t_headers)
