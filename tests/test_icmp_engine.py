"""The ICMP engine and probe on real sockets: loopback (127.0.0.1, ::1), raw and datagram paths.

The raw path needs CAP_NET_RAW. The datagram ("ping socket") path needs the group in
net.ipv4.ping_group_range; when this namespace does not allow it, the test opens the
engine's sockets inside a namespace of its own where it does (needs root).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import struct
import subprocess
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    BIN,
    free_port,
    need,
    need_root,
    run_fleet,
    sample_value,
    scrape,
    start_agent,
    start_collector,
    wait_until,
    write_agent_config,
    write_collector_config,
)
from netns import inside, netns, unique

from agent.icmp.engine import ENV_RECVMMSG, ENV_SOCKET, get_engine, recvmmsg_available
from agent.probes.base import ProbeResult
from agent.probes.icmp import IcmpConfig
from agent.recorder import Recorder
from agent.runner import run_probe

V4, V6 = socket.AF_INET, socket.AF_INET6
TARGETS = {V4: "127.0.0.1", V6: "::1"}


def can_open(kind: str, family: int = V4) -> bool:
    stype = socket.SOCK_DGRAM if kind == "dgram" else socket.SOCK_RAW
    try:
        socket.socket(family, stype, socket.IPPROTO_ICMP if family == V4 else socket.IPPROTO_ICMPV6).close()
    except PermissionError:
        return False
    return True


@contextlib.contextmanager
def where_kind_works(kind: str) -> Iterator[str | None]:
    """None: this namespace allows ``kind``; else the name of a namespace that does."""
    if can_open(kind):
        yield None
        return
    need_root()
    with netns(unique("icmpt"), ping_group_range="0 2147483647") as ns:
        yield ns


def open_groups(ns: str | None, kind: str, families: tuple[int, ...] = (V4, V6)) -> None:
    """Open the running loop's engine sockets (in ``ns`` when given); probes then use them."""
    eng = get_engine()
    with inside(ns) if ns else contextlib.nullcontext():
        for fam in families:
            eng.group(fam, kind, 0, False)  # type: ignore[arg-type]


def cfg(target: str, kind: str, **kw: object) -> IcmpConfig:
    base: dict[str, object] = dict(count=20, packet_interval=0.005, reply_timeout=1.0, timeout=5.0)
    base.update(kw)
    return IcmpConfig(target=target, socket=kind, **base)  # type: ignore[arg-type]


KINDS = ["dgram", "raw"]


@pytest.fixture(params=["recvmmsg", "recvmsg"])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How the engine reads replies: recvmmsg (the default where libc has it) or one recvmsg a reply (the
    fallback, forced with MOGLI_ICMP_RECVMMSG=0). Engines created in the test use it."""
    if request.param == "recvmmsg":
        need(recvmmsg_available(), "this libc has no recvmmsg")
    monkeypatch.setenv(ENV_RECVMMSG, "1" if request.param == "recvmmsg" else "0")
    return str(request.param)


def check_read_path(read_path: str) -> None:
    """The running loop's engine reads its sockets the way the test asked."""
    eng = get_engine()
    assert eng.groups
    assert all((g.mm is not None) == (read_path == "recvmmsg") for g in eng.groups.values())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", [V4, V6], ids=["ipv4", "ipv6"])
