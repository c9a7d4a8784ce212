"""``mogli-agent analyze-pcap``: the analyser over a capture file, as a table or JSON."""

from __future__ import annotations

import gzip
import json
import mmap
import sys
import zlib
from pathlib import Path
from typing import TextIO

from agent.rtp.analyzer import STATIC_NAMES, Analyzer
from agent.rtp.decode import SUPPORTED_LINKTYPES
from agent.rtp.pcapfile import CaptureError, open_capture

EXIT_BAD_INPUT = 2


def analyze_file(path: str | Path, clock_rate: float = 0.0, stall_gap: float = 1.0) -> Analyzer:
    """Analyse a whole pcap/pcapng file (also gzip-compressed, as Wireshark writes them).

    Raises OSError, or CaptureError for a broken file header (offsets count in the uncompressed data).
    """
    an = Analyzer(clock_rate=clock_rate, stall_gap=stall_gap)
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            raise CaptureError("file is empty", 0)
        f.seek(0)
        if f.read(2) == b"\x1f\x8b":
            f.seek(0)
            try:
                data = gzip.GzipFile(fileobj=f).read()
            except (OSError, EOFError, zlib.error) as e:
                raise CaptureError(f"gzip data is damaged ({e})", 0) from None
            _feed_all(an, data, len(data))
            return an
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            _feed_all(an, buf, size)
    return an


def _feed_all(an: Analyzer, buf: bytes | mmap.mmap, size: int) -> None:
    if size == 0:
        raise CaptureError("file is empty", 0)
    info = open_capture(buf)
    if info.kind == "pcap" and info.linktype not in SUPPORTED_LINKTYPES:
        raise CaptureError(f"unsupported link type {info.linktype}", 20)
    an.feed(buf, info.start, size, info)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def write_table(an: Analyzer, out: TextIO) -> None:
    streams = [s.summary() for s in an.reported()]
    head = (f"{'SOURCE':>22} {'DESTINATION':>22} {'SSRC':>10} {'PT':>9} {'PACKETS':>8} {'LOST':>6} {'LOST%':>6} "
            f"{'DUP':>5} {'JITTER ms':>9} {'MEAN ms':>8} {'MAX ms':>8} {'MAXGAP ms':>9} {'FRAMES':>7} {'STALLS':>6}")
    print(head, file=out)
    for s in streams:
        src = f"{s['src']}:{s['src_port']}" if ":" not in s["src"] else f"[{s['src']}]:{s['src_port']}"
        dst = f"{s['dst']}:{s['dst_port']}" if ":" not in s["dst"] else f"[{s['dst']}]:{s['dst_port']}"
        pt = s["payload_type"]
        pts = f"{pt} {STATIC_NAMES.get(pt, 'dyn' if pt >= 96 else '?')}"
        pct = 100.0 * s["lost"] / s["expected"] if s["expected"] else 0.0
        print(f"{src:>22} {dst:>22} {s['ssrc']:#010x} {pts:>9} {s['packets']:>8} {s['lost']:>6} {pct:>5.1f}% "
              f"{s['duplicates']:>5} {_ms(s['jitter_ms']):>9} {_ms(s['mean_jitter_ms']):>8} "
              f"{_ms(s['max_jitter_ms']):>8} {s['max_delta_ms']:>9.1f} {s['frames']:>7} {s['stalls']:>6}", file=out)
    print(f"{len(streams)} RTP stream(s); {an.records} packets read, {an.udp} UDP, {an.rtp} RTP-like, "
          f"{an.damaged} damaged (skipped)", file=out)
    if any(s["jitter_ms"] is None for s in streams):
        print("jitter '-': dynamic payload type with unknown clock rate; give --clock-rate HZ", file=out)


def main(file: str, as_json: bool = False, clock_rate: float = 0.0, stall_gap: float = 1.0) -> int:
    try:
        an = analyze_file(file, clock_rate, stall_gap)
    except CaptureError as e:
        print(f"mogli-agent analyze-pcap: {file}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OSError, ValueError) as e:
        print(f"mogli-agent analyze-pcap: {file}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if an.problem:
        print(f"mogli-agent analyze-pcap: {file}: warning: {an.problem}; results cover the packets before it",
              file=sys.stderr)
    if an.damaged:
        print(f"mogli-agent analyze-pcap: {file}: warning: {an.damaged} damaged packet(s) skipped", file=sys.stderr)
    if as_json:
        json.dump({"streams": [s.summary() for s in an.reported()]}, sys.stdout, indent=2)
        print()
    else:
        write_table(an, sys.stdout)
    return 0
