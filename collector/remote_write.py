"""Backfill: late samples into Prometheus with their original timestamps (remote write 1.0).

Remote write is protobuf (prometheus/prompb WriteRequest) compressed with snappy's
*block* format. The message is small enough that a documented hand encoder is
simpler than generated code:

    WriteRequest { repeated TimeSeries timeseries = 1; }
    TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    Label        { string name = 1; string value = 2; }
    Sample       { double value = 1; int64 timestamp = 2; }   // milliseconds

Labels are sorted by name (Prometheus requires it) and each series' samples are
in time order. Snappy comes from cramjam (a maintained binding).

Bodies are built when a report is applied and stored in the collector's SQLite
in the same transaction as the acknowledged sequence number, so an acknowledged
late sample reaches Prometheus even across a collector restart. The writer sends
them oldest first; 5xx and network errors are retried with backoff, a 4xx is
dropped (Prometheus will never take it) — both counted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import struct
from collections import Counter
from collections.abc import Iterable

import aiohttp
import cramjam

from agent.wire import Histogram, Sample

log = logging.getLogger("mogli.collector.remote_write")

Labels = tuple[tuple[str, str], ...]


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 two's complement, as protobuf encodes negative int64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def encode_series(labels: Labels, points: Iterable[tuple[int, float]]) -> bytes:
    body = bytearray()
    for name, value in labels:
        body += _field_bytes(1, _field_bytes(1, name.encode()) + _field_bytes(2, value.encode()))
    for ts_ms, v in points:
        sample = b"\x09" + struct.pack("<d", v) + b"\x10" + _varint(ts_ms)
        body += _field_bytes(2, sample)
    return bytes(body)


def encode_write_request(series: dict[Labels, list[tuple[int, float]]]) -> bytes:
    """Protobuf WriteRequest, labels sorted, samples of each series in time order."""
    out = bytearray()
    for labels in sorted(series):
        pts = sorted(series[labels])
        out += _field_bytes(1, encode_series(tuple(sorted(labels)), pts))
    return bytes(out)


def compress(raw: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(raw))


def decompress(data: bytes) -> bytes:
    return bytes(cramjam.snappy.decompress_raw(data))


def _le(v: float) -> str:
    return "+Inf" if math.isinf(v) else repr(v)


def flatten(samples: Iterable[Sample], extra: Labels) -> dict[Labels, list[tuple[int, float]]]:
    """Samples -> Prometheus series as the scrape would name them (histograms into _bucket/_sum/_count)."""
    series: dict[Labels, list[tuple[int, float]]] = {}

    def add(name: str, labels: Labels, ts_ms: int, v: float) -> None:
        key = tuple(sorted((("__name__", name), *labels, *extra)))
        series.setdefault(key, []).append((ts_ms, v))

    for s in samples:
        ts_ms = round(s.ts * 1000)
        if isinstance(s.value, Histogram):
            for le, c in s.value.buckets:
                add(s.name + "_bucket", (*s.labels, ("le", _le(le))), ts_ms, c)
            add(s.name + "_sum", s.labels, ts_ms, s.value.sum)
            add(s.name + "_count", s.labels, ts_ms, s.value.count)
        else:
            add(s.name, s.labels, ts_ms, float(s.value))
    return series


def build_bodies(samples: list[Sample], extra: Labels, max_samples: int) -> list[bytes]:
    """Snappy-compressed WriteRequests of at most ``max_samples`` samples each."""
    series = flatten(samples, extra)
    bodies: list[bytes] = []
    chunk: dict[Labels, list[tuple[int, float]]] = {}
    n = 0
    for labels in sorted(series):
        pts = sorted(series[labels])
        while pts:
            room = max_samples - n
            take, pts = pts[:room], pts[room:]
            chunk.setdefault(labels, []).extend(take)
            n += len(take)
            if n >= max_samples:
                bodies.append(compress(encode_write_request(chunk)))
                chunk, n = {}, 0
    if chunk:
        bodies.append(compress(encode_write_request(chunk)))
    return bodies


class Writer:
    """Sends stored bodies oldest first. ``stats`` feeds the collector's own metrics."""

    def __init__(self, url: str, timeout: float, store: object):
        from collector.store import Store

        assert isinstance(store, Store)
        self.url = url
        self.timeout = timeout
        self.store = store
        self.wakeup = asyncio.Event()
        self.requests: Counter[str] = Counter()  # by outcome: sent, retried, dropped
        self.samples_sent = 0

    async def run(self) -> None:
        attempt = 0
        headers = {
            "Content-Encoding": "snappy",
            "Content-Type": "application/x-protobuf",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
            "User-Agent": "mogli-collector",
        }
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as s:
            while True:
                item = self.store.next_backfill()
                if item is None:
                    self.wakeup.clear()
                    await self.wakeup.wait()
                    continue
                row_id, body, n = item
                try:
                    async with s.post(self.url, data=body, headers=headers) as resp:
                        text = await resp.text()
                        status = resp.status
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    status, text = 0, f"{type(e).__name__}: {e}"
                if 200 <= status < 300:
                    self.store.delete_backfill(row_id)
                    self.requests["sent"] += 1
                    self.samples_sent += n
                    attempt = 0
                elif 400 <= status < 500 and status != 429:
                    # Prometheus will never accept it (e.g. out of bounds): drop, count, say why
                    log.error("remote write refused %d samples with %d: %s", n, status, text[:300])
                    self.store.delete_backfill(row_id)
                    self.requests["dropped"] += 1
                else:
                    self.requests["retried"] += 1
                    delay = max(0.2, random.uniform(0, min(30.0, 0.5 * 2**attempt)))
                    attempt += 1
                    log.warning("remote write failed (%s): %s; retry in %.1f s", status or "no answer",
                                text[:200], delay)
                    await asyncio.sleep(delay)