def test_round_on_loopback_records_every_metric(kind: str, family: int, read_path: str) -> None:
    if kind == "raw":
        need(can_open("raw"), "needs CAP_NET_RAW for raw ICMP sockets")
    target = TARGETS[family]
    with where_kind_works(kind) as ns:
        async def main() -> tuple[Recorder, bool, str]:
            open_groups(ns, kind, (family,))
            check_read_path(read_path)
            try:
                rec = Recorder()
                out = await run_probe("icmp", cfg(target, kind), rec)
                return rec, out.ok, out.reason
            finally:
                get_engine().close()

        rec, ok, reason = asyncio.run(main())
    assert ok, reason
    labels = (("probe", "icmp"), ("target", target))
    assert rec.total("mogli_icmp_sent_total", labels) == 20
    assert rec.total("mogli_icmp_received_total", labels) == 20
    assert rec.total("mogli_icmp_duplicates_total", labels) == 0
    samples = {s.name: s.value for s in rec.drain() if s.labels == labels}
    hist = samples["mogli_icmp_rtt_seconds"]
    assert hist.count == 20  # type: ignore[union-attr]
    assert samples["mogli_icmp_loss_ratio"] == 0
    lo, avg, hi = (samples[f"mogli_icmp_rtt_{n}_seconds"] for n in ("min", "avg", "max"))
    assert 0 < lo <= avg <= hi < 0.05  # type: ignore[operator]
    assert samples["mogli_icmp_rtt_stddev_seconds"] >= 0  # type: ignore[operator]
    assert 0 <= samples["mogli_icmp_jitter_seconds"] < 0.05  # type: ignore[operator]


@pytest.mark.parametrize("kind", KINDS)
def test_many_targets_share_one_socket_and_replies_go_to_the_right_round(kind: str, read_path: str) -> None:
    """50 loopback addresses at once through one socket per family: every round gets its own 10 replies."""
    if kind == "raw":
        need(can_open("raw"), "needs CAP_NET_RAW for raw ICMP sockets")
    targets = [f"127.7.0.{i}" for i in range(1, 41)] + [f"127.7.1.{i}" for i in range(1, 11)]
    with where_kind_works(kind) as ns:
        async def main() -> tuple[list[ProbeResult], int]:
            open_groups(ns, kind)
            check_read_path(read_path)
            from agent.probes import icmp

            try:
                results = [ProbeResult() for _ in targets]
                await asyncio.gather(*(icmp.run(cfg(t, kind, count=10), r) for t, r in zip(targets, results,
                                                                                            strict=True)))
                return results, len(get_engine().groups)
            finally:
                get_engine().close()

        results, groups = asyncio.run(main())
    assert groups == 2  # the two families opened above, nothing per target
    for t, r in zip(targets, results, strict=True):
        assert (r.detail["target"], r.detail["sent"], r.detail["received"]) == (t, 10, 10)


def _echo_reply(ident: int, seq: int, data: bytes) -> bytes:
    from agent.icmp import packet as pk

    head = struct.pack("!BBHHH", pk.ICMP_ECHO_REPLY, 0, 0, ident, seq)
    return head[:2] + struct.pack("!H", pk.checksum(head + data)) + head[4:] + data


