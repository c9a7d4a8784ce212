"""Sans-io RTSP 1.0 client side (RFC 2326): request bytes out, response events in, auth headers.

Nothing here touches a socket or a clock. :func:`build_request` makes the bytes of one request;
:class:`ResponseParser` is fed whatever arrived and returns complete events: :class:`Response`
(status line, headers, Content-Length body) and :class:`Interleaved` (``$`` channel length payload,
RFC 2326 10.12) in stream order. :class:`Authenticator` answers ``WWW-Authenticate`` challenges with
Basic or Digest (RFC 2617 / RFC 7616: MD5, MD5-sess, SHA-256, with and without ``qop=auth``).

Errors are :class:`RtspProtocolError` (a ValueError); the probe maps them to its reasons.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024


class RtspProtocolError(ValueError):
    """The peer sent something that is not RTSP we can follow (garbage, oversized, malformed)."""


# ---------------------------------------------------------------------------------------- requests
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def build_request(method: str, url: str, cseq: int, headers: Iterable[tuple[str, str]] = (),
                  body: bytes = b"") -> bytes:
    """The bytes of one RTSP request. ``headers`` come after CSeq, in the given order."""
    if not _TOKEN_RE.fullmatch(method):
        raise ValueError(f"bad RTSP method {method!r}")
    if any(c in url for c in " \r\n"):
        raise ValueError("request URL must not contain spaces or line breaks")
    lines = [f"{method} {url} RTSP/1.0", f"CSeq: {cseq}"]
    for name, value in headers:
        if "\r" in value or "\n" in value or not _TOKEN_RE.fullmatch(name):
            raise ValueError(f"bad header {name!r}")
        lines.append(f"{name}: {value}")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


# ---------------------------------------------------------------------------------------- responses
@dataclass(frozen=True)
class Response:
    version: str
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first header of that name (case-insensitive), else None."""
        low = name.lower()
        return next((v for n, v in self.headers if n.lower() == low), None)

    def header_all(self, name: str) -> list[str]:
        low = name.lower()
        return [v for n, v in self.headers if n.lower() == low]

    @property
    def cseq(self) -> int | None:
        v = self.header("CSeq")
        return int(v) if v is not None and v.strip().isdigit() else None

    @property
    def session(self) -> str | None:
        """The session id of a ``Session: id;timeout=60`` header."""
        v = self.header("Session")
        return v.split(";", 1)[0].strip() or None if v is not None else None


@dataclass(frozen=True)
class Interleaved:
    """One ``$``-framed binary packet on the RTSP connection (RTP on even, RTCP on odd channels)."""

    channel: int
    data: bytes


Event = Response | Interleaved

_STATUS_RE = re.compile(rb"(RTSP/\d\.\d) (\d{3})(?: ([^\r\n]*))?")


class ResponseParser:
    """Incremental parser of the server-to-client byte stream.

    ``feed(data)`` returns the events completed by ``data`` (possibly none, possibly many);
    partial input stays buffered. Raises :class:`RtspProtocolError` on input that cannot be RTSP.
    After an error the parser is unusable (the connection should be closed).
    """

    def __init__(self, max_header_bytes: int = MAX_HEADER_BYTES, max_body_bytes: int = MAX_BODY_BYTES):
        self._buf = bytearray()
        self._max_header = max_header_bytes
        self._max_body = max_body_bytes
        self._pending: tuple[str, int, str, tuple[tuple[str, str], ...], int] | None = None
        self.bytes_received = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        self._buf += data
        self.bytes_received += len(data)
        events: list[Event] = []
        pos = 0
        buf = self._buf
        try:
            while True:
                if self._pending is not None:  # headers done, waiting for the body
                    version, status, reason, headers, length = self._pending
                    if len(buf) - pos < length:
                        break
                    events.append(Response(version, status, reason, headers, bytes(buf[pos:pos + length])))
                    pos += length
                    self._pending = None
                    continue
                if pos >= len(buf):
                    break
                if buf[pos] == 0x24:  # '$' channel(1) length(2) payload
                    if len(buf) - pos < 4:
                        break
                    length = int.from_bytes(buf[pos + 2:pos + 4], "big")
                    if len(buf) - pos < 4 + length:
                        break
                    events.append(Interleaved(buf[pos + 1], bytes(buf[pos + 4:pos + 4 + length])))
                    pos += 4 + length
                    continue
                head = bytes(buf[pos:pos + 5])
                if not b"RTSP/".startswith(head) and not head.startswith(b"RTSP/"):
                    raise RtspProtocolError(f"expected an RTSP response or $-frame, got {head!r}")
                end = buf.find(b"\r\n\r\n", pos)
                sep = 4
                if end < 0:
                    end = buf.find(b"\n\n", pos)  # tolerate bare LF line ends
                    sep = 2
                if end < 0:
                    if len(buf) - pos > self._max_header:
                        raise RtspProtocolError(f"response header longer than {self._max_header} bytes")
                    break
                if end - pos > self._max_header:
                    raise RtspProtocolError(f"response header longer than {self._max_header} bytes")
                self._pending = self._head(bytes(buf[pos:end]))
                pos = end + sep
        finally:
            del buf[:pos]
        return events

    def _head(self, raw: bytes) -> tuple[str, int, str, tuple[tuple[str, str], ...], int]:
        lines = raw.replace(b"\r\n", b"\n").split(b"\n")
        m = _STATUS_RE.fullmatch(lines[0])
        if m is None:
            raise RtspProtocolError(f"bad status line {lines[0][:80]!r}")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t") and headers:  # obsolete line folding
                n, v = headers[-1]
                headers[-1] = (n, v + " " + line.strip().decode("utf-8", "replace"))
                continue
            name, colon, value = line.partition(b":")
            if not colon or not name.strip():
                raise RtspProtocolError(f"bad header line {line[:80]!r}")
            headers.append((name.strip().decode("ascii", "replace"), value.strip().decode("utf-8", "replace")))
        length = 0
        for n, v in headers:
            if n.lower() == "content-length":
                if not v.isdigit():
                    raise RtspProtocolError(f"bad Content-Length {v[:20]!r}")
                length = int(v)
        if length > self._max_body:
            raise RtspProtocolError(f"body of {length} bytes is over the limit of {self._max_body}")
        reason = (m.group(3) or b"").decode("utf-8", "replace")
        return m.group(1).decode(), int(m.group(2)), reason, tuple(headers), length


