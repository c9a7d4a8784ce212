"""TCP connect probe against real listeners on 127.0.0.1 / ::1: plain, TLS with self-signed certificates from
openssl, a port that refuses, a server that never completes the handshake, one that speaks something else, and
one that never answers the TLS close."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import BIN, drained_values, free_port, make_certs, openssl_not_after

from agent.confload import ConfigErrors, load_text
from agent.probes.tcp import TcpConfig
from agent.recorder import Recorder
from agent.runner import Outcome, run_probe


def cfg(**kw: Any) -> TcpConfig:
    return load_text(json.dumps(kw), TcpConfig, "<test>")


async def probe(c: TcpConfig, rec: Recorder | None = None) -> Outcome:
    return await run_probe("tcp", c, rec)


def _phases(v: dict[tuple[str, str], float]) -> set[str]:
    return {p for n, p in v if n == "mogli_probe_phase_seconds"}


@asynccontextmanager
async def listener(host: str = "127.0.0.1", ctx: ssl.SSLContext | None = None, greeting: bytes = b"",
                   hold: bool = False) -> AsyncIterator[int]:
    """A server that accepts and, after ``greeting``, waits for the client to go (``hold``: never reads)."""
    held: list[asyncio.StreamWriter] = []

    async def on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if greeting:
            writer.write(greeting)
            await writer.drain()
        if hold:
            held.append(writer)
            return
        await reader.read()
        writer.close()

    srv = await asyncio.start_server(on, host, 0, ssl=ctx)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        for w in held:
            w.transport.abort()
        srv.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _server_ctx(certs: dict[str, Path]) -> ssl.SSLContext:
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(certs["short"], certs["short.key"])
    return sctx


def test_connect_phase_address_and_resolve_only_for_a_name() -> None:
    async def go() -> None:
        async with listener() as port:
            rec = Recorder()
            o = await probe(cfg(target=f"127.0.0.1:{port}", name="collector"), rec)
            assert (o.ok, o.target, o.detail["address"]) == (True, "collector", "127.0.0.1"), o
            v = drained_values(rec)
            assert _phases(v) == {"connect"}  # an address is not resolved
            assert 0 < v[("mogli_probe_phase_seconds", "connect")] < o.duration
            assert v[("mogli_probe_success", "")] == 1.0
            assert ("mogli_tls_cert_expiry_timestamp_seconds", "") not in v
            o = await probe(cfg(target=f"localhost:{port}"), rec)
            assert o.ok, o
            assert _phases(drained_values(rec)) == {"resolve", "connect"}

    asyncio.run(go())


def test_ipv6_address_in_brackets() -> None:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"no ::1 here: {e}")

    async def go() -> None:
        async with listener("::1") as port:
            o = await probe(cfg(target=f"[::1]:{port}"))
            assert (o.ok, o.detail["address"]) == (True, "::1"), o

    asyncio.run(go())


def test_closed_port_is_refused_and_an_unknown_name_fails_to_resolve() -> None:
    async def go() -> None:
        rec = Recorder()
        o = await probe(cfg(target=f"127.0.0.1:{free_port()}"), rec)
        assert (o.ok, o.reason) == (False, "refused"), o
        v = drained_values(rec)
        assert v[("mogli_probe_success", "")] == 0.0
        assert v[("mogli_probe_failures_total", "refused")] == 1.0
        o = await probe(cfg(target="no-such-host.invalid:80"))
        assert (o.ok, o.reason) == (False, "resolve"), o

    asyncio.run(go())


def test_tls_verified_with_ca_file_reports_the_handshake_and_certificate_expiry(certs: dict[str, Path]) -> None:
    async def go() -> None:
        async with listener(ctx=_server_ctx(certs)) as port:
            rec = Recorder()
            o = await probe(cfg(target=f"127.0.0.1:{port}", tls=True, ca_file=str(certs["short"])), rec)
            assert o.ok, o
            v = drained_values(rec)
            assert _phases(v) == {"connect", "tls"}
            assert v[("mogli_tls_cert_expiry_timestamp_seconds", "")] == openssl_not_after(certs["short"])
            assert 29 < float(str(o.detail["cert_days_left"])) <= 30
            assert str(o.detail["tls_version"]).startswith("TLSv1.")
            # the name checked is tls_server_name when given: this certificate is not for camera7.example
            o = await probe(cfg(target=f"127.0.0.1:{port}", tls=True, ca_file=str(certs["short"]),
                                tls_server_name="camera7.example"))
            assert (o.ok, o.reason) == (False, "tls") and "camera7.example" in str(o.detail["error"]), o
            o = await probe(cfg(target=f"localhost:{port}", tls=True, ca_file=str(certs["short"])))
            assert o.ok, o

    asyncio.run(go())


def test_tls_failures_are_named_and_verification_off_still_reports_the_expiry(certs: dict[str, Path]) -> None:
    async def go() -> None:
        async with listener(ctx=_server_ctx(certs)) as port:
            rec = Recorder()
            o = await probe(cfg(target=f"127.0.0.1:{port}", tls=True), rec)  # self-signed, not in the system CAs
            assert (o.ok, o.reason) == (False, "tls") and "certificate verify failed" in str(o.detail["error"]), o
            v = drained_values(rec)
            assert _phases(v) == {"connect"}  # the port answered, the handshake failed
            assert v[("mogli_probe_failures_total", "tls")] == 1.0
            o = await probe(cfg(target=f"127.0.0.1:{port}", tls=True, ca_file="/nonexistent/ca.pem"))
            assert (o.ok, o.reason) == (False, "tls") and "ca_file /nonexistent/ca.pem" in str(o.detail["error"])
            o = await probe(cfg(target=f"127.0.0.1:{port}", tls=True, tls_verify=False), rec)
            assert o.ok, o
            expiry = drained_values(rec)[("mogli_tls_cert_expiry_timestamp_seconds", "")]
            assert expiry == openssl_not_after(certs["short"])
        # a port that speaks something else (an RTSP server's greeting where TLS was expected)
        async with listener(greeting=b"RTSP/1.0 400 Bad Request\r\n\r\n", hold=True) as port:
            o = await probe(cfg(target=f"127.0.0.1:{port}", tls=True, tls_verify=False))
            assert (o.ok, o.reason) == (False, "tls"), o

    asyncio.run(go())


def test_a_handshake_that_never_completes_times_out_after_the_connect_phase() -> None:
    async def go() -> None:
        async with listener(hold=True) as port:  # accepts, never answers the ClientHello
            rec = Recorder()
            o = await probe(cfg(target=f"127.0.0.1:{port}", tls=True, tls_verify=False, timeout=0.5), rec)
            assert (o.ok, o.reason) == (False, "timeout"), o
            assert 0.5 <= o.duration < 1.5
            assert _phases(drained_values(rec)) == {"connect"}

    asyncio.run(go())


@contextmanager
def tls_server_that_never_closes(certs: dict[str, Path]) -> Iterator[int]:
    """A blocking TLS server that completes the handshake and then neither reads nor closes: our close_notify
    is never answered."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = srv.accept()
        with _server_ctx(certs).wrap_socket(conn, server_side=True):
            stop.wait(10)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(5)
        srv.close()


