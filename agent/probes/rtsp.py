"""RTSP camera probe: OPTIONS + DESCRIBE (auth, SDP), optionally a short PLAY over TCP-interleaved RTP.

The protocol lives in agent/rtsp (sans-io); this module only moves bytes and keeps time.

Camera safety (cameras have few session slots; reconnect storms have taken cameras down):

* at most one session per camera (host:port) at a time, across all probes of this agent: a lock
  per camera, shared by every run in the agent's event loop;
* at least ``min_session_gap`` seconds between the end of one session and the start of the next;
* after a failure the camera is left alone for an exponential backoff with jitter
  (``backoff_base`` * 2^(failures-1), capped at ``backoff_max``, times a random factor in
  [0.5, 1]); runs that fall inside it fail at once with reason ``backoff`` without connecting,
  and ``mogli_rtsp_backoff_seconds`` shows the delay;
* a session that was set up is always torn down, also when the run times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from agent import __version__
from agent.confload import check
from agent.probes.base import ProbeError, ProbeResult, ProtocolError, reason_of, resolve
from agent.rtsp.protocol import (
    Authenticator,
    AuthError,
    Event,
    Interleaved,
    Response,
    ResponseParser,
    RtspProtocolError,
    build_request,
)
from agent.rtsp.rtp import RtpStats
from agent.rtsp.sdp import SdpError, SessionDescription, base_url, parse_sdp

USER_AGENT = f"mogli-agent/{__version__}"
TRANSPORT = "RTP/AVP/TCP;unicast;interleaved=0-1"


# ---------------------------------------------------------------------------------------- reasons
class Unauthorized(ProbeError):
    reason = "401"


class Forbidden(ProbeError):
    reason = "403"  # also what cameras answer when all session slots are taken


class NotFound(ProbeError):
    reason = "404"


class NotEnoughBandwidth(ProbeError):
    reason = "453"


class Unavailable(ProbeError):
    reason = "503"


class StatusError(ProbeError):
    reason = "status"  # any other non-2xx answer; mogli_rtsp_status_code has the code


class BadSdp(ProbeError):
    reason = "bad_sdp"


class NoMedia(ProbeError):
    reason = "no_media"  # PLAY answered 200 but no RTP frame arrived in play_seconds


class Backoff(ProbeError):
    reason = "backoff"  # skipped without connecting: the camera failed recently


class ConfigProblem(ProbeError):
    reason = "config"


_STATUS_ERRORS: dict[int, type[ProbeError]] = {
    401: Unauthorized, 403: Forbidden, 404: NotFound, 453: NotEnoughBandwidth, 503: Unavailable,
}


# ---------------------------------------------------------------------------------------- config
def _rtsp_url(v: str) -> str | None:
    u = urlsplit(v)
    if u.scheme != "rtsp":
        return "must be an rtsp:// URL"
    if u.username is not None or u.password is not None or "@" in u.netloc:
        return "must not contain credentials (URLs get logged): use username and password or password_file"
    try:
        port = u.port
    except ValueError:
        return "has a bad port"
    if not u.hostname:
        return "has no host"
    if port == 0:
        return "has a bad port"
    if any(c in v for c in " \r\n\t"):
        return "must not contain spaces"
    return None


@dataclass(frozen=True)
class RtspConfig:
    target: str = field(metadata=check(validate=_rtsp_url, doc="rtsp://HOST[:PORT]/PATH"))
    name: str = ""  # the camera's name: value of the `target` label; default: the URL
    interval: float = field(default=60.0, metadata=check(min=0.1, max=86400))
    timeout: float = field(default=10.0, metadata=check(min=0.1, max=300))
    username: str = ""
    password: str = field(default="", repr=False)
    password_file: str = ""  # file holding the password (mode 0600); instead of password
    play_seconds: float = field(default=0.0, metadata=check(min=0, max=60))
    min_session_gap: float = field(default=5.0, metadata=check(min=0, max=3600))
    backoff_base: float = field(default=0.0, metadata=check(min=0, max=86400))  # 0: the interval
    backoff_max: float = field(default=900.0, metadata=check(min=0, max=86400))

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        if self.password and self.password_file:
            errors.append(("password_file", "give password or password_file, not both"))
        if (self.password or self.password_file) and not self.username:
            errors.append(("username", "a password needs a username"))
        if self.password_file:
            try:
                Path(self.password_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                errors.append(("password_file", f"cannot read {self.password_file}: {getattr(e, 'strerror', e)}"))
        if self.play_seconds and self.timeout <= self.play_seconds + 1:
            errors.append(("timeout", f"must be longer than play_seconds + 1 ({self.play_seconds + 1:g}): "
                                      "the run also needs the requests before and after the PLAY"))
        return errors


def _password(cfg: RtspConfig) -> str:
    if not cfg.password_file:
        return cfg.password
    try:
        return Path(cfg.password_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigProblem(f"cannot read password_file {cfg.password_file}: {getattr(e, 'strerror', e)}") from None


# ---------------------------------------------------------------------------------------- camera guard
@dataclass
class CameraGuard:
    """Shared by all runs against one camera in one event loop."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_end: float = -math.inf
    failures: int = 0
    backoff: float = 0.0
    not_before: float = -math.inf
    last_reason: str = ""
    rng: random.Random = field(default_factory=random.Random)

    def failed(self, now: float, reason: str, base: float, cap: float) -> None:
        self.failures += 1
        self.last_reason = reason
        delay = min(cap, base * 2 ** min(self.failures - 1, 30))
        self.backoff = delay * self.rng.uniform(0.5, 1.0)
        self.not_before = now + self.backoff

    def succeeded(self) -> None:
        self.failures = 0
        self.backoff = 0.0
        self.not_before = -math.inf
        self.last_reason = ""


