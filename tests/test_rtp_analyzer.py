"""The analyser against the RFC 3550 definitions, with every expected value worked out by hand.

One capture holds every case of issue 4: loss, a burst, reordering, duplicates, sequence
wrap, stalls, VLAN tags, IPv6, CSRC/extension/padding, an SSRC change, RTCP and random
UDP/DNS noise. Each stream's numbers are written out below with the arithmetic that
gives them (RFC 3550 A.1: expected = highest extended seq - first seq + 1; A.8:
D = arrival difference in RTP units - RTP timestamp difference, J += (|D| - J) / 16).
"""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rtp_pcap import Capture, ether, ipv4, ipv6, rtp, rtp_v4, udp

from agent.rtp.analyzer import Analyzer
from agent.rtp.offline import analyze_file

T0 = 1_700_000_000.0
CAM = "10.20.0.11"
OPS = "10.20.9.1"


def build(tmp_path: Path, reorder: bool = True, fmt: str = "pcap") -> Path:
    """The capture of all cases; ``reorder=False`` leaves out stream B (reordering and duplicates)."""
    c = Capture()
    events: list[tuple[float, bytes]] = []

    # A: PCMU (PT 0, 8000 Hz), 160 payload bytes, seq 100..119 sent every 20 ms; 105 lost and a burst
    #    110-112 lost; 103 arrives 5 ms late. Marker on 104, 109, 114, 119.
    for s in range(100, 120):
        if s in (105, 110, 111, 112):
            continue
        t = T0 + (s - 100) * 0.02 + (0.005 if s == 103 else 0)
        pkt = rtp(s, (s - 100) * 160, 0xA, pt=0, marker=s % 5 == 4, payload=b"\xd5" * 160)
        events.append((t, rtp_v4(CAM, 5004, OPS, 7000, pkt)))

    # B: dynamic PT 96 (no clock rate known), 802.1Q VLAN 30. Arrival order of sequence numbers:
    #    0 1 3 2 4 4 5 6 8 9 7 6 - 2 late (reordered), 7 late, 4 and 6 again (duplicates)
    order = [0, 1, 3, 2, 4, 4, 5, 6, 8, 9, 7, 6] if reorder else []
    for i, s in enumerate(order):
        pkt = rtp(s, s * 3000, 0xB, pt=96, payload=b"\0" * 100)
        events.append((T0 + 1 + i * 0.01, ether(ipv4("10.20.0.12", OPS, udp(5004, 7002, pkt)), vlans=(30,))))

    # C: IPv6, 802.1ad+802.1Q, MPV (PT 32, 90000 Hz), sequence wraps: 65530..65535, 0..5 with 65535 and 0 lost.
    #    Every packet 40 ms apart in sequence time and on time: jitter 0.
    for k, s in enumerate([*range(65530, 65536), *range(0, 6)]):
        if s in (65535, 0):
            continue
        pkt = rtp(s, 7 + k * 3600, 0xC, pt=32, payload=b"\1" * 50)
        ip = ipv6("2001:db8:20::11", "2001:db8:20::1", udp(36000, 37004, pkt))  # not 7004: tshark decodes AFS there
        events.append((T0 + 2 + k * 0.04, ether(ip, vlans=(40, 41))))

    # D: stalls. PCMA (PT 8), seq 1..6; gaps after seq 2 (2.5 s) and after seq 4 (1.5 s); otherwise 20 ms.
    #    RTP timestamps follow the sending clock, so each stall also moves the arrival, not the RTP time:
    #    the 2.5 s gap carries RTP time 160 (20 ms) -> D = 2.5 * 8000 - 160 = 19840.
    t = T0 + 3
    for s in range(1, 7):
        events.append((t, rtp_v4("10.20.0.14", 5004, OPS, 7006, rtp(s, s * 160, 0xD, pt=8, payload=b"\0" * 160))))
        t += 2.5 if s == 2 else 1.5 if s == 4 else 0.02

    # E: CSRC / header extension / padding (PT 0): 4 valid packets, each 12 + 8 (2 CSRC) + 12 (ext) + 40 + 4 pad
    #    = 76 bytes; one more whose padding count exceeds its length is not RTP and not counted.
    for s in range(4):
        pkt = rtp(50 + s, s * 160, 0xE, pt=0, csrcs=(1, 2), ext=b"\0" * 8, payload=b"\0" * 40, padding=4)
        assert len(pkt) == 76
        events.append((T0 + 4 + s * 0.02, rtp_v4("10.20.0.15", 5004, OPS, 7008, pkt)))
    bad = bytearray(rtp(54, 640, 0xE, pt=0, payload=b"\0" * 4, padding=1))
    bad[-1] = 200
    events.append((T0 + 4.1, rtp_v4("10.20.0.15", 5004, OPS, 7008, bytes(bad))))

    # F/G: a camera reboot: same 5-tuple, SSRC 0xF0 seq 10..14 then SSRC 0xF1 seq 30000..30004 (PT 26, JPEG).
    for i in range(5):
        events.append((T0 + 5 + i * 0.04, rtp_v4("10.20.0.16", 5004, OPS, 7010,
                                                 rtp(10 + i, i * 3600, 0xF0, pt=26, marker=True))))
    for i in range(5):
        events.append((T0 + 6 + i * 0.04, rtp_v4("10.20.0.16", 5004, OPS, 7010,
                                                 rtp(30000 + i, 999 + i * 3600, 0xF1, pt=26, marker=True))))

    # noise: RTCP SR/RR/SDES/BYE/APP (second byte 200..204) with a steady SSRC and a counter where the RTP
    # sequence number would be; random UDP; DNS queries with a fixed source port.
    for i in range(20):
        rtcp = struct.pack("!BBHI", 0x80, 200 + i % 5, i, 0xA) + b"\0" * 20
        events.append((T0 + i * 0.3, rtp_v4(CAM, 5005, OPS, 7001, rtcp)))
        events.append((T0 + i * 0.3 + 0.001, rtp_v4(CAM, 5004, OPS, 7000, rtcp)))  # rtcp-mux on A's ports
    rnd = random.Random(7)
    for i in range(200):
        events.append((T0 + i * 0.03, rtp_v4("10.20.0.99", 40000, OPS, 40001, rnd.randbytes(rnd.randint(12, 200)))))
    for i in range(30):
        q = struct.pack("!HHHHHH", 0x8000 + i, 0x0100, 1, 0, 0, 0) + b"\x07example\x03com\0\0\x01\0\x01"
        events.append((T0 + i * 0.1, rtp_v4("10.20.0.99", 53000, "10.20.9.53", 53, q)))

    events.sort(key=lambda e: e[0])
    for ev in events:
        c.add(*ev)
    return c.write(tmp_path / f"all.{fmt}", fmt)


