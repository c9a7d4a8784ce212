"""Run one probe kind repeatedly inside a network namespace, driven over stdin.

Used by tests as ``ip netns exec NS python tests/netns_probe.py KIND CONFIG_JSON``. Commands, one per line:
``run`` (one probe run through the real runner and recorder; prints the samples as one JSON line),
``udp ADDR PORT COUNT SIZE`` (send COUNT datagrams of SIZE bytes; prints "ok"), ``quit``.
The probe's config object lives as long as the process, like in the agent.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time

from agent.confload import load_text
from agent.probes import PROBES
from agent.recorder import Recorder
from agent.runner import run_probe


def main() -> None:
    kind, cfg_json = sys.argv[1], sys.argv[2]
    cfg = load_text(cfg_json, PROBES[kind].config, "<netns_probe>")
    rec = Recorder()
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "run":
            out = asyncio.run(run_probe(kind, cfg, rec))
            samples = [[s.name, dict(s.labels), s.value] for s in rec.drain()]
            print(json.dumps({"ok": out.ok, "reason": out.reason, "samples": samples}), flush=True)
        elif cmd[0] == "udp":
            addr, port, count, size = cmd[1], int(cmd[2]), int(cmd[3]), int(cmd[4])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _ in range(count):
                    s.sendto(b"x" * size, (addr, port))
                    time.sleep(0.0005)
            print("ok", flush=True)


if __name__ == "__main__":
    main()