_GUARDS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], CameraGuard]] = (
    weakref.WeakKeyDictionary()
)


def camera_guard(host: str, port: int) -> CameraGuard:
    """The guard of one camera in the running event loop (made on first use)."""
    per_loop = _GUARDS.setdefault(asyncio.get_running_loop(), {})
    return per_loop.setdefault((host.lower(), port), CameraGuard())


def split_url(url: str) -> tuple[str, int]:
    u = urlsplit(url)
    return u.hostname or "", u.port or 554


# ---------------------------------------------------------------------------------------- the probe
async def run(cfg: RtspConfig, result: ProbeResult) -> None:
    host, port = split_url(cfg.target)
    loop = asyncio.get_running_loop()
    guard = camera_guard(host, port)

    def skip_if_backing_off() -> None:
        wait = guard.not_before - loop.time()
        if wait > 0:
            result.gauge("mogli_rtsp_backoff_seconds", guard.backoff)
            result.detail["backoff_s"] = round(guard.backoff, 3)
            raise Backoff(f"not connecting for {wait:.1f} s more: {guard.failures} failure(s) in a row, "
                          f"last {guard.last_reason}")

    skip_if_backing_off()
    password = _password(cfg)
    async with guard.lock:
        skip_if_backing_off()  # another probe of this camera may have failed while we waited
        gap = guard.last_end + cfg.min_session_gap - loop.time()
        if gap > 0:
            await asyncio.sleep(gap)
        try:
            await _session(cfg, host, port, password, result)
        except BaseException as e:  # also a timeout's cancellation: the camera did not answer in time
            reason = "timeout" if isinstance(e, asyncio.CancelledError) else reason_of(e)
            guard.failed(loop.time(), reason, cfg.backoff_base or cfg.interval, cfg.backoff_max)
            result.gauge("mogli_rtsp_backoff_seconds", guard.backoff)
            result.detail["backoff_s"] = round(guard.backoff, 3)
            raise
        else:
            guard.succeeded()
            result.gauge("mogli_rtsp_backoff_seconds", 0.0)
        finally:
            guard.last_end = loop.time()


