"""analyze-pcap next to real tshark (`-z rtp,streams`), on generated captures and on a real ffmpeg RTP stream."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import Proc, free_port, need_root, tool, wait_until
from test_rtp_analyzer import build

pytestmark = pytest.mark.real

# start end src port dst port ssrc payload packets lost (pct%) min/mean/max delta, min/mean/max jitter
_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)\s+(0x[0-9A-Fa-f]+)\s+"
                  r".+?\s+(\d+)\s+(-?\d+)\s+\(\S+\)\s+\S+\s+\S+\s+\S+\s+\S+\s+(\S+)\s+(\S+)")

StreamKey = tuple[str, int, str, int, int]


def tshark_table(path: Path) -> dict[StreamKey, tuple[int, int, float, float]]:
    """{(src, sport, dst, dport, ssrc): (packets, lost, mean jitter ms, max jitter ms)} from
    `tshark -q -z rtp,streams` (tshark 4.0)."""
    r = subprocess.run([tool("tshark"), "-q", "-r", str(path), "-o", "rtp.heuristic_rtp:TRUE", "-z", "rtp,streams"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = {}
    for line in r.stdout.splitlines():
        m = _ROW.match(line)
        if m:
            src, sp, dst, dp, ssrc, pk, lost, mean_j, max_j = m.groups()
            out[(src, int(sp), dst, int(dp), int(ssrc, 16))] = (int(pk), int(lost), float(mean_j), float(max_j))
    assert out, f"no stream rows parsed from tshark:\n{r.stdout}"
    return out


def tshark_streams(path: Path) -> dict[StreamKey, tuple[int, int]]:
    """{(src, sport, dst, dport, ssrc): (packets, lost)}"""
    return {k: v[:2] for k, v in tshark_table(path).items()}


def ours(path: Path, *args: str) -> list[dict[str, Any]]:
    r = subprocess.run([sys.executable, "-m", "agent", "analyze-pcap", "--json", *args, str(path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    streams: list[dict[str, Any]] = json.loads(r.stdout)["streams"]
    return streams


def _key(s: dict[str, Any]) -> StreamKey:
    return (s["src"], s["src_port"], s["dst"], s["dst_port"], s["ssrc"])


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_packets_and_lost_agree_with_tshark(tmp_path: Path, fmt: str) -> None:
    """Loss, a burst, sequence wrap, stalls, QinQ + IPv6, CSRC/extension/padding, an SSRC change; no reordering."""
    path = build(tmp_path, reorder=False, fmt=fmt)
    mine = ours(path)
    theirs = tshark_streams(path)
    assert len(mine) == 6
    for s in mine:
        assert _key(s) in theirs, f"tshark does not list {_key(s)}: {sorted(theirs)}"
        assert (s["packets"], s["lost"]) == theirs[_key(s)], _key(s)
    # tshark's heuristic also lists random UDP as one-packet "streams"; we list none of them
    assert len(theirs) > len(mine)
    assert sum(s["lost"] for s in mine) == 4 + 2  # stream A: 105 and 110-112; stream C: 65535 and 0


def test_jitter_of_a_static_payload_type_agrees_with_tshark_without_loss(tmp_path: Path) -> None:
    """Stream D (PCMA, two stalls, no loss): tshark's mean and max jitter equal ours (docs/probes/rtp.md)."""
    path = build(tmp_path, reorder=False)
    d = next(s for s in ours(path) if s["ssrc"] == 0xD)
    _, _, mean_j, max_j = tshark_table(path)[_key(d)]
    assert d["mean_jitter_ms"] == pytest.approx(mean_j, abs=0.001)  # tshark prints 3 decimals
    assert d["max_jitter_ms"] == pytest.approx(max_j, abs=0.001)
    assert max_j > 100  # the stalls made real jitter


def test_reordering_is_where_tshark_loss_differs(tmp_path: Path) -> None:
    """Documented in docs/probes/rtp.md: tshark counts a late packet as a sequence error and loses track."""
    path = build(tmp_path, reorder=True)
    b = next(s for s in ours(path) if s["ssrc"] == 0xB)
    assert (b["packets"], b["expected"], b["lost"], b["duplicates"]) == (12, 10, -2, 2)
    assert tshark_streams(path)[_key(b)][1] != b["lost"]


def test_one_swap_across_the_wrap_breaks_tshark_loss_not_ours(tmp_path: Path) -> None:
    """Documented in docs/probes/rtp.md: 65534 0 65535 1 makes tshark report 65536 lost."""
    from rtp_pcap import Capture, rtp, rtp_v4

    c = Capture()
    for i, seq in enumerate([65530, 65531, 65532, 65533, 65534, 0, 65535, 1, 2, 3, 4]):
        c.add(1000 + i * 0.02, rtp_v4("10.0.0.1", 5004, "10.0.0.2", 5006, rtp(seq, i * 160, 0x99, pt=0)))
    path = c.write(tmp_path / "wrap.pcap")
    (s,) = ours(path)
    assert (s["packets"], s["expected"], s["lost"], s["duplicates"]) == (11, 11, 0, 0)
    assert tshark_streams(path)[_key(s)] == (11, 65536)


def test_real_ffmpeg_h264_stream_on_loopback(tmp_path: Path) -> None:
    """ffmpeg sends RTP/H.264 to 127.0.0.1; dumpcap captures it on lo; tshark and we agree on it."""
    need_root()
    dumpcap, ffmpeg = tool("dumpcap"), tool("ffmpeg")
    tool("tshark")
    port = free_port() & ~1
    sinks = []
    for p in (port, port + 1):  # receivers, so the kernel does not answer with ICMP port unreachable
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", p))
        sinks.append(s)
    cap = tmp_path / "ffmpeg.pcapng"
    dc = Proc([dumpcap, "-i", "lo", "-f", f"udp and (port {port} or port {port + 1})", "-w", str(cap)],
              tmp_path / "dumpcap.log")
    try:
        wait_until(lambda: "Capturing on" in dc.output() or not dc.alive(), 20, "dumpcap to start")
        assert dc.alive(), dc.output()
        seconds = 3
        r = subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
                            "testsrc=size=320x240:rate=25", "-t", str(seconds), "-c:v", "libx264", "-preset",
                            "ultrafast", "-tune", "zerolatency", "-f", "rtp", f"rtp://127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        time.sleep(0.5)
    finally:
        dc.stop()
        for s in sinks:
            s.close()
    mine = ours(cap, "--clock-rate", "90000")
    assert len(mine) == 1, mine  # the RTCP sender reports on port + 1 are not a stream
    s = mine[0]
    assert (s["src"], s["dst"], s["dst_port"], s["payload_type"]) == ("127.0.0.1", "127.0.0.1", port, 96)
    assert s["frames"] == seconds * 25  # one marker bit per H.264 access unit
    assert s["lost"] == 0 and s["duplicates"] == 0
    assert s["packets"] >= s["frames"]
    assert s["jitter_ms"] is not None and 0 <= s["jitter_ms"] < 40
    assert s["last_time"] - s["first_time"] == pytest.approx(seconds - 0.04, abs=0.5)
    assert tshark_streams(cap)[_key(s)] == (s["packets"], s["lost"])
