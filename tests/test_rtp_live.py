"""Live passive RTP: the kernel filter, and a real ffmpeg stream through an impairment relay captured on lo."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import Proc, free_port, need_root, tool, wait_until
from rtp_pcap import ether, ipv4, ipv6, rtp, udp

from agent.confload import ConfigErrors, load_text
from agent.probes import rtp as rtp_probe
from agent.recorder import Recorder
from agent.rtp import bpf, live
from agent.rtp.offline import analyze_file
from agent.runner import run_probe

CAM4 = bpf.Match(ipaddress.ip_address("10.20.0.11"), 5004)
CAM4_ANY = bpf.Match(ipaddress.ip_address("10.20.0.12"))
CAM6 = bpf.Match(ipaddress.ip_address("2001:db8::11"), 6000)
PKT = rtp(1, 0, 1, payload=b"\0" * 600)


@pytest.mark.parametrize("frame,accepted", [
    (ether(ipv4("10.20.0.11", "10.20.9.1", udp(5004, 7000, PKT))), True),  # camera's source port
    (ether(ipv4("10.20.0.11", "10.20.9.1", udp(40000, 5004, PKT))), True),  # ... or destination port
    (ether(ipv4("10.20.0.11", "10.20.9.1", udp(40000, 7000, PKT))), False),  # other port
    (ether(ipv4("10.20.0.11", "10.20.9.1", udp(5004, 7000, PKT), options=b"\x01\x01\x01\x00")), True),
    (ether(ipv4("10.20.0.11", "10.20.9.1", udp(5004, 7000, PKT), frag=0x0020)), False),  # later fragment
    (ether(ipv4("10.20.0.11", "10.20.9.1", udp(5004, 7000, PKT), proto=6)), False),  # TCP
    (ether(ipv4("10.20.9.1", "10.20.0.11", udp(5004, 5004, PKT))), False),  # to the camera, not from it
    (ether(ipv4("10.20.0.12", "10.20.9.1", udp(1, 2, PKT))), True),  # camera without port: any port
    (ether(ipv4("10.20.0.13", "10.20.9.1", udp(5004, 7000, PKT))), False),  # not a camera
    (ether(ipv6("2001:db8::11", "2001:db8::1", udp(6000, 7000, PKT))), True),
    (ether(ipv6("2001:db8::11", "2001:db8::1", udp(6001, 7000, PKT))), False),
    (ether(ipv6("2001:db8::12", "2001:db8::1", udp(6000, 7000, PKT))), False),
    (ether(b"\0" * 28, ethertype=0x0806), False),  # ARP
    (ether(ipv4("10.20.0.11", "10.20.9.1", udp(5004, 7000, PKT)))[:20], False),  # cut short
])
def test_kernel_filter_program(frame: bytes, accepted: bool) -> None:
    prog = bpf.program([CAM4, CAM4_ANY, CAM6], 14, snaplen=512)
    got = bpf.run(prog, frame)
    assert got == (min(512, len(frame)) if accepted else 0)
    # the same cameras on a raw-IP interface (no link header)
    raw = bpf.run(bpf.program([CAM4, CAM4_ANY, CAM6], 0, snaplen=512), frame[14:])
    assert raw == (min(512, len(frame) - 14) if accepted else 0)


def test_filter_can_skip_outgoing_copies() -> None:
    frame = ether(ipv4("10.20.0.11", "10.20.9.1", udp(5004, 7000, PKT)))
    prog = bpf.program([CAM4], 14, snaplen=100, skip_outgoing=True)
    assert bpf.run(prog, frame, pkttype=0) == 100  # PACKET_HOST
    assert bpf.run(prog, frame, pkttype=bpf.PACKET_OUTGOING) == 0
    assert bpf.run(bpf.program([CAM4], 14, snaplen=100), frame, pkttype=bpf.PACKET_OUTGOING) == 100


def test_filter_program_grows_to_many_cameras_with_short_jumps() -> None:
    cams = [bpf.Match(ipaddress.ip_address(f"10.1.{i // 250}.{i % 250 + 1}"), 5000 + i) for i in range(300)]
    prog = bpf.program(cams, 14)
    assert all(jt < 256 and jf < 256 for _, jt, jf, _ in prog)
    last = cams[-1]
    frame = ether(ipv4(str(last.address), "10.0.0.1", udp(1234, last.port, PKT)))
    assert bpf.run(prog, frame) == 512
    other = ether(ipv4(str(last.address), "10.0.0.1", udp(1234, 4999, PKT)))
    assert bpf.run(prog, other) == 0


@pytest.mark.parametrize("target,error", [
    ("10.20.0.11", None), ("10.20.0.11:5004", None), ("[2001:db8::1]:5004", None), ("2001:db8::1", None),
    ("camera.local", "must be a camera ADDRESS"), ("10.20.0.11:99999", "must be a camera ADDRESS"),
    ("[2001:db8::1]5004", "must be a camera ADDRESS"),
])
def test_config_targets(target: str, error: str | None) -> None:
    text = f"target: '{target}'\ninterface: eth1\n"
    if error is None:
        cfg = load_text(text, rtp_probe.RtpConfig, "cam.yml")
        assert cfg.clock_rate == 90000 and cfg.interval == 5.0
    else:
        with pytest.raises(ConfigErrors) as e:
            load_text(text, rtp_probe.RtpConfig, "cam.yml")
        assert f"cam.yml:1: target: {error}" in str(e.value)


def test_interface_is_required() -> None:
    with pytest.raises(ConfigErrors) as e:
        load_text("target: 10.0.0.1\n", rtp_probe.RtpConfig, "cam.yml")
    assert "interface" in str(e.value)


@pytest.mark.parametrize("use_ring", [True, False], ids=["tpacket-v3-ring", "recvmsg"])
def test_live_capture_ring_and_recvmsg_paths(use_ring: bool) -> None:
    """Both ways of reading the socket see the same packets, with kernel timestamps, on lo."""
    need_root()

    async def scenario() -> live.LiveCapture:
        sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        for sk in sinks:
            sk.bind(("127.0.0.1", 0))
        port, port2, other = (sk.getsockname()[1] for sk in sinks)
        cap = live.LiveCapture("lo", use_ring=use_ring)
        cap.add_camera(live.Camera("c", ipaddress.ip_address("127.0.0.1"), port, 8000))
        cap.open()
        cap.add_camera(live.Camera("d", ipaddress.ip_address("127.0.0.1"), port2))  # added while capturing
        try:
            assert (cap.ring is not None) == use_ring
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                for seq in range(200):
                    if seq == 100:
                        await asyncio.sleep(1.2)  # one stall
                    if seq != 150:  # one loss
                        tx.sendto(rtp(seq, seq * 160, 0x77, pt=0, marker=seq % 10 == 0, payload=b"\0" * 160),
                                  ("127.0.0.1", port))
                    if seq < 20:  # camera d: 20 packets; and RTP to a port no camera has
                        tx.sendto(rtp(seq, seq * 3000, 0x88, pt=96), ("127.0.0.1", port2))
                        tx.sendto(rtp(seq, seq * 3000, 0x99, pt=96), ("127.0.0.1", other))
                    await asyncio.sleep(0.002)
            await asyncio.sleep(0.1)  # longer than the ring's block timeout
            cap.read_ready()
            cap.poll_kernel_stats()
            return cap
        finally:
            cap.close()
            for sk in sinks:
                sk.close()

    cap = asyncio.run(scenario())
    assert sorted(x.ssrc for x in cap.analyzer.reported()) == [0x77, 0x88]  # the kernel filter dropped 0x99
    s = next(x for x in cap.analyzer.reported() if x.ssrc == 0x77)
    assert (s.packets, s.lost, s.frames, s.stalls, s.bytes) == (199, 1, 19, 1, 199 * 172)  # 150 was a marker
    assert 1.2 <= s.max_delta < 2.0
    assert abs(s.epoch + s.first_t - time.time()) < 30  # a kernel wall-clock timestamp
    assert cap.kernel_drops == 0
    tot = cap.totals()
    assert (tot["c"].packets, tot["c"].lost, tot["c"].frames) == (199, 1, 19)
    assert (tot["d"].packets, tot["d"].lost, tot["d"].frames) == (20, 0, 0)
    assert tot["d"].jitter is not None  # dynamic PT 96 with the camera's default clock rate 90000


class Relay(asyncio.DatagramProtocol):
    """Forwards datagrams to ``dst``: drops, duplicates, swaps and delays some, for ``window`` seconds from the
    first datagram (from the first, not from ffmpeg's start: on a loaded machine its start took long enough
    that too few packets fell inside a window timed from the start).

    Keeps score of what it did, and of which packets really arrived late (``late``: a swapped packet, or a
    delayed one that a later packet overtook).
    """

    DELAY = 0.03

    def __init__(self, dst: tuple[str, int]):
        self.dst = dst
        self.window = 0.0
        self.until = 0.0
        self.n = 0
        self.dropped = self.duplicated = self.swapped = self.delayed = self.late = 0
        self.highest_sent = 0
        self.held: tuple[int, bytes] | None = None
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def _send(self, i: int, data: bytes) -> None:
        if i < self.highest_sent:
            self.late += 1
        self.highest_sent = max(self.highest_sent, i)
        self.transport.sendto(data, self.dst)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.n += 1
        i = self.n
        if i == 1:
            self.until = time.monotonic() + self.window
        impair = i > 5 and time.monotonic() < self.until
        if self.held is not None:
            self._send(i, data)
            self._send(*self.held)  # the held packet arrives one late
            self.held = None
        elif impair and i % 40 == 17:
            self.dropped += 1
        elif impair and i % 50 == 23:
            self._send(i, data)
            self.transport.sendto(data, self.dst)
            self.duplicated += 1
        elif impair and i % 60 == 31:
            self.held = (i, data)
            self.swapped += 1
        elif impair and i % 45 == 43:
            asyncio.get_running_loop().call_later(self.DELAY, self._send, i, data)
            self.delayed += 1
        else:
            self._send(i, data)


@pytest.mark.real
def test_live_capture_through_impairment_relay_matches_analyze_pcap(tmp_path: Path) -> None:
    """ffmpeg -> relay (drop/duplicate/reorder/delay) -> sink on lo; the probe and dumpcap+analyze-pcap agree."""
    need_root()
    dumpcap, ffmpeg = tool("dumpcap"), tool("ffmpeg")
    relay_port = free_port() & ~1
    sink_port = free_port()
    cap_file = tmp_path / "relay.pcapng"
    dc = Proc([dumpcap, "-i", "lo", "-f", f"udp dst port {sink_port}", "-w", str(cap_file)], tmp_path / "dc.log")
    try:
        wait_until(lambda: "Capturing on" in dc.output() or not dc.alive(), 20, "dumpcap to start")
        assert dc.alive(), dc.output()
        relay, rec, kernel = asyncio.run(_scenario(ffmpeg, relay_port, sink_port, tmp_path))
        time.sleep(0.3)
    finally:
        dc.stop()
    assert relay.dropped > 3 and relay.duplicated > 3 and relay.swapped > 3 and relay.delayed > 3, vars(relay)

    cam = (("camera", "cam-relay"),)
    counters = {name: rec.total(name, cam) for name in (
        "mogli_rtp_packets_total", "mogli_rtp_bytes_total", "mogli_rtp_lost_packets_total",
        "mogli_rtp_duplicate_packets_total", "mogli_rtp_reordered_packets_total", "mogli_rtp_frames_total",
        "mogli_rtp_stalls_total")}
    counters["mogli_capture_kernel_drops_total"] = rec.total("mogli_capture_kernel_drops_total",
                                                             (("interface", "lo"),))
    gauges = {}
    for sample in rec.drain():  # the last value of each gauge
        if sample.name.startswith("mogli_rtp_") and not sample.name.endswith("_total"):
            assert sample.labels == cam
            gauges[sample.name] = sample.value
        if sample.name == "mogli_probe_success":
            assert sample.labels == (("probe", "rtp"), ("target", "cam-relay")) and sample.value == 1
    # what the relay did, exactly
    assert counters["mogli_rtp_lost_packets_total"] == relay.dropped
    assert counters["mogli_rtp_duplicate_packets_total"] == relay.duplicated
    assert counters["mogli_rtp_reordered_packets_total"] == relay.late >= relay.swapped
    assert counters["mogli_capture_kernel_drops_total"] == 0 and kernel > 0
    # and what analyze-pcap says about dumpcap's capture of the same traffic
    an = analyze_file(cap_file, clock_rate=90000)
    (s,) = [x.summary() for x in an.reported()]
    assert counters["mogli_rtp_packets_total"] == s["packets"]
    assert counters["mogli_rtp_bytes_total"] == s["bytes"]
    assert counters["mogli_rtp_frames_total"] == s["frames"]
    assert 4 * 25 - relay.dropped <= s["frames"] <= 4 * 25  # 4 s at 25 fps, less dropped marker packets
    assert counters["mogli_rtp_duplicate_packets_total"] == s["duplicates"]
    assert counters["mogli_rtp_lost_packets_total"] == s["lost"] + s["duplicates"]
    assert counters["mogli_rtp_stalls_total"] == s["stalls"] == 0
    # dumpcap stores microseconds, the socket nanoseconds: jitter agrees to well under a microsecond per packet
    assert gauges["mogli_rtp_jitter_seconds"] * 1000 == pytest.approx(s["jitter_ms"], abs=0.002)
    assert 0 <= gauges["mogli_rtp_last_packet_age_seconds"] < 2
    assert 0 <= gauges["mogli_rtp_last_frame_age_seconds"] < 2
    assert gauges["mogli_rtp_frames_per_second"] > 0 and gauges["mogli_rtp_bitrate_bytes_per_second"] > 0


async def _scenario(ffmpeg: str, relay_port: int, sink_port: int,
                    tmp_path: Path) -> tuple[Relay, Recorder, int]:
    loop = asyncio.get_running_loop()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", sink_port))
    rtcp_sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtcp_sink.bind(("127.0.0.1", relay_port + 1))
    transport, relay = await loop.create_datagram_endpoint(
        lambda: Relay(("127.0.0.1", sink_port)), local_addr=("127.0.0.1", relay_port))
    cfg = load_text(f"target: '127.0.0.1:{sink_port}'\ninterface: lo\nname: cam-relay\n", rtp_probe.RtpConfig)
    rec = Recorder()
    try:
        assert (await run_probe("rtp", cfg, rec)).ok  # opens the capture, registers the camera
        proc = await asyncio.create_subprocess_exec(
            ffmpeg, "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
            "testsrc=size=320x240:rate=25", "-t", "4", "-c:v", "libx264", "-preset", "ultrafast", "-tune",
            "zerolatency", "-f", "rtp", "-pkt_size", "300", f"rtp://127.0.0.1:{relay_port}",
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        relay.window = 3.5  # of the 4 s stream
        for _ in range(3):  # reports while the stream runs
            await asyncio.sleep(1.0)
            assert (await run_probe("rtp", cfg, rec)).ok
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        await asyncio.sleep(0.3)
        assert (await run_probe("rtp", cfg, rec)).ok
        cap = live.capture_for("lo")
        return relay, rec, cap.kernel_packets
    finally:
        live.close_all()
        transport.close()
        sink.close()
        rtcp_sink.close()


def test_probe_without_permission_fails_with_reason_permission(tmp_path: Path) -> None:
    """As a user without CAP_NET_RAW the run fails with reason 'permission' (runs as nobody when root)."""
    import os

    code = (
        "import asyncio, json\n"
        "from agent.runner import run_probe\n"
        "from agent.confload import load_text\n"
        "from agent.probes.rtp import RtpConfig\n"
        "cfg = load_text('target: 127.0.0.1\\ninterface: lo\\n', RtpConfig)\n"
        "o = asyncio.run(run_probe('rtp', cfg))\n"
        "print(json.dumps([o.ok, o.reason]))\n"
    )
    if os.geteuid() == 0:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
               "--bounding-set=-net_raw", sys.executable, "-c", code]
    else:
        cmd = [sys.executable, "-c", code]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '[false, "permission"]'


@pytest.mark.real
def test_agent_reports_camera_metrics_to_the_collector(tmp_path: Path) -> None:
    """mogli-agent run with an rtp probe on lo; ffmpeg sends; the collector's /metrics shows the camera."""
    from helpers import sample_value, scrape, start_agent, start_collector, write_agent_config, write_collector_config

    need_root()
    ffmpeg = tool("ffmpeg")
    cport, rtp_port = free_port(), free_port() & ~1
    col = start_collector(tmp_path, cport, write_collector_config(tmp_path, cport, {"n1": "token-rtp-1"}))
    cfg = write_agent_config(tmp_path, "n1", "token-rtp-1", cport, {
        "rtp": [{"target": f"127.0.0.1:{rtp_port}", "interface": "lo", "name": "cam-a", "interval": 0.5}]})
    ag = start_agent(tmp_path, cfg)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", rtp_port))
    try:
        wait_until(lambda: sample_value(scrape(cport), "mogli_rtp_packets_total", camera="cam-a") is not None, 20,
                   "the camera's first report")
        subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
                        "testsrc=size=320x240:rate=25", "-t", "3", "-c:v", "libx264", "-preset", "ultrafast",
                        "-tune", "zerolatency", "-f", "rtp", f"rtp://127.0.0.1:{rtp_port}"],
                       check=True, capture_output=True, timeout=60)

        def done() -> str | None:
            text = scrape(cport)
            return text if sample_value(text, "mogli_rtp_frames_total", camera="cam-a") == 75 else None

        text = wait_until(done, 20, "all 75 frames reported")
        assert (sample_value(text, "mogli_rtp_packets_total", camera="cam-a", node="n1") or 0) >= 75
        assert sample_value(text, "mogli_rtp_lost_packets_total", camera="cam-a") == 0
        assert sample_value(text, "mogli_rtp_jitter_seconds", camera="cam-a") is not None
        assert sample_value(text, "mogli_capture_kernel_drops_total", interface="lo") == 0
        assert sample_value(text, "mogli_probe_success", probe="rtp", target="cam-a") == 1
    finally:
        sink.close()
        ag.stop()
        col.stop()


