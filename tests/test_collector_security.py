"""TLS with client certificates, and the per-node rate limit, on the real collector."""

from __future__ import annotations

import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from helpers import (
    free_port,
    http_post,
    sample_value,
    start_agent,
    start_collector,
    tool,
    wait_until,
    write_agent_config,
    write_collector_config,
)

from agent import wire

TOKENS = {"stiftsplatz": "tok-stiftsplatz-0123456789abcdef"}


def _pki(d: Path) -> dict[str, Path]:
    openssl = tool("openssl")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=mogli test CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        (d / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return {k: d / k for k in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def test_https_with_client_certificates(tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    port = free_port()
    cfg = write_collector_config(tmp_path, port, TOKENS, tls={
        "cert_file": str(pki["server.pem"]), "key_file": str(pki["server.key"]),
        "client_ca_file": str(pki["ca.pem"])})
    from helpers import Proc

    col = Proc([str(Path(__import__("sys").executable).parent / "mogli-collector"), "run", "-c", str(cfg)],
               tmp_path / "collector.log")
    agent = start_agent(tmp_path, write_agent_config(
        tmp_path, "stiftsplatz", TOKENS["stiftsplatz"], port,
        {"tcp": [{"target": f"127.0.0.1:{port}", "name": "collector", "interval": 0.5}]},
        collector={"url": f"https://127.0.0.1:{port}/api/v1/reports", "ca_file": str(pki["ca.pem"]),
                   "client_cert_file": str(pki["client.pem"]), "client_key_file": str(pki["client.key"])}))
    try:
        ctx = ssl.create_default_context(cafile=str(pki["ca.pem"]))
        ctx.load_cert_chain(str(pki["client.pem"]), str(pki["client.key"]))

        def metrics() -> str:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=ctx, timeout=5) as r:
                return r.read().decode()

        wait_until(lambda: sample_value(metrics(), "mogli_probe_success", target="collector") == 1, 20,
                   "the agent's report over mutual TLS")
        # without a client certificate the handshake is refused
        bare = ssl.create_default_context(cafile=str(pki["ca.pem"]))
        try:
            urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=bare, timeout=5)
            raise AssertionError("a client without certificate got in")
        except (ssl.SSLError, urllib.error.URLError, ConnectionResetError):
            pass
    finally:
        agent.stop()
        col.stop()
    assert "Traceback" not in agent.output()


def test_rate_limit_answers_429_per_node(tmp_path: Path) -> None:
    port = free_port()
    col = start_collector(tmp_path, port, write_collector_config(
        tmp_path, port, TOKENS, rate_limit={"per_second": 0.5, "burst": 3}))
    try:
        codes = []
        for seq in range(1, 7):
            body = wire.encode(wire.Report("stiftsplatz", "s", "abcdabcdabcdabcd", seq, 1_790_000_000.0, ()))
            codes.append(http_post(f"http://127.0.0.1:{port}/api/v1/reports", body, {
                "Content-Encoding": "gzip", "Authorization": f"Bearer {TOKENS['stiftsplatz']}"})[0])
        assert codes[:3] == [200, 200, 200] and set(codes[3:]) == {429}
    finally:
        col.stop()