# ---------------------------------------------------------------------------------------- auth
@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic", "digest", ...
    params: dict[str, str] = field(default_factory=dict)  # names lower case
    token68: str = ""


_WS = " \t"
_T68_RE = re.compile(r"[A-Za-z0-9._~+/-]+=*")


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """All challenges of one or more ``WWW-Authenticate`` header values (RFC 7235 section 4.1).

    One value may hold several challenges (``Digest realm="a", nonce="b", Basic realm="c"``);
    quoted strings may contain commas and backslash escapes. Malformed tails are skipped.
    """
    out: list[Challenge] = []
    for value in values:
        out.extend(_parse_one_value(value))
    return out


def _parse_one_value(s: str) -> list[Challenge]:
    out: list[Challenge] = []
    i, n = 0, len(s)

    def skip(chars: str) -> None:
        nonlocal i
        while i < n and s[i] in chars:
            i += 1

    def token() -> str:
        nonlocal i
        m = _TOKEN_RE.match(s, i)
        if m is None:
            return ""
        i = m.end()
        return m.group(0)

    def quoted() -> str | None:
        nonlocal i
        i += 1  # opening quote
        chars: list[str] = []
        while i < n:
            c = s[i]
            if c == "\\" and i + 1 < n:
                chars.append(s[i + 1])
                i += 2
                continue
            if c == '"':
                i += 1
                return "".join(chars)
            chars.append(c)
            i += 1
        return None  # unterminated

    while i < n:
        skip(_WS + ",")
        scheme = token()
        if not scheme:
            break
        ch = Challenge(scheme.lower(), {})
        out.append(ch)
        skip(_WS)
        m = _T68_RE.match(s, i)
        if m is not None and not _looks_like_param(s, i):
            rest = s[m.end():].lstrip(_WS)
            if not rest or rest[0] == ",":
                out[-1] = Challenge(ch.scheme, {}, m.group(0))
                i = m.end()
                continue
        while i < n:
            skip(_WS + ",")
            start = i
            name = token()
            if not name:
                return out  # garbage: keep what we have
            skip(_WS)
            if i >= n or s[i] != "=":
                i = start  # a new scheme begins here
                break
            i += 1
            skip(_WS)
            if i < n and s[i] == '"':
                val = quoted()
                if val is None:
                    return out
            else:
                val = token()
            ch.params[name.lower()] = val
            skip(_WS)
            if i < n and s[i] != ",":
                # junk after a value; resync at the next comma
                j = s.find(",", i)
                i = n if j < 0 else j
    return out


def _looks_like_param(s: str, i: int) -> bool:
    m = _TOKEN_RE.match(s, i)
    if m is None:
        return False
    j = m.end()
    while j < len(s) and s[j] in _WS:
        j += 1
    return j < len(s) and s[j] == "=" and j + 1 < len(s) and s[j + 1] not in "=,"


