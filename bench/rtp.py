"""RTP analysis: analyze-pcap vs tshark -z rtp,streams vs a scapy loop; live capture CPU at 10k packets/s.

A generated pcap of 1,000,000 RTP packets (20 streams, PT 96, 154-byte frames, 0.1 % loss,
marker every 10th packet) in a temp dir. Packets per CPU second of the whole process (median
of 3 runs each; wall-clock rates are in the notes); scapy is timed on the first 10,000 packets
only (it parses a few thousand packets per second). As root, a third row: CPU share of the live
capture (agent/rtp/live.py) at 10,000 packets/s on lo, next to dumpcap capturing the same packets.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PACKETS = 1_000_000
STREAMS = 20
PAYLOAD = 100
SCAPY_PACKETS = 10_000
RUNS = 3


def generate(path: Path, packets: int = PACKETS, streams: int = STREAMS) -> int:
    """Write the capture; return the number of packets written."""
    rec = struct.Struct("<IIII")
    frame_len = 14 + 20 + 8 + 12 + PAYLOAD
    tmpl = bytearray(16 + frame_len)
    eth = b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00"
    tmpl[16:30] = eth
    ip = struct.Struct("!BBHHHBBH4s4s")
    udp_rtp = struct.Struct("!HHHHBBHII")
    out = bytearray()
    out += struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    seqs = [1000 * i for i in range(streams)]
    t0 = 1_700_000_000.0
    written = 0
    with open(path, "wb") as f:
        f.write(out)
        chunk = bytearray()
        for n in range(packets):
            s = n % streams
            k = n // streams
            seqs[s] += 1
            if k % 1000 == 999:  # 0.1 % loss: skip this sequence number
                seqs[s] += 1
            t = t0 + k * 0.004 + s * 0.0001 + (k % 7) * 0.0002
            usec = round(t * 1e6)
            rec.pack_into(tmpl, 0, usec // 1_000_000, usec % 1_000_000, frame_len, frame_len)
            ip.pack_into(tmpl, 30, 0x45, 0, 20 + 8 + 12 + PAYLOAD, 0, 0, 64, 17, 0,
                         bytes((10, 0, 0, 10 + s)), b"\x0a\x00\x01\x01")
            marker = 0x80 if k % 10 == 9 else 0
            udp_rtp.pack_into(tmpl, 50, 5004, 20000 + 2 * s, 8 + 12 + PAYLOAD, 0, 0x80, 96 | marker,
                              seqs[s] & 0xFFFF, (k * 360) & 0xFFFFFFFF, 0x10000 + s)
            chunk += tmpl
            written += 1
            if len(chunk) > 1 << 22:
                f.write(chunk)
                chunk = bytearray()
        f.write(chunk)
    return written


def _run_cpu(cmd: list[str]) -> tuple[float, float]:
    """(CPU seconds user+sys, wall seconds) of one child process run to completion."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise RuntimeError(f"{cmd[0]} exited with {p.returncode}")
    return ru.ru_utime + ru.ru_stime, time.perf_counter() - t


def _median(fn: Any) -> tuple[float, float]:
    runs = [fn() for _ in range(RUNS)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def _ours(path: Path) -> tuple[float, float]:
    return _run_cpu([sys.executable, "-m", "agent", "analyze-pcap", str(path), "--json"])


def _tshark(path: Path) -> tuple[float, float]:
    tshark = shutil.which("tshark")
    assert tshark, "tshark is not installed"
    return _run_cpu([tshark, "-q", "-r", str(path), "-o", "rtp.heuristic_rtp:TRUE", "-z", "rtp,streams"])


def _scapy_timed(path: Path, limit: int) -> tuple[float, float]:
    c, w = time.process_time(), time.perf_counter()
    _scapy(path, limit)
    return time.process_time() - c, time.perf_counter() - w


def _scapy(path: Path, limit: int) -> int:
    from scapy.layers.inet import IP, UDP
    from scapy.utils import PcapReader

    n = 0
    streams: dict[tuple[Any, ...], list[int]] = {}
    with PcapReader(str(path)) as r:
        for pkt in r:
            if n >= limit:
                break
            n += 1
            if UDP not in pkt or IP not in pkt:
                continue
            ip, u = pkt[IP], pkt[UDP]
            data = bytes(u.payload)
            if len(data) < 12 or data[0] >> 6 != 2:
                continue
            _, _b1, seq, _ts, ssrc = struct.unpack_from("!BBHII", data)
            st = streams.setdefault((ip.src, ip.dst, u.sport, u.dport, ssrc), [0, seq])
            st[0] += 1
            st[1] = max(st[1], seq)
    return n


LIVE_PPS = 10_000
LIVE_SECONDS = 5
LIVE_PAYLOAD = 1200  # an HD camera's RTP packets are full-size

_LIVE_SCRIPT = """
import asyncio, ipaddress, json, sys, time
from agent.rtp import live
port, seconds = int(sys.argv[1]), float(sys.argv[2])
async def main():
    cap = live.LiveCapture("lo")
    cap.add_camera(live.Camera("bench", ipaddress.ip_address("127.0.0.1"), port))
    cap.open()
    print("ready", flush=True)
    c0 = time.process_time()
    await asyncio.sleep(seconds)
    cap.read_ready()
    cap.poll_kernel_stats()
    cpu = time.process_time() - c0
    packets = sum(s.packets for s in cap.analyzer.streams.values())
    print(json.dumps({"cpu": cpu, "packets": packets, "drops": cap.kernel_drops}), flush=True)
    cap.close()
asyncio.run(main())
"""


def _send(port: int, pps: int, seconds: float) -> int:
    """RTP packets to 127.0.0.1:port at ``pps`` for ``seconds`` (bursts of 50 every 5 ms)."""
    import socket

    total = int(pps * seconds)
    pkt = bytearray(12 + LIVE_PAYLOAD)
    hdr = struct.Struct("!BBHII")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))
        t0 = time.monotonic()
        n = 0
        while n < total:
            due = t0 + n / pps
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            for _ in range(50):
                hdr.pack_into(pkt, 0, 0x80, 96 | (0x80 if n % 40 == 39 else 0), n & 0xFFFF, n * 90, 0xCAFE)
                s.send(pkt)
                n += 1
    return n


