"""Sans-io RTSP, auth, SDP and RTP statistics, fed byte fixtures (whole, split, truncated, garbage)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.rtsp.protocol import (
    Authenticator,
    AuthError,
    Interleaved,
    Response,
    ResponseParser,
    RtspProtocolError,
    build_request,
    digest_response,
    parse_challenges,
)
from agent.rtsp.rtp import RtpStats, parse_rtp
from agent.rtsp.sdp import CODECS, SdpError, parse_sdp, resolve_control

# ---------------------------------------------------------------------------------------- requests


def test_request_has_request_line_cseq_and_headers_in_order() -> None:
    b = build_request("SETUP", "rtsp://cam/live/track1", 3,
                      [("User-Agent", "mogli-agent/1"), ("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1"),
                       ("Session", "abc")])
    assert b == (b"SETUP rtsp://cam/live/track1 RTSP/1.0\r\nCSeq: 3\r\nUser-Agent: mogli-agent/1\r\n"
                 b"Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\nSession: abc\r\n\r\n")


def test_request_refuses_header_injection() -> None:
    with pytest.raises(ValueError):
        build_request("OPTIONS", "rtsp://cam/", 1, [("X", "a\r\nEvil: 1")])
    with pytest.raises(ValueError):
        build_request("OPTIONS", "rtsp://cam/ x", 1)


# ---------------------------------------------------------------------------------------- responses
SDP_BODY = b"v=0\r\nm=video 0 RTP/AVP 96\r\n"
DESCRIBE_OK = (
    b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Type: application/sdp\r\n"
    b"Content-Base: rtsp://127.0.0.1:8554/cam/\r\nContent-Length: 27\r\n\r\n" + SDP_BODY
)
assert len(SDP_BODY) == 27
RTP_PKT = bytes([0x80, 0xE0, 0x00, 0x01]) + b"\x00\x00\x00\x10" + b"\x00\x00\x00\x2a" + b"payload"
FRAME = b"$\x00" + struct.pack(">H", len(RTP_PKT)) + RTP_PKT
PLAY_OK = b"RTSP/1.0 200 OK\r\nCSeq: 5\r\nSession: 1234ABCD;timeout=60\r\nRTP-Info: url=x\r\n\r\n"
STREAM = PLAY_OK + FRAME + b"$\x01\x00\x02hi" + FRAME + b"RTSP/1.0 200 OK\r\nCSeq: 6\r\n\r\n"


def test_response_with_body_parsed_whole() -> None:
    (r,) = ResponseParser().feed(DESCRIBE_OK)
    assert isinstance(r, Response)
    assert (r.status, r.reason, r.cseq) == (200, "OK", 2)
    assert r.header("content-base") == "rtsp://127.0.0.1:8554/cam/"
    assert r.body == b"v=0\r\nm=video 0 RTP/AVP 96\r\n"


def test_interleaved_frames_mixed_with_responses_in_order() -> None:
    events = ResponseParser().feed(STREAM)
    assert [type(e).__name__ for e in events] == ["Response", "Interleaved", "Interleaved", "Interleaved",
                                                   "Response"]
    assert isinstance(events[0], Response) and events[0].session == "1234ABCD"
    assert events[1] == Interleaved(0, RTP_PKT)
    assert events[2] == Interleaved(1, b"hi")
    assert isinstance(events[4], Response) and events[4].cseq == 6


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_same_events_whatever_the_chunking(chunk: int) -> None:
    p = ResponseParser()
    events = []
    for i in range(0, len(STREAM), chunk):
        events += p.feed(STREAM[i:i + chunk])
    assert events == ResponseParser().feed(STREAM)
    assert p.buffered == 0


def test_truncated_input_yields_nothing_until_complete() -> None:
    p = ResponseParser()
    assert p.feed(DESCRIBE_OK[:-5]) == []  # body incomplete
    assert p.feed(b"") == []
    (r,) = p.feed(DESCRIBE_OK[-5:])
    assert isinstance(r, Response) and r.body.endswith(b"96\r\n")
    p2 = ResponseParser()
    assert p2.feed(FRAME[:3]) == []  # $ header incomplete
    assert p2.feed(FRAME[3:10]) == []
    assert p2.feed(FRAME[10:]) == [Interleaved(0, RTP_PKT)]


@pytest.mark.parametrize("garbage", [
    b"HTTP/1.1 200 OK\r\n\r\n",  # not RTSP
    b"\x16\x03\x01\x02\x00\x01\x00",  # a TLS hello
    b"RTSP/1.0 2OO OK\r\n\r\n",  # bad status code
    b"RTSP/1.0 200 OK\r\nno colon here\r\n\r\n",  # bad header line
    b"RTSP/1.0 200 OK\r\nContent-Length: -3\r\n\r\n",  # bad length
    b"RTSP/1.0 200 OK\r\nContent-Length: 99999999999\r\n\r\n",  # body over the limit
    PLAY_OK + b"GARBAGE",  # garbage after a good response
])
def test_garbage_is_a_protocol_error(garbage: bytes) -> None:
    with pytest.raises(RtspProtocolError):
        ResponseParser().feed(garbage)


def test_endless_header_is_refused_not_buffered_forever() -> None:
    p = ResponseParser(max_header_bytes=1000)
    p.feed(b"RTSP/1.0 200 OK\r\n")
    with pytest.raises(RtspProtocolError, match="longer than 1000"):
        for _ in range(100):
            p.feed(b"X-Pad: " + b"a" * 50 + b"\r\n")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_parser(data: bytes) -> None:
    try:
        events = ResponseParser().feed(data)
    except RtspProtocolError:
        return
    assert all(isinstance(e, Response | Interleaved) for e in events)


# ---------------------------------------------------------------------------------------- auth
def test_digest_matches_rfc2617_worked_example() -> None:
    # RFC 2617 section 3.5
    assert digest_response(
        username="Mufasa", password="Circle Of Life", realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", method="GET", uri="/dir/index.html",
        qop="auth", nc=1, cnonce="0a4f113b",
    ) == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize(("algorithm", "expected"), [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_digest_matches_rfc7616_examples(algorithm: str, expected: str) -> None:
    # RFC 7616 section 3.9.1
    assert digest_response(
        username="Mufasa", password="Circle of Life", realm="http-auth@example.org",
        nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", method="GET", uri="/dir/index.html",
        qop="auth", nc=1, cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", algorithm=algorithm,
    ) == expected


def test_digest_without_qop_is_rfc2069_form() -> None:
    import hashlib

    def md5(s: str) -> str:
        return hashlib.md5(s.encode()).hexdigest()

    ha1, ha2 = md5("u:GStreamer RTSP Server:p"), md5("DESCRIBE:rtsp://h/cam")
    assert digest_response(username="u", password="p", realm="GStreamer RTSP Server", nonce="79febd95",
                           method="DESCRIBE", uri="rtsp://h/cam") == md5(f"{ha1}:79febd95:{ha2}")


def test_challenges_several_in_one_header_with_quoted_commas() -> None:
    cs = parse_challenges(['Digest realm="a, \\"quoted\\" realm", nonce="n1", qop="auth,auth-int", '
                           'algorithm=MD5, Basic realm="b"', "Negotiate abc123=="])
    assert [c.scheme for c in cs] == ["digest", "basic", "negotiate"]
    assert cs[0].params == {"realm": 'a, "quoted" realm', "nonce": "n1", "qop": "auth,auth-int", "algorithm": "MD5"}
    assert cs[1].params == {"realm": "b"}
    assert cs[2].token68 == "abc123=="


@pytest.mark.parametrize("junk", ['Digest realm="unterminated', "=====", ",,,", "", 'Digest realm=a b c, nonce=x'])
def test_challenge_junk_does_not_crash(junk: str) -> None:
    for c in parse_challenges([junk]):
        assert c.scheme


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='Digest Basic realm=nonce"\\,= \tabc123', max_size=80))
def test_random_challenge_text_terminates_without_errors(text: str) -> None:
    for c in parse_challenges([text]):
        assert c.scheme and c.scheme == c.scheme.lower()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_sdp_is_parsed_or_sdp_error(data: bytes) -> None:
    try:
        sd = parse_sdp(b"v=0\r\n" + data, "rtsp://h/")
    except SdpError:
        return
    for m in sd.media:  # bounded labels, usable URLs
        assert m.codec in {*CODECS.values(), "other", "unknown"} and m.control


def _401(*challenges: str) -> Response:
    return Response("RTSP/1.0", 401, "Unauthorized", (("CSeq", "1"), *(("WWW-Authenticate", c) for c in challenges)))


def test_authenticator_prefers_digest_and_counts_nonces() -> None:
    a = Authenticator("Mufasa", "Circle Of Life", cnonce=lambda: "0a4f113b")
    assert a.authorization("OPTIONS", "rtsp://h/") is None  # nothing before a challenge
    assert a.challenge(_401('Basic realm="x"', 'Digest realm="testrealm@host.com", '
                            'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", qop="auth,auth-int", opaque="5ccc"'))
    h = a.authorization("GET", "/dir/index.html")
    assert h is not None and h.startswith("Digest ")
    assert 'response="6629fae49393a05397450978507c4ef1"' in h
    assert "nc=00000001" in h and 'cnonce="0a4f113b"' in h and "qop=auth," in h and 'opaque="5ccc"' in h
    h2 = a.authorization("GET", "/dir/index.html")
    assert h2 is not None and "nc=00000002" in h2
    assert "Circle" not in repr(a)


def test_authenticator_second_401_means_wrong_password_but_stale_retries() -> None:
    a = Authenticator("u", "p")
    assert a.challenge(_401('Digest realm="r", nonce="n1"')) is True
    assert a.challenge(_401('Digest realm="r", nonce="n2"')) is False  # wrong credentials
    assert a.challenge(_401('Digest realm="r", nonce="n3", stale=TRUE')) is True  # only the nonce expired
    h = a.authorization("DESCRIBE", "rtsp://h/cam")
    assert h is not None and 'nonce="n3"' in h and "qop" not in h


def test_authenticator_basic() -> None:
    a = Authenticator("Aladdin", "open sesame")
    a.challenge(_401('Basic realm="cam"'))
    assert a.authorization("DESCRIBE", "rtsp://h/") == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="


def test_authenticator_without_supported_scheme() -> None:
    with pytest.raises(AuthError, match="negotiate"):
        Authenticator("u", "p").challenge(_401("Negotiate"))


# ---------------------------------------------------------------------------------------- SDP
GST_SDP = (
    b"v=0\r\no=- 1622930402 1 IN IP4 127.0.0.1\r\ns=Session streamed with GStreamer\r\nt=0 0\r\n"
    b"a=control:*\r\na=range:npt=now-\r\nm=video 0 RTP/AVP 96\r\nc=IN IP4 0.0.0.0\r\nb=AS:2097\r\n"
    b"a=rtpmap:96 H264/90000\r\na=framerate:25\r\na=fmtp:96 packetization-mode=1;profile-level-id=42c015\r\n"
    b"a=control:stream=0\r\n"
)
CAMERA_SDP = (
    "v=0\no=- 0 0 IN IP4 10.0.0.1\ns=cam\nt=0 0\na=control:rtsp://10.0.0.1/live\na=framerate:12.5\n"
    "m=video 0 RTP/AVP 26\na=control:rtsp://10.0.0.1/live/video\n"
    "m=audio 0 RTP/AVP 0\na=control:trackID=2\n"
    "m=audio 0 RTP/AVP 97\na=rtpmap:97 MPEG4-GENERIC/16000/2\na=control:trackID=3\n"
    "m=video 0 RTP/AVP 98\na=rtpmap:98 H265/90000\na=x-framerate:30\n"
    "m=application 0 RTP/AVP 107\na=rtpmap:107 vnd.onvif.metadata/90000\n"
)


def test_sdp_of_gstreamer_camera() -> None:
    s = parse_sdp(GST_SDP, "rtsp://127.0.0.1:8554/cam/")
    (m,) = s.media
    assert (m.kind, m.codec, m.payload_type, m.clock_rate, m.framerate) == ("video", "H264", 96, 90000, 25.0)
    assert m.control == "rtsp://127.0.0.1:8554/cam/stream=0"
    assert s.control == "rtsp://127.0.0.1:8554/cam/"
    assert "packetization-mode=1" in m.fmtp


def test_sdp_static_types_audio_absolute_controls_and_session_framerate() -> None:
    s = parse_sdp(CAMERA_SDP, "rtsp://10.0.0.1/live")
    got = [(m.kind, m.codec, m.clock_rate, m.channels, m.framerate, m.control) for m in s.media]
    assert got == [
        ("video", "MJPEG", 90000, 0, 12.5, "rtsp://10.0.0.1/live/video"),
        ("audio", "PCMU", 8000, 1, 12.5, "rtsp://10.0.0.1/live/trackID=2"),
        ("audio", "AAC", 16000, 2, 12.5, "rtsp://10.0.0.1/live/trackID=3"),
        ("video", "H265", 90000, 1, 30.0, "rtsp://10.0.0.1/live"),
        ("application", "other", 90000, 1, 12.5, "rtsp://10.0.0.1/live"),
    ]
    assert s.control == "rtsp://10.0.0.1/live"
    assert s.first("video") == s.media[0]


@pytest.mark.parametrize(("base", "control", "expected"), [
    ("rtsp://h/cam/", "stream=0", "rtsp://h/cam/stream=0"),
    ("rtsp://h/cam", "stream=0", "rtsp://h/cam/stream=0"),  # base without slash: ffmpeg/live555 behaviour
    ("rtsp://h:554/a/b/", "/other", "rtsp://h:554/other"),
    ("rtsp://h/cam/", "rtsp://x/y", "rtsp://x/y"),
    ("rtsp://h/cam/", "*", "rtsp://h/cam/"),
])
def test_control_url_resolution(base: str, control: str, expected: str) -> None:
    assert resolve_control(base, control) == expected


@pytest.mark.parametrize("bad", [
    b"", b"garbage", b"<html>401</html>", b"v=0\r\ns=no media\r\n", b"v=0\r\nm=video zero RTP/AVP 96\r\n",
    b"v=0\r\nm=video 0 RTP/AVP 300\r\n", b"v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264\r\n",
    GST_SDP[:40] + b"\r\nthis is not sdp\r\n",
])
def test_bad_sdp(bad: bytes) -> None:
    with pytest.raises(SdpError):
        parse_sdp(bad, "rtsp://h/")


def test_truncated_sdp_keeps_what_is_complete() -> None:
    # a body cut inside the rtpmap line: the media is known, the codec is not (dynamic type, no rtpmap)
    s = parse_sdp(GST_SDP[:GST_SDP.index(b"a=rtpmap")], "rtsp://h/")
    assert s.media[0].codec == "unknown" and s.media[0].clock_rate == 0


# ---------------------------------------------------------------------------------------- RTP
def rtp(seq: int, ts: int, marker: bool = False, pt: int = 96, ssrc: int = 7, payload: bytes = b"x" * 100) -> bytes:
    return struct.pack(">BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def test_rtp_header_with_csrc_extension_and_padding() -> None:
    pkt = (bytes([0xB1, 0x60]) + b"\x00\x05" + b"\x00" * 8 + b"CSRC" + b"\xbe\xde\x00\x01" + b"EXT1"
           + b"pay" + b"\x00\x02")
    h = parse_rtp(pkt)
    assert h is not None and (h.payload_type, h.seq, h.marker, h.payload_len) == (96, 5, False, 3)
    assert parse_rtp(b"\x80\x60\x00") is None  # truncated
    assert parse_rtp(b"\x40" + b"\x00" * 20) is None  # version 1
    assert parse_rtp(bytes([0x90, 0x60]) + b"\x00" * 10 + b"\x00\x00\x00\xff") is None  # extension past the end


def test_rtp_stats_loss_across_sequence_wrap_frames_and_fps() -> None:
    s = RtpStats(90000, payload_type=96)
    seqs = [65530 + i for i in range(12)]  # wraps at 65536
    lost = {65533, 65537}
    t = 100.0
    for i, seq in enumerate(seqs):
        if seq in lost:
            continue
        s.add(rtp(seq, 3600 * (i // 2), marker=i % 2 == 1), t + 0.02 * i)
    assert s.expected == 12 and s.packets == 10 and s.lost == 2
    assert s.frames == 6 - 2  # markers at i = 1, 3, ..., 11; those of 65533 and 65537 were lost
    assert s.add(rtp(1, 0, pt=0), t) is None and s.add(b"junk", t) is None  # wrong payload type, garbage
    assert s.packets == 10


def test_rtp_stats_fps_bitrate_and_jitter_of_a_steady_stream() -> None:
    s = RtpStats(90000)
    for i in range(250):  # 25 fps, 2 packets per frame, perfectly paced: no jitter
        s.add(rtp(i, 3600 * (i // 2), marker=i % 2 == 1), 10.0 + 0.04 * (i // 2))
    assert s.frames_per_second == pytest.approx(25.0)
    assert s.jitter_seconds == pytest.approx(0.0, abs=1e-9)
    assert s.bits_per_second(until=15.0) == pytest.approx(250 * 112 * 8 / 5.0)


def test_rtp_jitter_rfc3550_a8() -> None:
    s = RtpStats(8000)
    # transit differences 0.01 s = 80 units every other packet: J converges towards 80
    for i in range(2000):
        s.add(rtp(i, 160 * i, pt=0), 0.02 * i + (0.01 if i % 2 else 0.0))
    assert s.jitter_units == pytest.approx(80, rel=0.01)
    assert s.jitter_seconds == pytest.approx(0.01, rel=0.01)
    one = RtpStats(8000)
    one.add(rtp(0, 0, pt=0), 0.0)
    one.add(rtp(1, 160, pt=0), 0.030)  # 10 ms late: D = 80 units, J = 80/16
    assert one.jitter_units == pytest.approx(5.0)


def test_rtp_duplicates_make_loss_negative_like_rfc3550() -> None:
    s = RtpStats(90000)
    for seq in (1, 2, 2, 3):
        s.add(rtp(seq, 0), 0.0)
    assert (s.expected, s.packets, s.lost) == (3, 4, -1)


# ---------------------------------------------------------------------------------------- camera guard
def test_camera_guard_backoff_doubles_with_jitter_caps_and_resets() -> None:
    import random

    from agent.probes.rtsp import CameraGuard

    g = CameraGuard(rng=random.Random(1))
    delays = []
    for _ in range(8):
        g.failed(100.0, "refused", base=60, cap=900)
        delays.append(g.backoff)
        assert g.not_before == 100.0 + g.backoff
    bounds = [min(900, 60 * 2**n) for n in range(8)]
    assert all(0.5 * b <= d <= b for d, b in zip(delays, bounds, strict=True)), delays
    assert len(set(delays)) == len(delays)  # jittered: two agents after one outage do not retry in step
    g.succeeded()
    assert (g.failures, g.backoff) == (0, 0.0) and g.not_before < 0


# ---------------------------------------------------------------------------------------- config
def test_example_yml_rtsp_block_loads_once_uncommented(tmp_path: Path) -> None:
    """The commented rtsp block in agent/example.yml is valid config with the documented defaults."""
    from helpers import ROOT

    from agent import config as agent_config

    text = (ROOT / "agent" / "example.yml").read_text()
    start = text.index("  # rtsp:\n")
    block = []
    for line in text[start:].splitlines():
        if not line.startswith("  #"):
            break
        block.append("  " + line[4:])
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    body = "\n".join(block).replace("/etc/mogli-agent/cam-buehne-links.pw", str(pw))
    cfg = agent_config.loads("node: n1\nsite: s1\nprobes:\n" + body + "\n")
    (cam,) = cfg.probes.rtsp
    assert (cam.name, cam.interval, cam.timeout, cam.play_seconds, cam.min_session_gap, cam.backoff_max) == (
        "cam-buehne-links", 60, 10, 3, 5, 900)
    assert "secret" not in repr(cam)
    defaults = agent_config.loads("node: n1\nsite: s1\nprobes: {rtsp: [{target: 'rtsp://h/x'}]}\n").probes.rtsp[0]
    assert (defaults.interval, defaults.timeout, defaults.play_seconds, defaults.min_session_gap,
            defaults.backoff_base, defaults.backoff_max) == (60, 10, 0, 5, 0, 900)