class _Connection:
    """One RTSP connection: requests out, events in; interleaved RTP goes to ``stats``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, auth: Authenticator | None):
        self.reader = reader
        self.writer = writer
        self.auth = auth
        self.parser = ResponseParser()
        self.cseq = 0
        self.last_status = 0
        self.session = ""
        self.aggregate = ""
        self.stats: RtpStats | None = None
        self.rtp_channel = 0
        self._events: list[Event] = []

    def request_bytes(self, method: str, url: str, extra: list[tuple[str, str]]) -> bytes:
        self.cseq += 1
        headers = [("User-Agent", USER_AGENT), *extra]
        if self.session and method not in ("OPTIONS", "DESCRIBE", "SETUP"):
            headers.append(("Session", self.session))
        if self.auth is not None:
            value = self.auth.authorization(method, url)
            if value is not None:
                headers.append(("Authorization", value))
        return build_request(method, url, self.cseq, headers)

    async def read_more(self) -> None:
        data = await self.reader.read(65536)
        if not data:
            raise ProtocolError("the camera closed the connection")
        now = time.monotonic()
        try:
            events = self.parser.feed(data)
        except RtspProtocolError as e:
            raise ProtocolError(f"bad answer from the camera: {e}") from None
        for ev in events:
            if isinstance(ev, Interleaved):
                if self.stats is not None and ev.channel == self.rtp_channel:
                    self.stats.add(ev.data, now)
            else:
                self._events.append(ev)

    async def response(self, cseq: int) -> Response:
        while True:
            while self._events:
                ev = self._events.pop(0)
                if isinstance(ev, Response) and (ev.cseq == cseq or ev.cseq is None):
                    return ev
            await self.read_more()

    async def request(self, method: str, url: str, extra: list[tuple[str, str]] | None = None) -> Response:
        extra = extra or []
        for _ in range(3):  # first try, answer to the challenge, one stale nonce
            self.writer.write(self.request_bytes(method, url, extra))
            r = await self.response(self.cseq)
            self.last_status = r.status
            if r.status != 401 or self.auth is None:
                break
            try:
                retry = self.auth.challenge(r)
            except AuthError as e:
                raise Unauthorized(f"{method}: {e}") from None
            if not retry:
                break
        if 200 <= r.status < 300:
            return r
        if r.status == 401:
            why = "wrong username or password" if self.auth is not None else "the camera needs a username and password"
            raise Unauthorized(f"{method} {url}: 401 {r.reason} ({why})")
        cls = _STATUS_ERRORS.get(r.status, StatusError)
        raise cls(f"{method} {url}: {r.status} {r.reason}".rstrip())


_INTERLEAVED_RE = re.compile(r"interleaved=(\d+)(?:-(\d+))?")


async def _session(cfg: RtspConfig, host: str, port: int, password: str, result: ProbeResult) -> None:
    url = cfg.target
    t0 = time.monotonic()
    _, addr = await resolve(host, port)
    reader, writer = await asyncio.open_connection(addr, port)
    t1 = time.monotonic()
    result.gauge("mogli_probe_phase_seconds", t1 - t0, phase="connect")
    auth = Authenticator(cfg.username, password) if cfg.username else None
    conn = _Connection(reader, writer, auth)
    torn_down = False
    try:
        await conn.request("OPTIONS", url)
        r = await conn.request("DESCRIBE", url, [("Accept", "application/sdp")])
        t2 = time.monotonic()
        result.gauge("mogli_probe_phase_seconds", t2 - t1, phase="describe")
        if auth is not None:
            result.detail["auth"] = auth.scheme or "none"
        sdp = _sdp(r, url)
        media = sdp.first("video") or sdp.media[0]
        result.gauge("mogli_rtsp_stream_info", 1.0, codec=media.codec)
        result.detail.update(codec=media.codec, clock_rate=media.clock_rate, media=len(sdp.media))
        if media.framerate:
            result.detail["sdp_fps"] = media.framerate
        if cfg.play_seconds <= 0:
            return
        r = await conn.request("SETUP", media.control, [("Transport", TRANSPORT)])
        session = r.session
        if not session:
            raise ProtocolError("SETUP answer has no Session header")
        conn.session = session
        conn.aggregate = sdp.control
        m = _INTERLEAVED_RE.search(r.header("Transport") or "")
        conn.rtp_channel = int(m.group(1)) if m else 0
        stats = RtpStats(media.clock_rate, media.payload_type)
        conn.stats = stats
        t_play = time.monotonic()
        await conn.request("PLAY", sdp.control, [("Range", "npt=0.000-")])
        end = t_play + cfg.play_seconds
        while (left := end - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(conn.read_more(), left)
            except TimeoutError:
                break
        conn.stats = None
        _report_play(stats, t_play, end, result)
        with contextlib.suppress(ProbeError):  # the measurement is done; a rude TEARDOWN answer is not a failure
            await conn.request("TEARDOWN", sdp.control)
        torn_down = True
        if stats.frames == 0:
            raise NoMedia(f"no video frame in {cfg.play_seconds:g} s after PLAY ({stats.packets} RTP packets)")
    finally:
        if conn.last_status:
            result.gauge("mogli_rtsp_status_code", float(conn.last_status))
            result.detail["status"] = conn.last_status
        if conn.session and not torn_down:  # free the camera's slot even when we were cancelled
            with contextlib.suppress(Exception):
                writer.write(conn.request_bytes("TEARDOWN", conn.aggregate, []))
        writer.close()


def _sdp(r: Response, url: str) -> SessionDescription:
    ctype = (r.header("Content-Type") or "").split(";")[0].strip().lower()
    if ctype and ctype != "application/sdp":
        raise BadSdp(f"DESCRIBE answered {ctype}, not application/sdp")
    try:
        return parse_sdp(r.body, base_url(url, r.header("Content-Base"), r.header("Content-Location")))
    except SdpError as e:
        raise BadSdp(str(e)) from None


def _report_play(stats: RtpStats, t_play: float, end: float, result: ProbeResult) -> None:
    fps = stats.frames_per_second
    bps = stats.bits_per_second(until=end)
    result.gauge("mogli_rtsp_frames_per_second", fps)
    result.gauge("mogli_rtsp_bitrate_bytes_per_second", bps / 8)
    result.gauge("mogli_rtsp_jitter_seconds", stats.jitter_seconds)
    result.count("mogli_rtsp_rtp_packets_total", stats.packets)
    result.count("mogli_rtsp_rtp_lost_packets_total", max(0, stats.lost))
    result.detail.update(fps=round(fps, 2), bitrate_kbps=round(bps / 1000, 1), packets=stats.packets,
                         lost=stats.lost, jitter_ms=round(stats.jitter_seconds * 1000, 3))
    if stats.first_frame_time is not None:
        ff = stats.first_frame_time - t_play
        result.gauge("mogli_rtsp_first_frame_seconds", ff)
        result.detail["first_frame_s"] = round(ff, 4)