def _live_once() -> tuple[float, float, int, int]:
    """(our CPU share %, dumpcap's CPU share %, our packets, kernel drops) for one run at LIVE_PPS."""
    import socket

    dumpcap = shutil.which("dumpcap") or "/usr/bin/dumpcap"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        port = sink.getsockname()[1]
        ours = subprocess.Popen([sys.executable, "-c", _LIVE_SCRIPT, str(port), str(LIVE_SECONDS + 1.5)],
                                stdout=subprocess.PIPE, text=True)
        assert ours.stdout is not None
        assert ours.stdout.readline().strip() == "ready"
        dc = subprocess.Popen([dumpcap, "-q", "-i", "lo", "-f", f"udp dst port {port}", "-w", "/dev/null",
                               "-a", f"duration:{LIVE_SECONDS + 1.5:.0f}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        _send(port, LIVE_PPS, LIVE_SECONDS)
        out = json.loads(ours.stdout.readline())
        ours.wait()
        _, _, ru = os.wait4(dc.pid, 0)
        dc.returncode = 0
    # both ran about LIVE_SECONDS + 1.5 s; dumpcap's start-up is small next to that
    dc_seconds = round(LIVE_SECONDS + 1.5)
    return (100 * out["cpu"] / (LIVE_SECONDS + 1.5), 100 * (ru.ru_utime + ru.ru_stime) / dc_seconds,
            out["packets"], out["drops"])


def run_live() -> list[dict[str, Any]]:
    """Live capture CPU at 10k packets/s on lo; needs root (CAP_NET_RAW). Empty without it."""
    if os.geteuid() != 0 or not shutil.which("dumpcap"):
        return []
    runs = [_live_once() for _ in range(RUNS)]
    ours = statistics.median(r[0] for r in runs)
    anchor = statistics.median(r[1] for r in runs)
    packets = [r[2] for r in runs]
    drops = sum(r[3] for r in runs)
    notes = (f"{LIVE_PPS} RTP packets/s of {12 + LIVE_PAYLOAD} bytes on lo for {LIVE_SECONDS} s, median of {RUNS}: "
             f"the agent's LiveCapture (kernel BPF filter, TPACKET_V3 ring, analyser) vs dumpcap with the same port "
             f"filter writing to /dev/null, both capturing at once; packets analysed {packets}, "
             f"kernel drops {drops} in total")
    return [{"benchmark": "live RTP capture CPU at 10k packets/s", "ours": ours, "anchor": anchor,
             "anchor_name": "dumpcap -f 'udp dst port P' -w /dev/null", "unit": "% of one core", "better": "lower",
             "notes": notes}]


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="mogli-bench-rtp-") as d:
        path = Path(d) / "rtp-1m.pcap"
        n = generate(path)
        ours_cpu, ours_wall = _median(lambda: _ours(path))
        tshark_cpu, tshark_wall = _median(lambda: _tshark(path))
        scapy_cpu, scapy_wall = _median(lambda: _scapy_timed(path, SCAPY_PACKETS))
    notes = (f"{n} packets, {STREAMS} RTP streams, Ethernet/IPv4/UDP pcap, {14 + 20 + 8 + 12 + PAYLOAD}-byte "
             f"frames; packets per CPU second (user+sys of the whole process incl. start-up; the machine is shared, "
             f"so CPU time is steadier than wall time), median of {RUNS}; wall: ours {n / ours_wall:,.0f}/s, "
             f"tshark {n / tshark_wall:,.0f}/s, scapy {SCAPY_PACKETS / scapy_wall:,.0f}/s. tshark 4.0 with "
             f"rtp.heuristic_rtp:TRUE; scapy: PcapReader + RTP header unpack on the first {SCAPY_PACKETS} packets")
    ours = n / ours_cpu
    return [
        {"benchmark": "analyze-pcap vs tshark -z rtp,streams", "ours": ours, "anchor": n / tshark_cpu,
         "anchor_name": "tshark -q -z rtp,streams", "unit": "packets/s", "better": "higher", "notes": notes},
        {"benchmark": "analyze-pcap vs scapy PcapReader loop", "ours": ours, "anchor": SCAPY_PACKETS / scapy_cpu,
         "anchor_name": "scapy PcapReader + struct RTP parse", "unit": "packets/s", "better": "higher",
         "notes": notes},
        *run_live(),
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
