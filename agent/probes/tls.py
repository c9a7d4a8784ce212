"""TLS for the probes that speak it (http, tcp): the client context, and the peer certificate's expiry.

The certificate's notAfter is read from the certificate itself (DER, sans-io), so it is reported with
``tls_verify: false`` too, where ``getpeercert()`` returns nothing.
"""

from __future__ import annotations

import asyncio
import ssl
import time

from agent.probes.base import ProbeResult, TLSError


async def client_context(cache: dict[str, ssl.SSLContext], ca_file: str, verify: bool) -> ssl.SSLContext:
    """The probe's client context, built once and kept in ``cache`` (its config's): loading the system CAs takes
    ~70 ms, done in a thread so the event loop is not blocked. An unreadable ``ca_file`` fails the run
    (reason ``tls``) and says which file."""
    ctx = cache.get("ssl")
    if ctx is None:
        try:
            ctx = await asyncio.to_thread(ssl.create_default_context, cafile=ca_file or None)
        except OSError as e:
            raise TLSError(f"ca_file {ca_file}: {e.strerror or e}") from None
        except ssl.SSLError as e:
            raise TLSError(f"ca_file {ca_file}: {e}") from None
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        cache["ssl"] = ctx
    return ctx


def record_cert(der: bytes, result: ProbeResult) -> None:
    """The peer certificate's expiry as ``mogli_tls_cert_expiry_timestamp_seconds`` and in the run's detail
    (days left); a certificate that cannot be parsed is named in the detail, the run goes on."""
    try:
        not_after = cert_not_after(der)
    except ValueError as e:
        result.detail["cert_error"] = str(e)
    else:
        result.gauge("mogli_tls_cert_expiry_timestamp_seconds", not_after)
        result.detail["cert_days_left"] = round((not_after - time.time()) / 86400, 1)


def _tlv(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at pos."""
    if pos + 2 > len(buf):
        raise ValueError("truncated DER")
    tag, n = buf[pos], buf[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if not 1 <= k <= 4 or pos + k > len(buf):
            raise ValueError("bad DER length")
        n = int.from_bytes(buf[pos:pos + k], "big")
        pos += k
    if pos + n > len(buf):
        raise ValueError("truncated DER")
    return tag, pos, pos + n


def _der_time(tag: int, raw: bytes) -> float:
    import calendar

    text = raw.decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ
        if len(text) != 13 or not text.endswith("Z"):
            raise ValueError(f"bad UTCTime {text!r}")
        yy = int(text[:2])
        text = f"{1900 + yy if yy >= 50 else 2000 + yy}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ValueError(f"not a time (tag {tag:#x})")
    if len(text) != 15 or not text.endswith("Z") or not text[:14].isdigit():
        raise ValueError(f"bad time {text!r}")
    t = time.strptime(text[:14], "%Y%m%d%H%M%S")
    return float(calendar.timegm(t))


def cert_not_after(der: bytes) -> float:
    """notAfter of an X.509 certificate in DER, as seconds since the epoch. ValueError on anything else."""
    tag, s, _ = _tlv(der, 0)  # Certificate
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, pos, tbs_end = _tlv(der, s)  # tbsCertificate
    if tag != 0x30:
        raise ValueError("not a certificate")
    elems: list[tuple[int, int, int]] = []
    while pos < tbs_end and len(elems) < 5:
        elems.append(_tlv(der, pos))
        pos = elems[-1][2]
    if elems and elems[0][0] == 0xA0:  # [0] version
        elems = elems[1:]
    if len(elems) < 4 or elems[3][0] != 0x30:  # serial, signature, issuer, validity
        raise ValueError("no validity in certificate")
    _, vpos, vend = elems[3]
    _, _, e1 = _tlv(der, vpos)  # notBefore
    t2, s2, e2 = _tlv(der, e1)  # notAfter
    if e2 > vend:
        raise ValueError("truncated validity")
    return _der_time(t2, der[s2:e2])