def test_forged_replies_among_real_ones_on_a_datagram_socket_are_told_apart(read_path: str) -> None:
    """Replies injected to the datagram socket's identifier (from a raw socket, as a host on the path could)
    between the real ones: one with our token repeats an answered request and counts as a duplicate, read
    alone or in one read with two that carry another token, which are not ours and count as nothing; the
    round still gets all its replies."""
    need(can_open("raw"), "needs CAP_NET_RAW to forge replies")
    with where_kind_works("dgram") as ns:
        async def main() -> tuple[int, int, int, int]:
            open_groups(ns, "dgram", (V4,))
            check_read_path(read_path)
            eng = get_engine()
            with inside(ns) if ns else contextlib.nullcontext():
                forger = socket.socket(V4, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            try:
                rnd = eng.start("127.0.0.1", V4, count=4, packet_interval=0.2, reply_timeout=1.0, kind="dgram")
                data = bytes(rnd.pkt[8:])  # our payload: the token, then filler
                assert data.startswith(eng.token)
                other = bytes(len(eng.token)) + data[len(eng.token):]
                await asyncio.sleep(0.1)  # the first request is answered
                assert rnd.answered == 1
                ident = rnd.group.sock.getsockname()[1]  # the kernel's identifier, bound at the first send
                forger.sendto(_echo_reply(ident, rnd.start_seq, data), ("127.0.0.1", 0))  # a real duplicate
                await asyncio.sleep(0.2)  # read with the second reply: every message in the read is ours
                forger.sendto(_echo_reply(ident, rnd.start_seq, other), ("127.0.0.1", 0))  # not ours
                forger.sendto(_echo_reply(ident, (rnd.start_seq + 1) & 0xFFFF, other), ("127.0.0.1", 0))
                forger.sendto(_echo_reply(ident, rnd.start_seq, data), ("127.0.0.1", 0))  # a duplicate again
                assert rnd.future is not None
                await rnd.future
                return rnd.sent, rnd.answered, rnd.duplicates, eng.malformed
            finally:
                forger.close()
                eng.close()

        sent, answered, duplicates, malformed = asyncio.run(main())
    assert (sent, answered, duplicates, malformed) == (4, 4, 2, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_larger_payload_than_any_before_gets_every_reply(kind: str, read_path: str) -> None:
    """A round of 56-byte payloads, then one of 3,000 (replies larger than the engine's first receive
    buffers) on the same socket: both get every reply, nothing counted as undecodable."""
    if kind == "raw":
        need(can_open("raw"), "needs CAP_NET_RAW for raw ICMP sockets")
    with where_kind_works(kind) as ns:
        async def main() -> tuple[list[tuple[int, int]], int]:
            open_groups(ns, kind, (V4,))
            check_read_path(read_path)
            eng = get_engine()
            try:
                out = []
                for size in (56, 3000):
                    rnd = eng.start("127.0.0.1", V4, count=5, packet_interval=0.01, reply_timeout=1.0, size=size,
                                    kind=kind)  # type: ignore[arg-type]
                    assert rnd.future is not None
                    await rnd.future
                    out.append((rnd.sent, rnd.answered))
                return out, eng.malformed
            finally:
                eng.close()

        rounds, malformed = asyncio.run(main())
    assert rounds == [(5, 5), (5, 5)]
    assert malformed == 0


def test_dscp_and_dont_fragment_get_their_own_socket() -> None:
    need(can_open("raw"), "needs CAP_NET_RAW for raw ICMP sockets")

    async def main() -> tuple[Recorder, list[str], list[bool]]:
        try:
            rec = Recorder()
            a = await run_probe("icmp", cfg("127.0.0.1", "raw", count=3, dscp=46), rec)
            b = await run_probe("icmp", cfg("127.0.0.1", "raw", count=3, dont_fragment=True, size=1400), rec)
            keys = sorted(f"{k[2]}/{k[3]}" for k in get_engine().groups)
            return rec, keys, [a.ok, b.ok]
        finally:
            get_engine().close()

    _, keys, oks = asyncio.run(main())
    assert oks == [True, True]
    assert keys == ["0/True", "184/False"]  # tos = dscp 46 << 2


def test_socket_kind_forced_by_environment() -> None:
    """MOGLI_ICMP_SOCKET=dgram with no ping_group_range permission: a clear 'permission' failure."""
    need(not can_open("dgram"), "this namespace allows datagram ICMP sockets")
    env = {**os.environ, ENV_SOCKET: "dgram"}
    r = subprocess.run([str(BIN / "mogli-agent"), "probe", "icmp", "127.0.0.1", "--count", "1", "--json"],
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 1
    assert "permission" in r.stderr and "ping_group_range" in r.stderr, r.stderr


def test_cli_icmp_json_has_exactly_the_documented_fields() -> None:
    need(can_open("raw") or can_open("dgram"), "needs CAP_NET_RAW or ping_group_range")
    import json

    r = subprocess.run([str(BIN / "mogli-agent"), "probe", "icmp", "127.0.0.1", "--count", "3", "--interval",
                        "0.01", "--json"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert list(out) == ["target", "sent", "received", "loss_ratio", "rtt_min_s", "rtt_avg_s", "rtt_max_s",
                         "rtt_stddev_s", "jitter_s"]
    assert (out["target"], out["sent"], out["received"], out["loss_ratio"]) == ("127.0.0.1", 3, 3, 0.0)
    assert 0 < out["rtt_min_s"] <= out["rtt_avg_s"] <= out["rtt_max_s"] < 0.05


def test_cli_bad_count_is_a_config_error() -> None:
    r = subprocess.run([str(BIN / "mogli-agent"), "probe", "icmp", "127.0.0.1", "--count", "0"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "<command line>:1: count: must be >= 1, got 0" in r.stderr
    assert "Traceback" not in r.stderr


def test_fleet_runs_rounds_on_their_interval_and_records_what_the_probe_records() -> None:
    """Three loopback targets through the fleet for 2.2 s at a 0.5 s interval: every round is recorded
    with the same series a single run of the probe records, totals add up, rounds keep their spacing."""
    need(can_open("raw") or can_open("dgram"), "needs CAP_NET_RAW or ping_group_range")
    conf = dict(interval=0.5, count=3, packet_interval=0.05, reply_timeout=0.2, timeout=0.45)
    targets = ["127.0.0.1", "127.7.2.1", "::1"]
    cfgs = [IcmpConfig(target=t, name=f"t{i}", **conf) for i, t in enumerate(targets)]  # type: ignore[arg-type]
    rec = run_fleet(cfgs, 2.2)
    samples = rec.drain()

    async def one() -> set[str]:
        single = Recorder()
        try:
            await run_probe("icmp", IcmpConfig(target="127.0.0.1", name="t0", **conf), single)  # type: ignore[arg-type]
        finally:
            get_engine().close()
        return {s.name for s in single.drain()}

    expected = asyncio.run(one())
    for i in range(3):
        lb = (("probe", "icmp"), ("target", f"t{i}"))
        runs = rec.total("mogli_probe_runs_total", lb)
        assert 4 <= runs <= 5, (targets[i], runs)  # a round every 0.5 s after a start offset below 0.5 s
        assert rec.total("mogli_icmp_sent_total", lb) == 3 * runs
        assert rec.total("mogli_icmp_received_total", lb) == 3 * runs
        assert {s.name for s in samples if s.labels == lb} == expected
        ts = sorted({s.ts for s in samples if s.labels == lb})
        assert all(0.4 < b - a < 0.6 for a, b in itertools.pairwise(ts)), ts  # round starts 0.5 s apart
        assert [s.value for s in samples if s.labels == lb and s.name == "mogli_probe_success"] == [1.0] * int(runs)


def test_fleet_with_a_small_receive_buffer_reads_often_enough_to_lose_nothing(read_path: str) -> None:
    """A non-root agent's receive buffer is capped at net.core.rmem_max. 200 loopback targets at 1 pps with
    a 16 KiB buffer (~39 queued replies): the engine reads every 50 ms instead of every 250 ms (50 replies
    a read, more than the buffer holds), and every request is answered."""
    need(can_open("raw") or can_open("dgram"), "needs CAP_NET_RAW or ping_group_range")
    from agent.icmp.engine import Engine

    conf = dict(interval=3.0, count=3, packet_interval=1.0, reply_timeout=0.5, timeout=2.9)
    cfgs = [IcmpConfig(target=f"127.3.{i // 200}.{i % 200 + 1}", **conf) for i in range(200)]  # type: ignore[arg-type]

    def small_buffer(eng: Engine) -> None:
        g = eng.group(socket.AF_INET, "auto", 0, False)
        g.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        assert g.capacity() < 0.25 * 200
        assert (g.mm is not None) == (read_path == "recvmmsg")

    rec = run_fleet(cfgs, 6.0, small_buffer)
    sent = sum(rec.total("mogli_icmp_sent_total", (("probe", "icmp"), ("target", c.target))) for c in cfgs)
    got = sum(rec.total("mogli_icmp_received_total", (("probe", "icmp"), ("target", c.target))) for c in cfgs)
    assert sent > 500, sent
    assert got == sent, f"{sent - got} of {sent} replies lost"


def test_fleet_without_socket_permission_records_a_permission_failure_each_interval(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No datagram ICMP socket allowed and the kind forced to it: the fleet keeps going, each
    interval recording a failed run with reason permission (no traceback, no busy loop)."""
    need(not can_open("dgram"), "this namespace allows datagram ICMP sockets")
    monkeypatch.setenv(ENV_SOCKET, "dgram")
    rec = run_fleet([IcmpConfig(target="127.0.0.1", interval=0.3, count=1, reply_timeout=0.1, timeout=0.2)], 1.0)
    lb = (("probe", "icmp"), ("target", "127.0.0.1"))
    runs = rec.total("mogli_probe_runs_total", lb)
    assert 3 <= runs <= 4, runs
    assert rec.total("mogli_probe_failures_total", (("probe", "icmp"), ("reason", "permission"),
                                                    ("target", "127.0.0.1"))) == runs


@pytest.mark.real
def test_agent_reports_icmp_metrics_to_the_collector(tmp_path: Path) -> None:
    """The whole way: `mogli-agent run` with an icmp probe -> collector -> /metrics with every icmp series."""
    need(can_open("raw") or can_open("dgram"), "needs CAP_NET_RAW or ping_group_range")
    port = free_port()
    col = start_collector(tmp_path, port, write_collector_config(tmp_path, port, {"case1": "tok-1"}))
    agent = None
    try:
        probes = {"icmp": [{"target": "127.0.0.1", "name": "loop4", "interval": 1, "count": 5,
                            "packet_interval": 0.05, "reply_timeout": 0.5, "timeout": 0.9}]}
        agent = start_agent(tmp_path, write_agent_config(tmp_path, "case1", "tok-1", port, probes))

        def sent() -> float | None:
            v = sample_value(scrape(port), "mogli_icmp_sent_total", node="case1", target="loop4")
            return v if v is not None and v >= 10 else None

        wait_until(sent, 30, "two icmp rounds at the collector")
        text = scrape(port)
        lb = {"node": "case1", "site": "testfest", "probe": "icmp", "target": "loop4"}
        sent_total = sample_value(text, "mogli_icmp_sent_total", **lb)
        assert sent_total == sample_value(text, "mogli_icmp_received_total", **lb)
        assert sample_value(text, "mogli_icmp_duplicates_total", **lb) == 0
        assert sample_value(text, "mogli_icmp_loss_ratio", **lb) == 0
        assert sample_value(text, "mogli_icmp_rtt_seconds_count", **lb) == sent_total
        assert 0 < (sample_value(text, "mogli_icmp_rtt_avg_seconds", **lb) or 0) < 0.05
        for g in ("min", "max", "stddev"):
            assert sample_value(text, f"mogli_icmp_rtt_{g}_seconds", **lb) is not None
        assert sample_value(text, "mogli_icmp_jitter_seconds", **lb) is not None
        assert sample_value(text, "mogli_probe_success", **lb) == 1
    finally:
        if agent is not None:
            agent.stop()
        col.stop()


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_gc_loop_frees_cycles_new_ones_each_pass_old_ones_at_the_full_pass() -> None:
    """The agent's own collector (automatic passes off): a reference cycle made while it runs is freed
    by the next pass; one that survived a pass (frozen since) by the next full pass."""
    import gc

    from agent.runner import gc_loop

    async def main() -> tuple[bool, bool, bool]:
        task = asyncio.create_task(gc_loop(interval=0.2, full_every=3))
        await asyncio.sleep(0.1)
        assert not gc.isenabled()
        old = _cycle()  # unreachable, but only the collector can free it
        keep = _Node()
        keep.other = keep  # a live object in a cycle: survives, frozen after the first pass
        await asyncio.sleep(0.2)  # pass 1 (t=0.2)
        freed_new = old() is None
        held = weakref.ref(keep)
        del keep  # now garbage, but frozen: passes 2 skips it, the full pass 3 frees it
        await asyncio.sleep(0.2)  # pass 2 (t=0.4)
        kept_while_frozen = held() is not None
        await asyncio.sleep(0.2)  # pass 3 (t=0.6): full
        freed_old = held() is None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return freed_new, kept_while_frozen, freed_old

    freed_new, kept_while_frozen, freed_old = asyncio.run(main())
    assert gc.isenabled() and gc.get_freeze_count() == 0  # put back as it was
    assert freed_new and kept_while_frozen and freed_old
