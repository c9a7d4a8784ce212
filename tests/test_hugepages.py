"""Huge pages for a large agent's heap (agent/hugepages.py): what is advised, that the kernel really backs the heap
with them, and that a running agent asks for them when told to."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import BIN, Proc, free_port, wait_until, write_agent_config

from agent import hugepages

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MiB = 1 << 20


def _thp_or_skip() -> None:
    if not THP.exists() or "[never]" in THP.read_text():
        pytest.skip("this kernel has no transparent huge pages (or they are set to never)")


def _anon_huge(pid: int | str = "self") -> int:
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    m = re.search(r"^AnonHugePages:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else 0


def test_only_resident_private_anonymous_mappings_are_advised_on_2_mib_bounds() -> None:
    smaps = textwrap.dedent("""\
        00400000-00a00000 rw-p 00000000 00:00 0                                  [heap]
        Size:               6144 kB
        Rss:                6000 kB
        7f0000100000-7f0000900000 rw-p 00000000 00:00 0
        Size:               8192 kB
        Rss:                8192 kB
        7f0001000000-7f0001800000 rw-p 00000000 00:00 0
        Size:               8192 kB
        Rss:                 100 kB
        7f0002000000-7f0002800000 rw-p 00001000 08:01 1234                       /usr/lib/libfoo.so
        Size:               8192 kB
        Rss:                8192 kB
        7f0003000000-7f0003800000 r--p 00000000 00:00 0
        Size:               8192 kB
        Rss:                8192 kB
        7ffc00000000-7ffc00800000 rw-p 00000000 00:00 0                          [stack]
        Size:               8192 kB
        Rss:                8192 kB
        7f0004000000-7f0004300000 rw-p 00000000 00:00 0
        Size:               3072 kB
        Rss:                3072 kB
        """)
    assert hugepages.candidates(smaps) == [
        (0x400000, 0xA00000),  # the [heap], already aligned
        (0x7F0000200000, 0x7F0000800000),  # 8 MiB from 1 MiB past a boundary: the three whole 2 MiB pages in it
        (0x7F0004000000, 0x7F0004200000),  # 3 MiB: one whole 2 MiB page
    ]  # not: the sparse one, the file, the read-only one, the stack


def test_auto_asks_from_2000_icmp_targets_and_the_environment_overrides() -> None:
    assert not hugepages.wanted(1999, "auto")
    assert hugepages.wanted(2000, "auto")
    assert hugepages.wanted(1, "on")
    assert not hugepages.wanted(50_000, "off")
    with pytest.raises(ValueError, match="MOGLI_HUGE_PAGES='maybe': must be auto, on or off"):
        hugepages.wanted(1, "maybe")


def test_a_large_heap_is_backed_by_huge_pages_after_a_pass() -> None:
    """In a fresh process with ~150 MB of small Python objects (what 10,000 ICMP targets keep), one pass moves
    most of the heap onto 2 MiB pages."""
    _thp_or_skip()
    code = textwrap.dedent("""\
        import re, sys
        from pathlib import Path
        from agent import hugepages
        def huge():
            return int(re.search(r"^AnonHugePages:\\s+(\\d+) kB", Path("/proc/self/smaps_rollup").read_text(),
                                 re.M).group(1)) << 10
        keep = [[i, float(i), str(i)] for i in range(1_000_000)]
        before = huge()
        hp = hugepages.HugePages()
        advised = hp.advise()
        again = hp.advise()
        print(before, huge(), advised, again, hp.active)
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
    assert out.returncode == 0, out.stderr
    before, after, advised, again, active = out.stdout.split()
    assert active == "True"
    assert int(advised) >= 100 * MiB
    assert int(after) - int(before) >= 80 * MiB, out.stdout  # collapsed at once, not left to khugepaged
    # the next pass takes in only what is new: at most a range that grew past half resident since (2 MiB seen once in
    # four runs), never the heap again
    assert int(again) <= 4 * MiB, out.stdout


def test_the_agent_asks_for_huge_pages_when_told_to_and_refuses_a_bad_setting(tmp_path: Path) -> None:
    _thp_or_skip()
    cfg = write_agent_config(tmp_path, "hp", "x" * 32, free_port(),
                             {"icmp": [{"target": "127.0.0.1", "interval": 1, "count": 1, "timeout": 0.9,
                                        "reply_timeout": 0.5}]},
                             log_level="info")
    bad = subprocess.run([str(BIN / "mogli-agent"), "run", "-c", str(cfg)], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, MOGLI_HUGE_PAGES="maybe"))
    assert bad.returncode != 0
    assert "MOGLI_HUGE_PAGES='maybe': must be auto, on or off" in bad.stderr

    agent = Proc([str(BIN / "mogli-agent"), "run", "-c", str(cfg)], tmp_path / "hp.log",
                 env=dict(os.environ, MOGLI_HUGE_PAGES="on"))
    try:
        wait_until(lambda: not agent.alive() or "huge pages:" in agent.output(), 30, "the agent's huge-page pass")
        assert agent.alive(), agent.output()[-2000:]
        assert re.search(r"huge pages: \d+ MiB more of the heap", agent.output()), agent.output()[-2000:]
        assert _anon_huge(agent.p.pid) >= 2 * MiB
    finally:
        agent.stop()
