"""Sans-io SDP (RFC 8866) for RTSP DESCRIBE answers: the media list a camera offers.

For each ``m=`` line: media type, payload type, codec (normalised to a small fixed set so the
``codec`` label stays bounded), clock rate (``a=rtpmap`` or the RFC 3551 static table), channels,
frame rate (``a=framerate``, session or media level) and the control URL resolved the way RTSP
clients do (RFC 2326 C.1.1: against Content-Base, else Content-Location, else the request URL).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urljoin


class SdpError(ValueError):
    """The description is not SDP we can use (no version line, no media, malformed m= line)."""


# RFC 3551 tables 4 and 5: payload type -> (encoding name, clock rate, channels)
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1), 3: ("GSM", 8000, 1), 4: ("G723", 8000, 1), 5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1), 7: ("LPC", 8000, 1), 8: ("PCMA", 8000, 1), 9: ("G722", 8000, 1),
    10: ("L16", 44100, 2), 11: ("L16", 44100, 1), 12: ("QCELP", 8000, 1), 13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1), 15: ("G728", 8000, 1), 16: ("DVI4", 11025, 1), 17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1), 25: ("CelB", 90000, 0), 26: ("JPEG", 90000, 0), 28: ("nv", 90000, 0),
    31: ("H261", 90000, 0), 32: ("MPV", 90000, 0), 33: ("MP2T", 90000, 0), 34: ("H263", 90000, 0),
}

# encoding name (upper case) -> codec label. Anything else becomes "other".
CODECS: dict[str, str] = {
    "H264": "H264", "H265": "H265", "HEVC": "H265", "JPEG": "MJPEG", "MJPEG": "MJPEG",
    "MP4V-ES": "MPEG4", "H263": "H263", "H263-1998": "H263", "H263-2000": "H263", "H261": "H261",
    "MPV": "MPEG2", "MP2T": "MP2T", "VP8": "VP8", "VP9": "VP9", "AV1": "AV1",
    "PCMU": "PCMU", "PCMA": "PCMA", "G722": "G722", "G726-16": "G726", "G726-24": "G726", "G726-32": "G726",
    "G726-40": "G726", "AAL2-G726-32": "G726", "G729": "G729", "L16": "L16", "OPUS": "OPUS",
    "MPEG4-GENERIC": "AAC", "MP4A-LATM": "AAC", "MPA": "MPA", "GSM": "GSM",
}


@dataclass(frozen=True)
class Media:
    kind: str  # video, audio, application, ...
    payload_type: int
    codec: str  # bounded label, see CODECS
    encoding: str  # as in the SDP (rtpmap or static table), e.g. "H264"
    clock_rate: int  # Hz; 0 when unknown
    channels: int
    framerate: float | None
    control: str  # absolute URL for SETUP
    fmtp: str = ""


@dataclass(frozen=True)
class SessionDescription:
    media: tuple[Media, ...]
    control: str  # aggregate control URL (for PLAY/TEARDOWN)
    name: str = ""

    def first(self, kind: str = "video") -> Media | None:
        return next((m for m in self.media if m.kind == kind), None)


_M_RE = re.compile(r"(\w+) (\d+)(?:/\d+)? ([\w/.-]+) (\d+(?: \d+)*)\s*")
_RTPMAP_RE = re.compile(r"(\d+) ([^/\s]+)/(\d+)(?:/(\d+))?\s*")


def base_url(request_url: str, content_base: str | None = None, content_location: str | None = None) -> str:
    return (content_base or content_location or request_url).strip()


def resolve_control(base: str, control: str) -> str:
    """An ``a=control`` value as an absolute URL. ``*`` means the base itself.

    A base without a trailing slash is treated as a directory, as ffmpeg and live555 do: many cameras
    send ``rtsp://cam/live`` with ``a=control:track1`` and expect ``rtsp://cam/live/track1``.
    """
    control = control.strip()
    if not control or control == "*":
        return base
    if re.match(r"(?i)rtsps?://", control):
        return control
    if not base.endswith("/"):
        base += "/"
    return urljoin(base, control)


def _framerate(v: str) -> float | None:
    try:
        f = float(v.strip())
    except ValueError:
        return None
    return f if 0 < f < 1000 else None


def parse_sdp(body: bytes | str, base: str) -> SessionDescription:
    """Parse an SDP body into its media list; ``base`` is the URL controls are resolved against."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    lines = [ln.strip() for ln in text.replace("\r\n", "\n").split("\n")]
    lines = [ln for ln in lines if ln]
    if not lines or lines[0] != "v=0":
        raise SdpError("not SDP: the first line is not v=0")
    session_attrs: list[str] = []
    name = ""
    raw_media: list[tuple[str, list[int], list[str]]] = []
    for ln in lines[1:]:
        if len(ln) < 2 or ln[1] != "=" or not ln[0].isalpha():
            raise SdpError(f"malformed SDP line {ln[:60]!r}")
        t, v = ln[0], ln[2:]
        if t == "m":
            m = _M_RE.fullmatch(v)
            if m is None:
                raise SdpError(f"malformed media line m={v[:60]!r}")
            pts = [int(x) for x in m.group(4).split()]
            if any(pt > 127 for pt in pts):
                raise SdpError(f"payload type out of range in m={v[:60]!r}")
            raw_media.append((m.group(1).lower(), pts, []))
        elif t == "a":
            (raw_media[-1][2] if raw_media else session_attrs).append(v)
        elif t == "s" and not raw_media:
            name = v
    if not raw_media:
        raise SdpError("no media (m=) lines")
    session_control = ""
    session_rate: float | None = None
    for a in session_attrs:
        k, _, val = a.partition(":")
        if k == "control":
            session_control = val
        elif k in ("framerate", "x-framerate"):
            session_rate = _framerate(val)
    aggregate = resolve_control(base, session_control) if session_control else base
    media: list[Media] = []
    for kind, pts, attrs in raw_media:
        pt = pts[0]
        rtpmap: dict[int, tuple[str, int, int]] = {}
        fmtp: dict[int, str] = {}
        control = ""
        rate = session_rate
        for a in attrs:
            k, _, val = a.partition(":")
            if k == "rtpmap":
                rm = _RTPMAP_RE.fullmatch(val)
                if rm is None:
                    raise SdpError(f"malformed a=rtpmap:{val[:60]!r}")
                rtpmap[int(rm.group(1))] = (rm.group(2), int(rm.group(3)), int(rm.group(4) or 1))
            elif k == "fmtp":
                p, _, params = val.partition(" ")
                if p.isdigit():
                    fmtp[int(p)] = params
            elif k == "control":
                control = val
            elif k in ("framerate", "x-framerate"):
                rate = _framerate(val)
        if pt in rtpmap:
            encoding, clock, channels = rtpmap[pt]
        elif pt in STATIC_PAYLOAD_TYPES:
            encoding, clock, channels = STATIC_PAYLOAD_TYPES[pt]
        else:
            encoding, clock, channels = "", 0, 0
        media.append(Media(
            kind=kind, payload_type=pt, codec=CODECS.get(encoding.upper(), "other" if encoding else "unknown"),
            encoding=encoding, clock_rate=clock, channels=channels, framerate=rate,
            control=resolve_control(base, control) if control else base, fmtp=fmtp.get(pt, ""),
        ))
    return SessionDescription(tuple(media), aggregate, name)
