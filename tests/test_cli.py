"""mogli-agent's command line: what each command loads, and the probe kinds it offers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rtp_pcap import Capture, rtp, rtp_v4

from agent.probes import PROBES


def _agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60)


def test_analyze_pcap_starts_without_the_probe_stack(tmp_path: Path) -> None:
    """analyze-pcap's speed is counted over the whole process: the probe modules, aiohttp, asyncio and yaml cost
    ~0.7 s of CPU to import, and only run, probe and check-config need them."""
    c = Capture()
    for s in range(5):
        c.add(1_700_000_000 + s * 0.02, rtp_v4("10.1.0.1", 5004, "10.1.0.2", 7000, rtp(s, s * 160, 7, pt=0)))
    path = c.write(tmp_path / "five.pcap")
    code = ("import sys; from agent.cli import main; rc = main(['analyze-pcap', '--json', sys.argv[1]]); "
            "heavy = {m.split('.')[0] for m in sys.modules} & {'aiohttp', 'asyncio', 'yaml', 'psutil'}; "
            "probes = [m for m in sys.modules if m.startswith('agent.probes')]; "
            "print(rc, sorted(heavy), probes, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert r.stderr.strip() == "0 [] []"
    assert [s["packets"] for s in json.loads(r.stdout)["streams"]] == [5]


def test_probe_help_lists_every_kind_and_an_unknown_kind_is_refused() -> None:
    r = _agent("probe", "--help")
    assert r.returncode == 0
    listed = " ".join(r.stdout.split()).split("ad hoc probe kind: ", 1)[1].split(" target ", 1)[0]
    assert listed.split(", ") == sorted(PROBES)
    r = _agent("probe", "nosuch", "x")
    assert r.returncode == 2
    assert "invalid choice: 'nosuch' (choose from " + ", ".join(repr(k) for k in sorted(PROBES)) in r.stderr
