"""Failure reasons and auth paths a GStreamer camera cannot be made to produce, against a scripted RTSP
server on loopback: slots full (403), 453, 503, 404, bad SDP, garbage, no media, stale Digest nonce,
Digest with qop=auth verified by the server, and TEARDOWN sent even when the run times out."""

from __future__ import annotations

import asyncio
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent.probes.rtsp import RtspConfig
from agent.rtsp.protocol import digest_response, parse_challenges
from agent.runner import Outcome, run_probe

SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=scripted\r\nt=0 0\r\na=control:*\r\n"
       b"m=video 0 RTP/AVP 96\r\na=rtpmap:96 H265/90000\r\na=framerate:12\r\na=control:track1\r\n")

Reply = Callable[[str, dict[str, str], int], bytes]


def resp(code: int, cseq: int, headers: str = "", body: bytes = b"", reason: str = "X") -> bytes:
    extra = f"Content-Length: {len(body)}\r\n" if body else ""
    return f"RTSP/1.0 {code} {reason}\r\nCSeq: {cseq}\r\n{headers}{extra}\r\n".encode() + body


def ok(method: str, h: dict[str, str], cseq: int) -> bytes:
    if method == "DESCRIBE":
        return resp(200, cseq, "Content-Type: application/sdp\r\nContent-Base: rtsp://127.0.0.1/cam/\r\n", SDP)
    if method == "SETUP":
        return resp(200, cseq, "Session: S1;timeout=60\r\nTransport: RTP/AVP/TCP;unicast;interleaved=4-5\r\n")
    return resp(200, cseq, "Session: S1\r\n" if method != "OPTIONS" else "")


@dataclass
class Scripted:
    replies: dict[str, Reply] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    after_play: Callable[[asyncio.StreamWriter], Any] | None = None
    close_after: str = ""  # hang up after answering this method

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, url, _ = lines[0].split(" ")
                h = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                self.requests.append((method, url, h))
                w.write(self.replies.get(method, ok)(method, h, int(h["cseq"])))
                await w.drain()
                if method == "PLAY" and self.after_play is not None:
                    await self.after_play(w)
                if method == self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()


def run(script: Scripted, **kw: Any) -> Outcome:
    async def main() -> Outcome:
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        args: dict[str, Any] = {"target": f"rtsp://127.0.0.1:{port}/cam", "name": "cam", "timeout": 3.0,
                                "min_session_gap": 0.0}
        args.update(kw)
        try:
            return await run_probe("rtsp", RtspConfig(**args))
        finally:
            await asyncio.sleep(0.05)  # let the server read what the probe sent last (TEARDOWN)
            server.close()

    return asyncio.run(main())


def status(code: int, reason: str = "X") -> Reply:
    return lambda m, h, cseq: resp(code, cseq, reason=reason)


@pytest.mark.parametrize(("method", "code", "reason"), [
    ("DESCRIBE", 403, "403"), ("DESCRIBE", 503, "503"), ("DESCRIBE", 404, "404"), ("SETUP", 453, "453"),
    ("PLAY", 454, "status"), ("OPTIONS", 500, "status"),
])
def test_status_codes_become_reasons(method: str, code: int, reason: str) -> None:
    s = Scripted({method: status(code)})
    o = run(s, play_seconds=0.2)
    assert (o.ok, o.reason, o.detail["status"]) == (False, reason, code)
    if method == "PLAY":  # a session existed: it is torn down
        assert s.requests[-1][0] == "TEARDOWN" and s.requests[-1][2]["session"] == "S1"


@pytest.mark.parametrize("body", [
    (b"text/html", b"<html>login</html>"), (b"application/sdp", b"v=0\r\ns=no media\r\n"),
    (b"application/sdp", b""),
])
def test_unusable_description_is_bad_sdp(body: tuple[bytes, bytes]) -> None:
    ctype, sdp = body
    s = Scripted({"DESCRIBE": lambda m, h, c: resp(200, c, f"Content-Type: {ctype.decode()}\r\n", sdp)})
    assert run(s).reason == "bad_sdp"


@pytest.mark.parametrize(("junk", "close", "reason"), [
    (b"HTTP/1.1 404 Not Found\r\n\r\n", "", "protocol"),
    (b"\x00\x01garbage", "", "protocol"),
    (b"RTSP/1.0 20", "OPTIONS", "protocol"),  # cut off: the camera hung up mid-answer
    (b"RTSP/1.0 20", "", "timeout"),  # cut off and the rest never comes
])
def test_garbage_or_truncated_answer(junk: bytes, close: str, reason: str) -> None:
    o = run(Scripted({"OPTIONS": lambda m, h, c: junk}, close_after=close), timeout=1.0)
    assert o.reason == reason