def _j_after(j: float, ds: list[float]) -> list[float]:
    out = []
    for d in ds:
        j += (abs(d) - j) / 16
        out.append(j)
    return out


# jitter of A worked out: D for packets 2..16 (101 102 103 104 106 107 108 109 113..119):
#   101, 102: 0; 103: 25 ms * 8 - 160 = +40; 104: 15 ms * 8 - 160 = -40; 106: 40 ms * 8 - 320 = 0; all later 0.
#   J: 0, 0, 40/16 = 2.5, 2.5 + (40 - 2.5)/16 = 4.84375, then * 15/16 for each of the 11 later packets.
A_J = [0.0, 0.0, 2.5, 4.84375] + [4.84375 * (15 / 16) ** k for k in range(1, 12)]
# D: 2 packets 20 ms apart (D 0), 2.5 s gap (D 19840), 20 ms (0), 1.5 s gap (1.5 * 8000 - 160 = 11840), 20 ms (0).
D_J = _j_after(0.0, [0, 19840, 0, 11840, 0])

EXPECTED: dict[int, dict[str, Any]] = {
    0xA: {"src": CAM, "src_port": 5004, "dst": OPS, "dst_port": 7000, "payload_type": 0,
          "packets": 16, "bytes": 16 * 172, "expected": 20, "lost": 4, "duplicates": 0,
          "jitter_ms": A_J[-1] / 8, "mean_jitter_ms": sum(A_J) / 15 / 8, "max_jitter_ms": 4.84375 / 8,
          "max_delta_ms": 80.0,  # 109 -> 113
          "frames": 4, "stalls": 0, "first_time": T0, "last_time": T0 + 0.38},
    0xB: {"src": "10.20.0.12", "src_port": 5004, "dst": OPS, "dst_port": 7002, "payload_type": 96,
          "packets": 12, "bytes": 12 * 112, "expected": 10, "lost": -2, "duplicates": 2,
          "jitter_ms": None, "mean_jitter_ms": None, "max_jitter_ms": None,
          "max_delta_ms": 10.0, "frames": 0, "stalls": 0, "first_time": T0 + 1, "last_time": T0 + 1.11},
    0xC: {"src": "2001:db8:20::11", "src_port": 36000, "dst": "2001:db8:20::1", "dst_port": 37004,
          "payload_type": 32, "packets": 10, "bytes": 10 * 62,
          "expected": 12,  # extended highest 65536 + 5 = 65541, minus first 65530, plus 1
          "lost": 2, "duplicates": 0, "jitter_ms": 0.0, "mean_jitter_ms": 0.0, "max_jitter_ms": 0.0,
          "max_delta_ms": 120.0,  # 65534 -> 1 spans three 40 ms slots
          "frames": 0, "stalls": 0, "first_time": T0 + 2, "last_time": T0 + 2 + 11 * 0.04},
    0xD: {"src": "10.20.0.14", "src_port": 5004, "dst": OPS, "dst_port": 7006, "payload_type": 8,
          "packets": 6, "bytes": 6 * 172, "expected": 6, "lost": 0, "duplicates": 0,
          "jitter_ms": D_J[-1] / 8, "mean_jitter_ms": sum(D_J) / 5 / 8, "max_jitter_ms": max(D_J) / 8,
          "max_delta_ms": 2500.0, "frames": 0, "stalls": 2, "first_time": T0 + 3, "last_time": T0 + 3 + 4.06},
    0xE: {"src": "10.20.0.15", "src_port": 5004, "dst": OPS, "dst_port": 7008, "payload_type": 0,
          "packets": 4, "bytes": 4 * 76, "expected": 4, "lost": 0, "duplicates": 0,
          "jitter_ms": 0.0, "mean_jitter_ms": 0.0, "max_jitter_ms": 0.0, "max_delta_ms": 20.0,
          "frames": 0, "stalls": 0, "first_time": T0 + 4, "last_time": T0 + 4.06},
    0xF0: {"src": "10.20.0.16", "src_port": 5004, "dst": OPS, "dst_port": 7010, "payload_type": 26,
           "packets": 5, "bytes": 5 * 32, "expected": 5, "lost": 0, "duplicates": 0,
           "jitter_ms": 0.0, "mean_jitter_ms": 0.0, "max_jitter_ms": 0.0, "max_delta_ms": 40.0,
           "frames": 5, "stalls": 0, "first_time": T0 + 5, "last_time": T0 + 5.16},
    0xF1: {"src": "10.20.0.16", "src_port": 5004, "dst": OPS, "dst_port": 7010, "payload_type": 26,
           "packets": 5, "bytes": 5 * 32, "expected": 5, "lost": 0, "duplicates": 0,
           "jitter_ms": 0.0, "mean_jitter_ms": 0.0, "max_jitter_ms": 0.0, "max_delta_ms": 40.0,
           "frames": 5, "stalls": 0, "first_time": T0 + 6, "last_time": T0 + 6.16},
}


