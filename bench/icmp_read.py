"""ICMP engine: CPU time to read one queued echo reply, recvmmsg against one recvmsg a reply.

One engine, one socket: K loopback targets (127.1.x.y) are sent one echo request each through the engine's
timer (its read turned off for that), the replies wait 50 ms in the socket, then one read of the socket
(``_Group.drain``: receive, decode, match to the round) is timed with process_time and divided by K. The
read path alternates on the same socket between recvmmsg (ours, the default) and the fallback, one
``recvmsg`` a reply (the anchor, ``MOGLI_ICMP_RECVMMSG=0``); new rounds each time. Sockets: raw and/or
datagram, whichever this process may open. Pinned to one CPU; the first repetition (addresses seen for the
first time, cold caches) is not counted; medians.

Run: python -m bench icmp_read   (needs CAP_NET_RAW or ping_group_range)
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import time
from typing import Any

from agent.icmp import engine as eng_mod

K = 2500
"""Replies one socket has queued at each 250 ms tick with 10,000 targets at 1 pps."""
REPS = 15
CPU = max(os.sched_getaffinity(0))


def _one_read(eng: eng_mod.Engine, g: Any, kind: str, targets: list[str]) -> float:
    """Seconds of CPU one read of K queued replies took."""
    rounds = [eng.start(t, socket.AF_INET, count=10, packet_interval=1.0, reply_timeout=5.0,
                        kind=kind) for t in targets]  # type: ignore[arg-type]
    for other in eng.groups.values():
        other.drain = lambda: None  # type: ignore[method-assign]  # the tick sends, the read comes later
    try:
        eng._tick()
    finally:
        for other in eng.groups.values():
            del other.drain
    time.sleep(0.05)
    c0 = time.process_time()
    g.drain()
    took = time.process_time() - c0
    answered = sum(r.answered for r in rounds)
    for other in eng.groups.values():
        other.drain()  # a raw socket sees every reply on the host: empty them all
    for r in rounds:
        if not r.done:
            eng.finish(r)
    if answered != K:
        raise RuntimeError(f"{kind}: {answered} of {K} replies read")
    return took


def run() -> list[dict[str, Any]]:
    if not eng_mod.recvmmsg_available():
        return []
    old_affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CPU})
    loop = asyncio.new_event_loop()
    eng = eng_mod.Engine(loop)
    rows = []
    try:
        targets = [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(K)]
        for kind in ("raw", "dgram"):
            try:
                g = eng.group(socket.AF_INET, kind, 0, False)  # type: ignore[arg-type]
            except PermissionError:
                continue
            mm = eng_mod._Mmsg(socket.AF_INET, eng.bufsize)
            times: dict[str, list[float]] = {"recvmmsg": [], "recvmsg": []}
            for rep in range(REPS + 1):
                for path in times:
                    g.mm = mm if path == "recvmmsg" else None
                    took = _one_read(eng, g, kind, targets)
                    if rep:
                        times[path].append(took)
            g.mm = mm
            ours, anchor = (statistics.median(times[p]) / K * 1e6 for p in ("recvmmsg", "recvmsg"))
            rows.append({
                "benchmark": f"icmp: read one of {K} queued loopback echo replies ({kind} socket), CPU time",
                "ours": round(ours, 2),
                "anchor": round(anchor, 2),
                "anchor_name": "one recvmsg a reply (MOGLI_ICMP_RECVMMSG=0)",
                "unit": "µs",
                "better": "lower",
                "notes": f"one socket, read paths alternating, median of {REPS} reads each, pinned to CPU {CPU}",
            })
    finally:
        eng.close()
        loop.close()
        os.sched_setaffinity(0, old_affinity)
    return rows


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1, ensure_ascii=False))