def test_ad_hoc_probe_from_the_command_line() -> None:
    """mogli-agent probe rtp ADDRESS:PORT --interface lo --timeout 2: listens 1 s and prints what it saw."""
    import json
    import threading

    need_root()
    port = free_port()
    stop = threading.Event()

    def sender() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            seq = 0
            while not stop.is_set():
                if seq % 50 != 7:  # every 50th packet lost
                    tx.sendto(rtp(seq, seq * 160, 0x42, pt=8, marker=True), ("127.0.0.1", port))
                seq += 1
                time.sleep(0.005)

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", port))
    th = threading.Thread(target=sender)
    th.start()
    try:
        r = subprocess.run([sys.executable, "-m", "agent", "probe", "rtp", f"127.0.0.1:{port}", "--interface", "lo",
                            "--timeout", "2", "--json"], capture_output=True, text=True, timeout=60)
    finally:
        stop.set()
        th.join()
        sink.close()
    assert r.returncode == 0, r.stderr
    (res,) = json.loads(r.stdout)["results"]
    assert res["kind"] == "rtp" and res["success"] is True and res["target"] == f"127.0.0.1:{port}"
    assert res["packets"] > 50 and res["frames"] == res["packets"]  # ~1 s at up to 200 packets/s
    assert abs(res["lost"] - res["packets"] / 49) <= 1.5  # one in 50 sequence numbers never sent
    assert res["jitter_ms"] is not None