def _compare(got: dict[str, Any], want: dict[str, Any]) -> None:
    for k, v in want.items():
        if isinstance(v, float):
            # jitter from float arrival times: a few 1e-9 ms of rounding noise on zero
            assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-6), (k, got[k], v)
        else:
            assert got[k] == v, (k, got[k], v)


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("rtp"))


def test_every_stream_matches_rfc3550_by_hand(capture: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "agent", "analyze-pcap", "--json", str(capture)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    streams = json.loads(r.stdout)["streams"]
    by_ssrc = {s["ssrc"]: s for s in streams}
    # exactly these streams: no RTCP, no random UDP, no DNS; the reboot is two streams
    assert sorted(by_ssrc) == sorted(EXPECTED), sorted(by_ssrc)
    assert len(streams) == len(EXPECTED)
    for ssrc, want in EXPECTED.items():
        got = by_ssrc[ssrc]
        assert list(got) == ["src", "src_port", "dst", "dst_port", "ssrc", "payload_type", "packets", "bytes",
                             "expected", "lost", "duplicates", "jitter_ms", "mean_jitter_ms", "max_jitter_ms",
                             "max_delta_ms", "frames", "stalls", "first_time", "last_time"]
        _compare(got, want)
    # streams come in the order of their first packet
    assert [s["first_time"] for s in streams] == sorted(s["first_time"] for s in streams)


def test_reordered_count_and_clock_rate_for_dynamic_pt(capture: Path) -> None:
    an = analyze_file(capture, clock_rate=90000)
    b = next(s for s in an.reported() if s.ssrc == 0xB)
    assert b.reordered == 2  # 2 and 7 came late; the second 4 and second 6 are duplicates
    # with a clock rate, B gets jitter: packets 10 ms apart (900 units), RTP timestamps s * 3000.
    # D = 900 - 3000 * (s_j - s_i) for consecutive arrivals 0 1 3 2 4 4 5 6 8 9 7 6:
    steps = [1, 2, -1, 2, 0, 1, 1, 2, 1, -2, -1]
    js = _j_after(0.0, [900 - 3000 * k for k in steps])
    s = b.summary()
    assert s["jitter_ms"] == pytest.approx(js[-1] / 90)
    assert s["max_jitter_ms"] == pytest.approx(max(js) / 90)
    assert s["mean_jitter_ms"] == pytest.approx(sum(js) / 11 / 90)


def test_stall_gap_option(capture: Path) -> None:
    an = analyze_file(capture, stall_gap=2.0)
    d = next(s for s in an.reported() if s.ssrc == 0xD)
    assert d.stalls == 1  # only the 2.5 s gap
    an = analyze_file(capture, stall_gap=0.05)
    a = next(s for s in an.reported() if s.ssrc == 0xA)
    assert a.stalls == 1  # the 80 ms gap of the burst


def test_table_output(capture: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "agent", "analyze-pcap", str(capture)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].split()[:6] == ["SOURCE", "DESTINATION", "SSRC", "PT", "PACKETS", "LOST"]
    row_a = next(ln for ln in lines if "0x0000000a" in ln).split()
    assert row_a[:8] == [f"{CAM}:5004", f"{OPS}:7000", "0x0000000a", "0", "PCMU", "16", "4", "20.0%"]
    row_c = next(ln for ln in lines if "0x0000000c" in ln).split()
    assert row_c[:2] == ["[2001:db8:20::11]:36000", "[2001:db8:20::1]:37004"]
    assert "7 RTP stream(s)" in r.stdout
    assert "dynamic payload type with unknown clock rate; give --clock-rate HZ" in r.stdout


def feed(events: list[tuple[float, bytes]], **kw: Any) -> Analyzer:
    c = Capture()
    for ev in events:
        c.add(*ev)
    data = c.pcap()
    from agent.rtp.pcapfile import open_capture

    an = Analyzer(**kw)
    info = open_capture(data)
    an.feed(data, info.start, len(data), info)
    return an


def pk(seq: int, t: float, ssrc: int = 1, ts: int = 0) -> tuple[float, bytes]:
    return (T0 + t, rtp_v4("10.0.0.1", 5004, "10.0.0.2", 5004, rtp(seq, ts, ssrc, pt=0)))


def test_two_packets_are_not_a_stream_three_are() -> None:
    assert feed([pk(1, 0), pk(2, 0.02)]).reported() == []
    assert len(feed([pk(1, 0), pk(2, 0.02), pk(3, 0.04)]).reported()) == 1
    # the same SSRC with sequence numbers far apart is not plausible RTP
    assert feed([pk(1, 0), pk(500, 0.02), pk(1000, 0.04), pk(1500, 0.06)]).reported() == []


def test_forward_jump_beyond_dropout_counts_as_loss_once_confirmed() -> None:
    # 1 2 3, an outage of 5000 sequence numbers, then 5004 5005 (the second confirms the jump)
    an = feed([pk(1, 0), pk(2, 0.02), pk(3, 0.04), pk(5004, 20), pk(5005, 20.02)])
    s = an.reported()[0]
    assert (s.packets, s.expected, s.lost) == (5, 5005, 5000)


def test_single_stray_jump_is_not_believed() -> None:
    # 1 2 3, one stray packet claiming seq 40000, then 4 5: the stray is counted as received but does not
    # move the highest sequence number (RFC 3550 A.1 bad_seq)
    an = feed([pk(1, 0), pk(2, 0.02), pk(3, 0.04), pk(40000, 0.05), pk(4, 0.06), pk(5, 0.08)])
    s = an.reported()[0]
    assert (s.packets, s.expected, s.lost) == (6, 5, -1)


def test_backward_restart_starts_a_new_segment() -> None:
    # 1000..1003 then the sender restarts its numbering at 10 (same SSRC): 10, 11, 12
    an = feed([pk(1000 + i, i * 0.02) for i in range(4)] + [pk(10 + i, 1 + i * 0.02) for i in range(3)])
    s = an.reported()[0]
    assert (s.packets, s.expected, s.lost) == (7, 7, 0)


# --- property: sequence accounting against a model built from the sender's true packet numbers --------------------


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[int, list[int]]:
    """(first wire sequence number, true packet numbers in arrival order) with loss, bursts, duplicates and
    local reordering (each packet at most a few places late), often across the 16-bit wrap."""
    start = draw(st.integers(0, 65535))
    n = draw(st.integers(5, 400))
    out: list[int] = []
    i = 0
    while i < n:
        if i >= 4 and draw(st.integers(0, 19)) == 0:
            i += draw(st.integers(1, 40))  # a burst lost
            continue
        out.append(i)
        if i >= 4 and draw(st.integers(0, 24)) == 0:
            out.append(i)  # duplicated
        i += 1
    for _ in range(draw(st.integers(0, len(out) // 10))):  # late by a few places, never among the first 4
        k = draw(st.integers(4, len(out) - 1))
        d = draw(st.integers(1, 5))
        out.insert(min(len(out), k + d), out.pop(k))
    return start, out


@settings(max_examples=150, deadline=None)
@given(arrivals())
def test_sequence_accounting_matches_a_model_of_the_true_numbers(case: tuple[int, list[int]]) -> None:
    start, order = case
    events = [pk((start + n) & 0xFFFF, i * 0.001, ssrc=9) for i, n in enumerate(order)]
    (s,) = feed(events).reported()
    seen: set[int] = set()
    dups = reordered = 0
    high = -1
    for n in order:
        if n in seen:
            dups += 1
        elif n < high:
            reordered += 1
        seen.add(n)
        high = max(high, n)
    expected = max(order) - order[0] + 1
    assert (s.packets, s.expected, s.lost, s.dups, s.reordered) == (
        len(order), expected, expected - len(order), dups, reordered)


def test_random_udp_candidates_are_pruned_and_real_streams_survive(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory stays bounded under UDP that never becomes RTP; confirmed streams keep counting through it."""
    import agent.rtp.analyzer as analyzer_mod

    monkeypatch.setattr(analyzer_mod, "MAX_CANDIDATES", 50)
    rnd = random.Random(1)
    events = []
    for i in range(600):
        events.append(pk(i, i * 0.01, ssrc=0x5EED))
        junk = rtp(rnd.randrange(65536), 0, rnd.randrange(1 << 32), pt=0)  # a new SSRC every time
        events.append((T0 + i * 0.01 + 0.001, rtp_v4("10.9.9.9", 9999, "10.0.0.2", 9999, junk)))
    an = feed(events)
    assert len(an.streams) <= 51
    (s,) = an.reported()
    assert (s.ssrc, s.packets, s.lost) == (0x5EED, 600, 0)
