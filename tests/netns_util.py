"""Network namespaces and veth pairs that tests create and always remove, plus a probe driven inside one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from helpers import ROOT, need_root, tool


def ip(*args: str) -> str:
    r = subprocess.run([tool("ip"), *args], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, f"ip {' '.join(args)}: {r.stderr}"
    return r.stdout


@contextmanager
def namespaces(count: int) -> Iterator[list[str]]:
    """``count`` fresh namespaces with unique names (lo up); deleted on exit with all their interfaces."""
    need_root()
    tag = uuid.uuid4().hex[:6]
    names = [f"mgsp-{tag}-{i}" for i in range(count)]
    made: list[str] = []
    try:
        for n in names:
            ip("netns", "add", n)
            made.append(n)
            ip("-n", n, "link", "set", "lo", "up")
        yield names
    finally:
        for n in made:
            subprocess.run([tool("ip"), "netns", "del", n], capture_output=True, timeout=20)


def veth(ns_a: str, name_a: str, ns_b: str, name_b: str, addr_a: str = "", addr_b: str = "") -> None:
    """A veth pair created directly inside the two test namespaces (never in the root namespace)."""
    ip("-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)
    for ns, name, addr in ((ns_a, name_a, addr_a), (ns_b, name_b, addr_b)):
        if addr:
            ip("-n", ns, "addr", "add", addr, "dev", name)
        ip("-n", ns, "link", "set", name, "up")


class NetnsProbe:
    """tests/netns_probe.py running one probe config inside a namespace."""

    def __init__(self, ns: str, kind: str, cfg: dict[str, Any]):
        self.p = subprocess.Popen(
            [tool("ip"), "netns", "exec", ns, sys.executable, str(ROOT / "tests" / "netns_probe.py"), kind,
             json.dumps(cfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    def _cmd(self, line: str) -> str:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        out = self.p.stdout.readline()
        if not out:
            raise AssertionError(f"netns_probe died: {self.p.stderr.read() if self.p.stderr else ''}")
        return out

    def run(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self._cmd("run"))
        return result

    def udp(self, addr: str, port: int, count: int, size: int) -> None:
        assert self._cmd(f"udp {addr} {port} {count} {size}").strip() == "ok"

    def close(self) -> None:
        if self.p.poll() is None:
            assert self.p.stdin is not None
            self.p.stdin.close()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)


def value(samples: list[list[Any]], name: str, **labels: str) -> float | None:
    """The last value of one series in a run's samples."""
    got = None
    for n, lb, v in samples:
        if n == name and all(lb.get(k) == x for k, x in labels.items()):
            got = float(v)
    return got


def sysfs_file(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