def test_a_peer_that_never_answers_the_tls_close_does_not_fail_a_good_run(certs: dict[str, Path]) -> None:
    with tls_server_that_never_closes(certs) as port:
        o = asyncio.run(probe(cfg(target=f"127.0.0.1:{port}", tls=True, tls_verify=False, timeout=5)))
    assert o.ok, o
    assert o.duration < 2.5  # the close waits at most 1 s (CLOSE_WAIT), not until the timeout


def test_ip_literals_skip_the_resolver_and_keep_a_scope() -> None:
    """agent/probes/base.literal, shared by tcp and icmp: which targets need DNS at all."""
    from agent.probes.base import ResolveError, literal

    assert literal("127.0.0.1") == (socket.AF_INET, "127.0.0.1")
    assert literal("::0001") == (socket.AF_INET6, "::1")
    assert literal("fe80::1%eth0") == (socket.AF_INET6, "fe80::1%eth0")
    assert literal("camera7.local") is None
    with pytest.raises(ResolveError, match=r"^10\.0\.0\.1 is not an ipv6 address$"):
        literal("10.0.0.1", socket.AF_INET6)


def test_bad_targets_are_named() -> None:
    for target, msg in (("camera7", "must be HOST:PORT (IPv6 as [ADDR]:PORT)"),
                        ("camera7:0", "port '0' must be 1..65535"),
                        ("camera7:http", "port 'http' must be 1..65535"),
                        ("::1:554", "an IPv6 address goes in brackets: [ADDR]:PORT")):
        with pytest.raises(ConfigErrors) as e:
            cfg(target=target)
        assert [f"{x.key}: {x.message}" for x in e.value.errors] == [f"target: {msg}"], target


async def _cli(*args: str) -> tuple[int, bytes, bytes]:
    p = await asyncio.create_subprocess_exec(str(BIN / "mogli-agent"), "probe", *args,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await p.communicate()
    assert p.returncode is not None
    return p.returncode, out, err


def test_cli_ad_hoc_tcp_probe(certs: dict[str, Path]) -> None:
    async def go() -> None:
        async with listener() as port:
            rc, out, _ = await _cli("tcp", f"127.0.0.1:{port}", "--json")
            assert rc == 0
            (r,) = json.loads(out)["results"]
            assert (r["kind"], r["success"], r["address"]) == ("tcp", True, "127.0.0.1"), r
        async with listener(ctx=_server_ctx(certs)) as port:
            rc, out, _ = await _cli("tcp", f"127.0.0.1:{port}", "--tls", "--json")
            (r,) = json.loads(out)["results"]
            assert (rc, r["success"], r["reason"]) == (1, False, "tls"), r
            rc, out, _ = await _cli("tcp", f"127.0.0.1:{port}", "--tls", "--insecure", "--json")
            (r,) = json.loads(out)["results"]
            assert (rc, r["success"]) == (0, True) and 29 < r["cert_days_left"] <= 30, r
        rc, out, _ = await _cli("tcp", f"127.0.0.1:{free_port()}")
        assert rc == 1 and b"refused" in out
        rc, _, err = await _cli("icmp", "127.0.0.1", "--tls")
        assert rc == 2 and b"tls: unknown key" in err

    asyncio.run(go())