_HASHES: dict[str, Callable[[bytes], str]] = {
    "MD5": lambda b: hashlib.md5(b, usedforsecurity=False).hexdigest(),
    "SHA-256": lambda b: hashlib.sha256(b).hexdigest(),
}


def digest_response(
    *,
    username: str,
    password: str,
    realm: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str = "",
    nc: int = 1,
    cnonce: str = "",
    algorithm: str = "MD5",
    body: bytes = b"",
) -> str:
    """The ``response`` value of RFC 2617 3.2.2.1 / RFC 7616 3.4.1 (MD5, MD5-sess, SHA-256[-sess])."""
    algo = algorithm.upper()
    sess = algo.endswith("-SESS")
    base = algo[:-5] if sess else algo
    if base not in _HASHES:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    h = _HASHES[base]
    ha1 = h(f"{username}:{realm}:{password}".encode())
    if sess:
        ha1 = h(f"{ha1}:{nonce}:{cnonce}".encode())
    a2 = f"{method}:{uri}:{h(body)}" if qop == "auth-int" else f"{method}:{uri}"
    ha2 = h(a2.encode())
    if qop:
        return h(f"{ha1}:{nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}".encode())
    return h(f"{ha1}:{nonce}:{ha2}".encode())


def basic_authorization(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _q(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


class AuthError(Exception):
    """No usable challenge (unknown scheme, unsupported algorithm)."""


class Authenticator:
    """Chooses a challenge from a 401 and makes the ``Authorization`` header for each later request.

    ``challenge(response)`` returns True when a retry with credentials makes sense: the first 401,
    or a Digest 401 with ``stale=true`` (new nonce, same password). A second plain 401 means the
    credentials are wrong. ``cnonce`` is injectable for tests.
    """

    def __init__(self, username: str, password: str, cnonce: Callable[[], str] | None = None):
        self.username = username
        self._password = password
        self._cnonce = cnonce or (lambda: os.urandom(8).hex())
        self._chosen: Challenge | None = None
        self._nc = 0
        self.scheme = ""

    def __repr__(self) -> str:  # never show the password
        return f"Authenticator(username={self.username!r}, scheme={self.scheme!r})"

    def challenge(self, response: Response) -> bool:
        challenges = parse_challenges(response.header_all("WWW-Authenticate"))
        digests = [c for c in challenges if c.scheme == "digest" and "nonce" in c.params
                   and c.params.get("algorithm", "MD5").upper() in ("MD5", "MD5-SESS", "SHA-256", "SHA-256-SESS")]
        basics = [c for c in challenges if c.scheme == "basic"]
        if not digests and not basics:
            schemes = ", ".join(sorted({c.scheme for c in challenges})) or "none"
            raise AuthError(f"no supported authentication scheme offered (offered: {schemes})")
        # prefer the strongest: SHA-256 over MD5 Digest over Basic
        digests.sort(key=lambda c: 0 if c.params.get("algorithm", "MD5").upper().startswith("SHA-256") else 1)
        new = digests[0] if digests else basics[0]
        first = self._chosen is None
        stale = new.scheme == "digest" and new.params.get("stale", "").lower() == "true"
        self._chosen = new
        self._nc = 0
        self.scheme = new.scheme
        return first or stale

    def authorization(self, method: str, uri: str, body: bytes = b"") -> str | None:
        """The Authorization header value for the next request, or None before any challenge."""
        c = self._chosen
        if c is None:
            return None
        if c.scheme == "basic":
            return basic_authorization(self.username, self._password)
        p = c.params
        algorithm = p.get("algorithm", "")
        offered = [q.strip().lower() for q in p.get("qop", "").split(",") if q.strip()]
        qop = "auth" if "auth" in offered else ("auth-int" if "auth-int" in offered else "")
        cnonce = ""
        if qop or algorithm.upper().endswith("-SESS"):
            cnonce = self._cnonce()
        self._nc += 1
        resp = digest_response(
            username=self.username, password=self._password, realm=p.get("realm", ""), nonce=p["nonce"],
            method=method, uri=uri, qop=qop, nc=self._nc, cnonce=cnonce, algorithm=algorithm or "MD5", body=body,
        )
        parts = [f"username={_q(self.username)}", f"realm={_q(p.get('realm', ''))}", f"nonce={_q(p['nonce'])}",
                 f"uri={_q(uri)}", f"response={_q(resp)}"]
        if algorithm:
            parts.append(f"algorithm={algorithm}")
        if "opaque" in p:
            parts.append(f"opaque={_q(p['opaque'])}")
        if qop:
            parts += [f"qop={qop}", f"nc={self._nc:08x}", f"cnonce={_q(cnonce)}"]
        return "Digest " + ", ".join(parts)