def test_describe_reports_codec_and_resolved_controls_and_play_uses_interleaved_channel() -> None:
    frames = []
    for i in range(20):
        pkt = struct.pack(">BBHII", 0x80, 0x80 | 96, i, 7500 * i, 99) + b"x" * 200
        frames.append(b"$\x04" + struct.pack(">H", len(pkt)) + pkt)  # the channel the server chose
        frames.append(b"$\x00\x00\x04junk")  # another channel: must be ignored

    async def send(w: asyncio.StreamWriter) -> None:
        for f in frames:
            w.write(f)
            await asyncio.sleep(0.01)

    s = Scripted(after_play=send)
    o = run(s, play_seconds=0.6)
    assert o.ok, o
    assert (o.detail["codec"], o.detail["sdp_fps"], o.detail["packets"], o.detail["lost"]) == ("H265", 12.0, 20, 0)
    methods = [(m, u) for m, u, _ in s.requests]
    assert methods == [("OPTIONS", s.requests[0][1]), ("DESCRIBE", s.requests[0][1]),
                       ("SETUP", "rtsp://127.0.0.1/cam/track1"), ("PLAY", "rtsp://127.0.0.1/cam/"),
                       ("TEARDOWN", "rtsp://127.0.0.1/cam/")]
    setup = s.requests[2][2]
    assert setup["transport"] == "RTP/AVP/TCP;unicast;interleaved=0-1"
    assert s.requests[3][2]["session"] == "S1" and s.requests[2][2]["user-agent"].startswith("mogli-agent/")
    assert [int(h["cseq"]) for _, _, h in s.requests] == [1, 2, 3, 4, 5]


def test_play_without_frames_is_no_media_and_still_torn_down() -> None:
    s = Scripted()
    o = run(s, play_seconds=0.3)
    assert o.reason == "no_media"
    assert s.requests[-1][0] == "TEARDOWN"


def test_timeout_during_play_still_sends_teardown() -> None:
    s = Scripted()
    o = run(s, play_seconds=5.0, timeout=0.5)  # the runner cancels the run in the middle of PLAY
    assert o.reason == "timeout"
    assert [m for m, _, _ in s.requests][-1] == "TEARDOWN"
    assert s.requests[-1][2]["session"] == "S1"


def _digest_server(password: str, *, qop: bool, stale_once: bool = False) -> Scripted:
    """Checks Digest answers like a camera does; optionally declares the first nonce stale."""
    state = {"nonce": 0, "stale_sent": False}

    def check(method: str, h: dict[str, str], cseq: int) -> bytes:
        auth = h.get("authorization", "")
        if auth.startswith("Digest "):
            (c,) = parse_challenges(["Digest " + auth[7:]])
            p = c.params
            expected = digest_response(
                username=p["username"], password=password, realm="cam", nonce=p["nonce"], method=method,
                uri=p["uri"], qop=p.get("qop", ""), nc=int(p.get("nc", "0"), 16), cnonce=p.get("cnonce", ""))
            good = p["response"] == expected and p["nonce"] == f"n{state['nonce']}"
            if good and stale_once and not state["stale_sent"]:
                state["stale_sent"] = True
                state["nonce"] += 1
                q1 = ', qop="auth"' if qop else ""
                return resp(401, cseq, f'WWW-Authenticate: Digest realm="cam", nonce="n{state["nonce"]}", '
                                       f"stale=true{q1}\r\n")
            if good:
                return ok(method, h, cseq)
        q = ', qop="auth,auth-int"' if qop else ""
        return resp(401, cseq, f'WWW-Authenticate: Basic realm="cam"\r\n'
                               f'WWW-Authenticate: Digest realm="cam", nonce="n{state["nonce"]}"{q}\r\n')

    return Scripted({"OPTIONS": check, "DESCRIBE": check})


@pytest.mark.parametrize("qop", [True, False])
def test_digest_accepted_by_a_verifying_server(qop: bool) -> None:
    s = _digest_server("pw", qop=qop)
    o = run(s, username="u", password="pw")
    assert o.ok, o
    last = s.requests[-1][2]["authorization"]
    assert last.startswith("Digest ") and ("qop=auth," in last) == qop
    if qop:
        assert re.search(r"nc=0000000[12]", last)


def test_stale_nonce_is_retried_with_the_new_nonce_not_reported_as_401() -> None:
    s = _digest_server("pw", qop=True, stale_once=True)
    o = run(s, username="u", password="pw")
    assert o.ok, o
    assert 'nonce="n1"' in s.requests[-1][2]["authorization"]


def test_wrong_digest_password_is_401_after_one_retry_only() -> None:
    s = _digest_server("pw", qop=True)
    o = run(s, username="u", password="nope")
    assert o.reason == "401"
    assert [m for m, _, _ in s.requests] == ["OPTIONS", "OPTIONS"]  # no password guessing loop
