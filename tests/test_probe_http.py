"""HTTP probe against real aiohttp servers on 127.0.0.1 (plain and TLS with a self-signed cert from openssl)."""

from __future__ import annotations

import asyncio
import calendar
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import BIN, drained_values, free_port, make_certs, openssl_not_after
from hypothesis import given
from hypothesis import strategies as st

from agent.confload import load_text
from agent.probes.http import HttpConfig
from agent.probes.tls import cert_not_after
from agent.recorder import Recorder
from agent.runner import Outcome, run_probe

PAGE = b"<html><title>camera 7</title>status: streaming</html>"


def _app() -> web.Application:
    async def index(_r: web.Request) -> web.Response:
        return web.Response(body=PAGE, content_type="text/html")

    async def slow(_r: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response(text="late")

    async def missing(_r: web.Request) -> web.Response:
        return web.Response(status=503, text="maintenance")

    async def moved(_r: web.Request) -> web.Response:
        raise web.HTTPFound("/")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/slow", slow)
    app.router.add_get("/down", missing)
    app.router.add_get("/moved", moved)
    return app


@asynccontextmanager
async def server(ctx: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    runner = web.AppRunner(_app(), shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    try:
        yield port
    finally:
        await runner.cleanup()


def cfg(**kw: Any) -> HttpConfig:
    return load_text(json.dumps(kw), HttpConfig, "<test>")


async def probe(c: HttpConfig, rec: Recorder | None = None) -> Outcome:
    return await run_probe("http", c, rec)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _der(crt: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(crt.read_text())


def test_plain_http_status_length_phases_and_body_pattern() -> None:
    async def go() -> None:
        async with server() as port:
            rec = Recorder()
            o = await probe(cfg(target=f"http://localhost:{port}/", body_pattern=r"status: stream\w+"), rec)
            assert o.ok, o
            v = drained_values(rec)
            assert v[("mogli_http_status_code", "")] == 200
            assert v[("mogli_http_content_length_bytes", "")] == len(PAGE)
            assert {p for n, p in v if n == "mogli_probe_phase_seconds"} == {"resolve", "connect", "first_byte"}
            assert ("mogli_tls_cert_expiry_timestamp_seconds", "") not in v
            # the wrong page: reason body, and the status is still reported
            o = await probe(cfg(target=f"http://127.0.0.1:{port}/", body_pattern="recording"), rec)
            assert (o.ok, o.reason) == (False, "body")
            v = drained_values(rec)
            assert v[("mogli_probe_failures_total", "body")] == 1 and v[("mogli_http_status_code", "")] == 200
            assert ("mogli_probe_phase_seconds", "resolve") not in v  # an IP literal needs no resolving
            # HEAD: no body read, length from Content-Length
            o = await probe(cfg(target=f"http://127.0.0.1:{port}/", method="HEAD"), rec)
            assert o.ok and drained_values(rec)[("mogli_http_content_length_bytes", "")] == len(PAGE)

    asyncio.run(go())


def test_unexpected_status_redirects_and_refused() -> None:
    async def go() -> None:
        async with server() as port:
            o = await probe(cfg(target=f"http://127.0.0.1:{port}/down"))
            assert (o.ok, o.reason, o.detail["status"]) == (False, "status", 503)
            assert (await probe(cfg(target=f"http://127.0.0.1:{port}/down", valid_status=[503]))).ok
            o = await probe(cfg(target=f"http://127.0.0.1:{port}/moved"))
            assert o.ok and o.detail["status"] == 200 and o.detail["bytes"] == len(PAGE)
            o = await probe(cfg(target=f"http://127.0.0.1:{port}/moved", follow_redirects=False))
            assert (o.ok, o.reason, o.detail["status"]) == (False, "status", 302)
        o = await probe(cfg(target=f"http://127.0.0.1:{port}/"))  # server gone
        assert (o.ok, o.reason) == (False, "refused")

    asyncio.run(go())


def test_slow_server_times_out() -> None:
    async def go() -> None:
        async with server() as port:
            rec = Recorder()
            o = await probe(cfg(target=f"http://127.0.0.1:{port}/slow", timeout=0.3), rec)
            assert (o.ok, o.reason) == (False, "timeout")
            assert 0.3 <= o.duration < 2.5
            v = drained_values(rec)
            assert v[("mogli_probe_failures_total", "timeout")] == 1
            # the phases that completed are still reported: the server answered the connect, then stalled
            assert ("mogli_probe_phase_seconds", "connect") in v
            assert ("mogli_probe_phase_seconds", "first_byte") not in v

    asyncio.run(go())


def test_https_verify_ca_file_tls_phase_and_cert_expiry(certs: dict[str, Path]) -> None:
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(certs["short"], certs["short.key"])

    async def go() -> None:
        async with server(sctx) as port:
            url = f"https://localhost:{port}/"
            o = await probe(cfg(target=url))  # self-signed, not in the system CAs
            assert (o.ok, o.reason) == (False, "tls"), o
            o = await probe(cfg(target=url, ca_file="/nonexistent/ca.pem"))
            assert (o.ok, o.reason) == (False, "tls") and "ca_file /nonexistent/ca.pem" in str(o.detail["error"])
            rec = Recorder()
            o = await probe(cfg(target=url, ca_file=str(certs["short"])), rec)
            assert o.ok, o
            v = drained_values(rec)
            assert v[("mogli_tls_cert_expiry_timestamp_seconds", "")] == openssl_not_after(certs["short"])
            assert {p for n, p in v if n == "mogli_probe_phase_seconds"} == {"resolve", "connect", "tls",
                                                                            "first_byte"}
            assert 29 < float(str(o.detail["cert_days_left"])) <= 30
            # verification off: still succeeds and still reports the expiry (from the DER certificate)
            o = await probe(cfg(target=f"https://127.0.0.1:{port}/", tls_verify=False), rec)
            assert o.ok and drained_values(rec)[("mogli_tls_cert_expiry_timestamp_seconds", "")] == openssl_not_after(
                certs["short"])
            # the same from the command line: refused without --insecure, reported with it
            for flags, ok in (((), False), (("--insecure",), True)):
                p = await asyncio.create_subprocess_exec(str(BIN / "mogli-agent"), "probe", "http", url, "--json",
                                                         *flags, stdout=asyncio.subprocess.PIPE)
                out, _ = await p.communicate()
                (r,) = json.loads(out)["results"]
                assert (p.returncode, r["success"]) == (0 if ok else 1, ok), r
                assert ok == ("cert_days_left" in r), r
            # plain HTTP to a TLS port: the server drops us, a protocol failure
            o = await probe(cfg(target=f"http://127.0.0.1:{port}/"))
            assert not o.ok and o.reason == "protocol", o

    asyncio.run(go())


def test_cert_not_after_utctime_and_generalizedtime(certs: dict[str, Path]) -> None:
    for name in ("short", "long"):
        assert cert_not_after(_der(certs[name])) == openssl_not_after(certs[name])
    assert openssl_not_after(certs["long"]) > calendar.timegm((2050, 1, 1, 0, 0, 0))


def test_cert_parser_rejects_truncated_and_garbage(certs: dict[str, Path]) -> None:
    der = _der(certs["short"])
    for cut in (0, 1, 5, 40, len(der) // 2):
        with pytest.raises(ValueError):
            cert_not_after(der[:cut])
    with pytest.raises(ValueError):
        cert_not_after(b"\x02\x01\x00")


@given(st.binary(max_size=300))
def test_cert_parser_never_crashes_otherwise(data: bytes) -> None:
    with suppress(ValueError):
        cert_not_after(data)


def test_bad_config_values_are_named() -> None:
    from agent.confload import ConfigErrors

    with pytest.raises(ConfigErrors) as e:
        cfg(target="ftp://x/", body_pattern="(", valid_status=[700], method="POST")
    msgs = {f"{x.key}: {x.message}" for x in e.value.errors}
    assert msgs == {"target: must be an http:// or https:// URL",
                    "method: must be one of GET, HEAD; got 'POST'",
                    "valid_status: status codes must be 100..599, got [700]",
                    "body_pattern: not a valid regular expression: missing ), unterminated subpattern at position 0"}


def test_cli_ad_hoc_http_probe() -> None:
    async def go() -> None:
        async with server() as port:
            p = await asyncio.create_subprocess_exec(str(BIN / "mogli-agent"), "probe", "http",
                                                     f"http://127.0.0.1:{port}/", "--json",
                                                     stdout=asyncio.subprocess.PIPE)
            out, _ = await p.communicate()
            assert p.returncode == 0
            (r,) = json.loads(out)["results"]
            assert (r["kind"], r["success"], r["status"], r["bytes"]) == ("http", True, 200, len(PAGE))
            p = await asyncio.create_subprocess_exec(str(BIN / "mogli-agent"), "probe", "http", "nonsense",
                                                     stderr=asyncio.subprocess.PIPE)
            _, err = await p.communicate()
            assert p.returncode == 2 and b"target: must be an http:// or https:// URL" in err

    asyncio.run(go())
