"""The report format and the agent's spool."""

from __future__ import annotations

import gzip
import json
import logging
import math
import sqlite3
import time
import zlib
from pathlib import Path

import pytest

from agent import wire
from agent.catalog import RTT_BUCKETS as RTT_BOUNDS
from agent.recorder import Recorder
from agent.runner import spread_offset
from agent.spool import Spool

T0 = 1_790_000_000.0


def _report(samples: tuple[wire.Sample, ...] = ()) -> wire.Report:
    return wire.Report("stiftsplatz", "maikerwe-2026", "0123456789abcdef", 7, T0, samples)


def test_round_trip_keeps_every_field() -> None:
    rec = Recorder()
    base = (("probe", "tcp"), ("target", "collector"))
    rec.gauge("mogli_probe_success", base, 1, T0 + 1)
    rec.inc("mogli_probe_runs_total", base, 1, T0 + 1)
    rec.inc("mogli_probe_runs_total", base, 1, T0 + 2)
    r = _report(tuple(rec.drain()))
    back = wire.parse(json.loads(wire.decompress(wire.encode(r), "gzip", 10**6)))
    assert back == r
    assert [s.value for s in back.samples] == [1.0, 1.0, 2.0]  # counters carry running totals


def test_histogram_value_round_trip() -> None:
    h = wire.Histogram(((0.001, 1.0), (0.01, 3.0), (math.inf, 4.0)), 0.5, 4.0)
    body = h.to_json()
    assert body["buckets"][-1] == ["+Inf", 4.0]
    assert wire._histogram(json.loads(json.dumps(body)), "v") == h


def test_encode_writes_the_version_2_body_and_parse_reads_it_back() -> None:
    """The fast writer and the plain statement of the format (report_body) agree, byte for byte after
    JSON decoding, on what a recorder makes: runs of values with one label set and time grouped."""
    rec = Recorder()
    a = (("probe", "icmp"), ("target", "gw"))
    rec.values(a, T0 + 1, [("mogli_probe_success", 1.0), ("mogli_icmp_rtt_avg_seconds", 1.25e-05)],
               [("mogli_probe_runs_total", 1.0)])
    rec.observe_many("mogli_icmp_rtt_seconds", a, [0.0004, 0.002, 0.3], T0 + 1)
    rec.inc("mogli_probe_failures_total", (("probe", "icmp"), ("reason", "timeout"), ("target", "gw")), 1, T0 + 1)
    rec.gauge("mogli_probe_success", a, 0.0, T0 + 2)
    rec.gauge("mogli_agent_spool_bytes", (), 1e16, T0 + 2)
    r = _report(tuple(rec.drain()))
    obj = json.loads(wire.decompress(wire.encode(r), "gzip", 10**6))
    assert obj == wire.report_body(r)
    assert [len(g["values"]) for g in obj["groups"]] == [4, 1, 1, 1]  # one probe run is one group
    assert obj["groups"][0]["values"][3] == ["mogli_icmp_rtt_seconds", {
        "buckets": [[le, sum(v <= le for v in (0.0004, 0.002, 0.3))] for le in RTT_BOUNDS] + [["+Inf", 3]],
        "sum": 0.3024, "count": 3}]
    assert wire.parse(obj) == r
    empty = _report()
    assert wire.parse(json.loads(wire.decompress(wire.encode(empty), "gzip", 10**6))) == empty


def test_encode_leaves_out_values_that_are_not_finite() -> None:
    s = [wire.Sample("mogli_probe_success", (("probe", "tcp"), ("target", "a")), v, T0) for v in
         (float("nan"), 1.0, float("inf"))]
    s.append(wire.Sample("mogli_probe_success", (("probe", "tcp"), ("target", "b")), float("nan"), T0))
    back = wire.parse(json.loads(wire.decompress(wire.encode(_report(tuple(s))), "gzip", 10**6)))
    assert [x.value for x in back.samples] == [1.0]


def test_version_1_bodies_of_older_agents_are_still_read() -> None:
    s = wire.Sample("mogli_probe_success", (("probe", "tcp"), ("target", "a")), 1.0, T0)
    obj = wire.report_body(_report((s,)), version=1)
    assert obj["samples"][0] == {"name": "mogli_probe_success", "type": "gauge",
                                 "labels": {"probe": "tcp", "target": "a"}, "value": 1.0, "ts": T0}
    assert wire.parse(obj) == _report((s,))


@pytest.mark.parametrize(
    ("version", "mutate", "path", "fragment"),
    [
        (2, lambda o: o.pop("seq"), "seq", "missing"),
        (2, lambda o: o.update(seq=0), "seq", ">= 1"),
        (2, lambda o: o.update(version=3), "version", "unsupported"),
        (2, lambda o: o.update(version=True), "version", "unsupported"),
        (2, lambda o: o.update(node="../etc"), "node", "does not match"),
        (2, lambda o: o.update(extra=1), "extra", "unknown field"),
        (2, lambda o: o.update(samples=[]), "samples", "unknown field"),
        (2, lambda o: o["groups"][0].update(extra=1), "groups[0]", "exactly the fields"),
        (2, lambda o: o["groups"][0].update(values=[]), "groups[0].values", "non-empty"),
        (2, lambda o: o["groups"][0]["values"].append(["mogli_probe_success"]), "groups[0].values[1]", "[name, value]"),
        (2, lambda o: o["groups"][0]["values"][0].__setitem__(0, "evil_metric"), "groups[0].values[0][0]",
         "unknown metric"),
        (2, lambda o: o["groups"][0]["values"][0].__setitem__(1, "1"), "groups[0].values[0][1]", "expected a number"),
        (2, lambda o: o["groups"][0]["values"][0].__setitem__(1, {"buckets": []}), "groups[0].values[0][1]",
         "expected a number"),
        (2, lambda o: o["groups"][0]["values"].append(["mogli_probe_runs_total", -1]), "groups[0].values[1][1]",
         "negative"),
        (2, lambda o: o["groups"][0]["values"].append(["mogli_icmp_rtt_seconds", 3]), "groups[0].values[1][1]",
         "histogram value"),
        (2, lambda o: o["groups"][0]["values"].append(["mogli_agent_spool_bytes", 3]), "groups[0].labels",
         "mogli_agent_spool_bytes has the labels none"),
        (2, lambda o: o["groups"][0]["labels"].update(node="x"), "groups[0].labels.node", "reserved"),
        (2, lambda o: o["groups"][0]["labels"].update(target="x" * 300), "groups[0].labels.target", "longer"),
        (2, lambda o: o["groups"][0]["labels"].pop("probe"), "groups[0].labels", "has the labels probe, target"),
        (2, lambda o: o["groups"][0].update(ts=-5), "groups[0].ts", "out of range"),
        (1, lambda o: o.update(groups=[]), "groups", "unknown field"),
        (1, lambda o: o["samples"][0].update(name="evil_metric"), "samples[0].name", "unknown metric"),
        (1, lambda o: o["samples"][0].update(type="counter"), "samples[0].type", "is a gauge"),
        (1, lambda o: o["samples"][0].update(value="1"), "samples[0].value", "expected a number"),
        (1, lambda o: o["samples"][0].update(value=float("nan")), "samples[0].value", "finite"),
        (1, lambda o: o["samples"][0]["labels"].update(node="x"), "samples[0].labels.node", "reserved"),
        (1, lambda o: o["samples"][0]["labels"].update(station="x"), "samples[0].labels.station", "has no label"),
        (1, lambda o: o["samples"][0]["labels"].update(target="x" * 300), "samples[0].labels.target", "longer"),
        (1, lambda o: o["samples"][0]["labels"].pop("probe"), "samples[0].labels", "missing label"),
        (1, lambda o: o["samples"][0].update(ts=-5), "samples[0].ts", "out of range"),
    ],
)
def test_bad_fields_are_named(version: int, mutate, path: str, fragment: str) -> None:  # type: ignore[no-untyped-def]
    """Version 2 as the agent writes it, version 1 as older agents spooled it."""
    s = wire.Sample("mogli_probe_success", (("probe", "tcp"), ("target", "a")), 1.0, T0)
    if version == 2:
        obj = json.loads(wire.decompress(wire.encode(_report((s,))), "gzip", 10**6))
    else:
        obj = wire.report_body(_report((s,)), version=1)
    mutate(obj)
    with pytest.raises(wire.WireError) as e:
        wire.parse(obj)
    assert e.value.path == path and fragment in e.value.message


def test_too_many_samples_is_413_in_both_versions() -> None:
    s = wire.Sample("mogli_probe_success", (("probe", "tcp"), ("target", "a")), 1.0, T0)
    many = _report(tuple(s._replace(ts=T0 + i % 2) for i in range(wire.MAX_SAMPLES + 1)))
    for version in (1, 2):
        with pytest.raises(wire.WireError) as e:
            wire.parse(wire.report_body(many, version))
        assert e.value.status == 413


def test_gzip_bomb_and_broken_gzip_are_refused() -> None:
    bomb = gzip.compress(b"{" + b" " * 5_000_000 + b"}")
    with pytest.raises(wire.WireError) as e:
        wire.decompress(bomb, "gzip", 1_000_000)
    assert e.value.status == 413
    with pytest.raises(wire.WireError, match="broken gzip"):
        wire.decompress(b"\x1f\x8bnot really", "gzip", 1000)
    with pytest.raises(wire.WireError, match="truncated"):
        wire.decompress(gzip.compress(b"{}" * 100)[:20], "gzip", 1000)


def _append(sp: Spool, n: int, size: int = 10, now: float = T0) -> list[int]:
    return [sp.append(lambda seq: b"x" * size, 1, (), now + i) for i in range(n)]


def test_spool_sequence_survives_reopen_and_kill(tmp_path: Path) -> None:
    p = tmp_path / "spool.db"
    sp = Spool(p, 10**6, 10**6)
    assert _append(sp, 3) == [1, 2, 3]
    stream = sp.stream
    sp.delete(1)
    # no close(): as after kill -9, the WAL holds the committed transactions
    sp2 = Spool(p, 10**6, 10**6)
    assert sp2.stream == stream
    assert sp2.oldest() is not None and sp2.oldest().seq == 2  # type: ignore[union-attr]
    assert _append(sp2, 1) == [4]
    assert oct(p.stat().st_mode & 0o777) == "0o600"


def test_spool_bound_drops_oldest_and_counts(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.db", max_bytes=100_000, max_age=3600)
    seqs = _append(sp, 30, size=10_000)
    st = sp.stats()
    assert st.bytes <= 100_000 and st.dropped == 30 - st.batches
    assert sp.oldest().seq == seqs[-st.batches]  # type: ignore[union-attr]
    # age bound: everything older than an hour goes when a new batch arrives
    sp.append(lambda seq: b"y", 1, (), T0 + 7200)
    assert sp.stats().batches == 1 and sp.stats().dropped == 30


def _saved(rec: Recorder, sp: Spool, now: float = T0) -> int:
    """What Agent.cut_batch does with the totals: the changed ones go with the batch."""
    seq = sp.append(lambda seq: b"b", 1, rec.changed_totals(), now)
    rec.totals_saved()
    return seq


def test_totals_that_are_not_finite_survive_a_restart(tmp_path: Path) -> None:
    """A histogram whose sum overflowed to infinity is saved as JSON the next start can read (repr's 'inf'
    is not JSON: the agent could not have loaded its totals again)."""
    rec = Recorder(encoded=True)
    icmp = (("probe", "icmp"), ("target", "gw"))
    rec.observe_many("mogli_icmp_rtt_seconds", icmp, [1e308, 1e308], T0)
    rec.inc("mogli_probe_runs_total", icmp, 3, T0)
    sp = Spool(tmp_path / "s.db", 10**6, 10**6)
    _saved(rec, sp)
    again = Recorder()
    again.load_totals(Spool(tmp_path / "s.db", 10**6, 10**6).totals())
    assert again.total("mogli_probe_runs_total", icmp) == 3
    again.observe_many("mogli_icmp_rtt_seconds", icmp, [0.001], T0 + 1)  # counting goes on where it was
    ((_, row),) = again.changed_totals()
    _, counts, total = json.loads(row)["h"]["mogli_icmp_rtt_seconds"]
    assert sum(counts) == 3 and math.isinf(total)


def test_spool_keeps_totals_with_the_batch_and_writes_only_changed_ones(tmp_path: Path) -> None:
    a, b = (("probe", "tcp"), ("target", "a")), (("probe", "tcp"), ("target", "b"))
    icmp = (("probe", "icmp"), ("target", "gw"))
    rec = Recorder()
    rec.inc("mogli_probe_runs_total", a, 5, T0)
    rec.inc("mogli_probe_runs_total", b, 1, T0)
    rec.observe_many("mogli_icmp_rtt_seconds", icmp, [0.0004, 0.03], T0)
    sp = Spool(tmp_path / "s.db", 10**6, 10**6)
    _saved(rec, sp)
    rec.inc("mogli_probe_runs_total", a, 2, T0 + 1)
    rows = rec.changed_totals()  # only a's row: b's and the histogram's are stored already
    assert [(json.loads(k), json.loads(v)) for k, v in rows] == [([list(x) for x in a],
                                                                   {"c": {"mogli_probe_runs_total": 7.0}, "h": {}})]
    _saved(rec, sp, T0 + 1)
    assert rec.changed_totals() == []
    sp.close()
    again = Recorder()  # the agent restarted
    again.load_totals(Spool(tmp_path / "s.db", 10**6, 10**6).totals())
    assert again.total("mogli_probe_runs_total", a) == 7 and again.total("mogli_probe_runs_total", b) == 1
    again.observe("mogli_icmp_rtt_seconds", icmp, 0.5, T0 + 2)
    h = again.drain()[-1].value
    assert isinstance(h, wire.Histogram) and h.count == 3 and h.sum == pytest.approx(0.5304)


def test_totals_survive_a_failed_append(tmp_path: Path) -> None:
    """A batch that cannot be stored keeps its totals pending for the next one."""
    rec = Recorder()
    rec.inc("mogli_probe_runs_total", (("probe", "tcp"), ("target", "a")), 5, T0)
    sp = Spool(tmp_path / "s.db", 10**6, 10**6)

    def broken(seq: int) -> bytes:
        raise OSError("disk full")

    with pytest.raises(OSError):
        sp.append(broken, 1, rec.changed_totals(), T0)
    assert sp.totals() == [] and sp.stats().batches == 0
    _saved(rec, sp)
    assert [json.loads(v)["c"] for _, v in sp.totals()] == [{"mogli_probe_runs_total": 5.0}]
    # also when the journal is full and the failed append would have folded it into the table
    full = Spool(tmp_path / "full.db", 10**6, 10**6, log_rows=2)
    _saved(rec_a := _runs({"a": 1}), full)
    rec_a.inc("mogli_probe_runs_total", _tcp("a"), 1, T0)
    with pytest.raises(OSError):
        full.append(broken, 1, rec_a.changed_totals(), T0)
    assert _runs_of(Spool(tmp_path / "full.db", 10**6, 10**6)) == {"a": 1}
    _saved(rec_a, full)
    assert _runs_of(Spool(tmp_path / "full.db", 10**6, 10**6)) == {"a": 2}


def _tcp(target: str) -> tuple[tuple[str, str], ...]:
    return (("probe", "tcp"), ("target", target))


def _runs(counts: dict[str, int]) -> Recorder:
    rec = Recorder()
    for t, n in counts.items():
        rec.inc("mogli_probe_runs_total", _tcp(t), n, T0)
    return rec


def _runs_of(sp: Spool) -> dict[str, float]:
    """mogli_probe_runs_total per target, as an agent restarted on this spool gets them."""
    rec = Recorder()
    rec.load_totals(sp.totals())
    return {labels[1][1]: rec.total("mogli_probe_runs_total", labels) for labels in
            (tuple(tuple(p) for p in json.loads(k)) for k, _ in sp.totals())}


def test_totals_survive_reopening_with_the_journal_and_after_folds(tmp_path: Path) -> None:
    """Each batch's changed totals go to one journal row; every log_rows rows they are folded into the
    table. A restart (no close: as after kill -9) finds the latest total of every label set either way."""
    p = tmp_path / "s.db"
    sp = Spool(p, 10**6, 10**6, log_rows=4)
    rec = _runs({"a": 1, "b": 1, "tab\there\nnewline": 1})  # JSON escapes them: the journal's framing holds
    _saved(rec, sp)
    rec.inc("mogli_probe_runs_total", _tcp("a"), 1, T0)
    _saved(rec, sp)
    _saved(rec, sp)  # nothing changed: no journal row
    assert sp.db.execute("SELECT COUNT(*) FROM totals_log").fetchone()[0] == 2
    assert sp.db.execute("SELECT COUNT(*) FROM totals").fetchone()[0] == 0
    assert _runs_of(Spool(p, 10**6, 10**6)) == {"a": 2, "b": 1, "tab\there\nnewline": 1}
    for i in range(25):  # a changes with every batch, b every fifth: folds happen in between
        rec.inc("mogli_probe_runs_total", _tcp("a"), 1, T0)
        if i % 5 == 0:
            rec.inc("mogli_probe_runs_total", _tcp("b"), 1, T0)
        _saved(rec, sp)
        assert sp.db.execute("SELECT COUNT(*) FROM totals_log").fetchone()[0] < 4
        assert _runs_of(Spool(p, 10**6, 10**6)) == {"a": 3 + i, "b": 2 + i // 5, "tab\there\nnewline": 1}
    assert sp.db.execute("SELECT COUNT(*) FROM totals").fetchone()[0] == 3  # folded: one row per label set
    # rows with a raw tab or newline (not the recorder's JSON) cannot be journal lines: they are folded at once
    rec.inc("mogli_probe_runs_total", _tcp("a"), 1, T0)
    sp.append(lambda seq: b"b", 1, [*rec.changed_totals(), ("raw\tkey", "raw\nvalue")], T0)
    assert sp.db.execute("SELECT COUNT(*) FROM totals_log").fetchone()[0] == 0
    saved = dict(Spool(p, 10**6, 10**6).totals())
    assert saved["raw\tkey"] == "raw\nvalue"
    assert json.loads(saved['[["probe","tcp"],["target","a"]]'])["c"] == {"mogli_probe_runs_total": 28.0}


def test_a_spool_of_the_previous_schema_loads_and_keeps_working(tmp_path: Path) -> None:
    """Spools written before the journal: the totals table and no totals_log."""
    p = tmp_path / "s.db"
    db = sqlite3.connect(p, isolation_level=None)
    db.executescript("""
        PRAGMA journal_mode=WAL;
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE batches (seq INTEGER PRIMARY KEY, created REAL NOT NULL, samples INTEGER NOT NULL,
                              body BLOB NOT NULL);
        CREATE TABLE totals (labels TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        INSERT INTO meta VALUES ('stream', '00112233aabbccdd'), ('next_seq', '8'), ('dropped', '0');
        INSERT INTO batches VALUES (7, 1790000000.0, 1, x'00');
    """)
    db.executemany("INSERT INTO totals VALUES (?, ?)", _runs({"a": 4, "b": 9}).changed_totals())
    db.close()
    sp = Spool(p, 10**6, 10**6, log_rows=3)
    assert sp.stream == "00112233aabbccdd" and _runs_of(sp) == {"a": 4, "b": 9}
    rec = Recorder()
    rec.load_totals(sp.totals())
    for _ in range(5):
        rec.inc("mogli_probe_runs_total", _tcp("a"), 1, T0)
        assert _saved(rec, sp) >= 8
    assert _runs_of(Spool(p, 10**6, 10**6)) == {"a": 9, "b": 9}


def test_a_damaged_journal_row_is_skipped_with_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Flash that returns garbage for one journal row: the agent starts with everything else, and the
    log names the spool and the row."""
    p = tmp_path / "s.db"
    sp = Spool(p, 10**6, 10**6)
    rec = _runs({"a": 1, "b": 1})
    for t in ("a", "b", "a"):  # seq 1: a=1 b=1, seq 2: b=2, seq 3: a=2
        _saved(rec, sp)
        rec.inc("mogli_probe_runs_total", _tcp(t), 1, T0)
    _saved(rec, sp)  # seq 4: a=3
    db = sqlite3.connect(p)
    db.execute("UPDATE totals_log SET body=? WHERE seq=2", (bytes(range(256)) * 3,))
    db.execute("UPDATE totals_log SET body=? WHERE seq=3", (zlib.compress(b'["no tab in this line"]'),))
    db.commit()
    db.close()
    caplog.set_level(logging.ERROR, "mogli.agent.spool")
    again = Spool(p, 10**6, 10**6, log_rows=6)
    assert _runs_of(again) == {"a": 3, "b": 1}  # b's change was in the damaged row 2
    errors = [r.getMessage() for r in caplog.records]
    assert any(str(p) in m and "seq 2" in m for m in errors), errors
    assert any(str(p) in m and "seq 3" in m for m in errors), errors
    rec = Recorder()
    rec.load_totals(again.totals())
    rec.inc("mogli_probe_runs_total", _tcp("b"), 5, T0)
    _saved(rec, again)
    rec.inc("mogli_probe_runs_total", _tcp("a"), 1, T0)
    _saved(rec, again)  # the journal is full (6 rows): folded, the damaged rows go
    assert again.db.execute("SELECT COUNT(*) FROM totals_log").fetchone()[0] == 0
    assert _runs_of(Spool(p, 10**6, 10**6)) == {"a": 4, "b": 6}


def _old_append(db: sqlite3.Connection, rows: list[tuple[str, str]], now: float) -> None:
    """Spool.append before the journal: every changed row into the table, in the batch's transaction."""
    db.execute("BEGIN IMMEDIATE")
    seq = int(db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()[0])
    db.execute("INSERT INTO batches(seq, created, samples, body) VALUES (?,?,?,?)", (seq, now, 1, b"b"))
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('next_seq', ?)", (str(seq + 1),))
    db.executemany("INSERT OR REPLACE INTO totals(labels, value) VALUES (?, ?)", rows)
    db.execute("DELETE FROM batches WHERE created < ?", (now - 10**6,))
    db.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM batches").fetchone()
    db.execute("COMMIT")


def test_the_totals_journal_writes_far_less_than_rewriting_the_table(tmp_path: Path) -> None:
    """The flash claim: 2,000 ICMP targets at 10 s rounds, batches every 2 s, so ~400 change per batch
    (in the order the agent's spread_offset starts them). Over 60 batches the journal writes at least
    5x fewer WAL pages than writing the rows into the table each batch did (checkpoints off, so the
    WAL's size counts every page written)."""
    targets = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(2000)]
    phase = [int(spread_offset("icmp", t, 10.0) // 2) for t in targets]
    rtts = [0.0004 + 0.0001 * (i % 50) for i in range(3)]
    wal = {}
    for design in ("journal", "table"):
        p = tmp_path / f"{design}.db"
        sp = Spool(p, 10**9, 10**9)
        sp.db.execute("PRAGMA wal_autocheckpoint=0")
        rec = Recorder()
        for b in range(65):
            for t, ph in zip(targets, phase, strict=True):
                if ph == b % 5:
                    labels = (("probe", "icmp"), ("target", t))
                    rec.values(labels, T0 + b, [], [("mogli_icmp_sent_total", 3.0), ("mogli_icmp_received_total", 3.0),
                                                    ("mogli_icmp_duplicates_total", 0.0),
                                                    ("mogli_probe_runs_total", 1.0)])
                    rec.observe_many("mogli_icmp_rtt_seconds", labels, [r * (1 + b % 7) for r in rtts], T0 + b)
            if design == "journal":
                _saved(rec, sp, T0 + b)
            else:
                _old_append(sp.db, rec.changed_totals(), T0 + b)
                rec.totals_saved()
            if b == 4:  # every target has its row: from here on it is the steady state
                sp.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        wal[design] = (p.parent / (p.name + "-wal")).stat().st_size
        assert _runs_of(Spool(p, 10**9, 10**9))[targets[0]] == 13  # both keep the same totals
    assert wal["journal"] * 5 <= wal["table"], wal


def test_totals_of_an_older_spool_are_carried_over(tmp_path: Path) -> None:
    """Spools before per-series rows kept all totals as one JSON document in meta: they are loaded,
    stored as rows with the next batch, and the document goes. Series whose metric is gone or whose
    labels changed are dropped (they would only make the collector reject batches); the rest carry on."""
    saved = json.dumps({
        "counters": [["mogli_probe_runs_total", [["probe", "tcp"], ["target", "a"]], 5],
                     ["mogli_probe_runs_total", [["probe", "tcp"]], 7],
                     ["mogli_gone_total", [], 1]],
        "histograms": [["mogli_icmp_rtt_seconds", [["probe", "icmp"], ["target", "a"]], [0.1], [2, 1], 0.3],
                       ["mogli_icmp_rtt_seconds", [["target", "a"]], [0.1], [2, 1], 0.3]],
    })
    old = Spool(tmp_path / "s.db", 10**6, 10**6)
    old.db.execute("INSERT INTO meta(key, value) VALUES ('totals', ?)", (saved,))  # as an older agent left it
    old.close()
    sp = Spool(tmp_path / "s.db", 10**6, 10**6)
    rec = Recorder()
    rec.load_legacy_totals(sp.legacy_totals() or "")
    rec.load_totals(sp.totals())
    _saved(rec, sp)
    assert sp.legacy_totals() is None
    rows = {k: json.loads(v) for k, v in sp.totals()}
    assert rows == {'[["probe","tcp"],["target","a"]]': {"c": {"mogli_probe_runs_total": 5.0}, "h": {}},
                    '[["probe","icmp"],["target","a"]]': {"c": {},
                                                          "h": {"mogli_icmp_rtt_seconds": [[0.1], [2, 1], 0.3]}}}
    again = Recorder()
    again.load_totals(sp.totals())
    again.observe("mogli_icmp_rtt_seconds", (("probe", "icmp"), ("target", "a")), 0.05, T0)
    h = again.drain()[-1].value
    assert isinstance(h, wire.Histogram) and h.buckets == ((0.1, 3), (math.inf, 4)) and h.sum == pytest.approx(0.35)


def test_spool_is_a_plain_sqlite_wal_database(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.db", 10**6, 10**6)
    _append(sp, 2)
    db = sqlite3.connect(tmp_path / "s.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == 2


def test_the_agents_encoded_recorder_reports_what_the_sample_recorder_records() -> None:
    """The agent's recorder writes each call's values out at once (encoded=True); the report made from
    those groups reads back as exactly the samples the plain recorder keeps for the same calls."""
    recs = [Recorder(), Recorder(encoded=True)]
    icmp = (("probe", "icmp"), ("target", "gw"))
    for rec in recs:
        rec.values(icmp, T0 + 1, [("mogli_probe_success", 1), ("mogli_icmp_rtt_avg_seconds", 1.25e-05),
                                  ("mogli_icmp_jitter_seconds", float("nan"))],
                   [("mogli_probe_runs_total", 1.0), ("mogli_icmp_sent_total", 10.0)])
        rec.observe_many("mogli_icmp_rtt_seconds", icmp, [0.0004, 0.002, 0.3], T0 + 1)
        rec.inc("mogli_probe_failures_total", (("probe", "icmp"), ("reason", "timeout"), ("target", "gw")), 1,
                T0 + 2)
        rec.gauge("mogli_agent_spool_bytes", (), float("inf"), T0 + 2)  # not a number: left out
        rec.gauge("mogli_agent_spool_bytes", (), 1e16, T0 + 2)
        rec.set_total("mogli_interface_receive_bytes_total", (("interface", "eth0"),), 9000, T0 + 3)
        rec.touch("mogli_agent_spool_dropped_batches_total", (), T0 + 3)
        rec.inc("mogli_agent_spool_dropped_batches_total", (), float("inf"), T0 + 4)  # a total that is no number
        rec.values(icmp, T0 + 11, [], [("mogli_icmp_sent_total", 10.0)])
    samples = recs[0].drain()
    groups, count = recs[1].drain_groups()
    assert count == len(samples) == 10
    report = wire.parse(json.loads(wire.decompress(wire.encode_groups(_report(), groups), "gzip", 10**6)))
    assert report == _report(tuple(samples))
    assert [s.value for s in report.samples if s.name == "mogli_icmp_sent_total"] == [10.0, 20.0]
    assert recs[1].drain_groups() == ([], 0)
    with pytest.raises(RuntimeError, match="drain_groups"):
        recs[1].drain()


def test_a_prepared_group_records_what_values_records() -> None:
    """Recorder.prepare (the ICMP fleet's rounds) writes the same groups and keeps the same totals as
    Recorder.values for the same calls, on both recorders: a whole round, a round without replies (its
    RTT gauges None, left out), a gauge that is not a number, and a counter total that stops being one."""
    gauges = ("mogli_icmp_loss_ratio", "mogli_icmp_rtt_avg_seconds", "mogli_probe_success")
    counters = ("mogli_icmp_sent_total", "mogli_probe_runs_total")
    hist = "mogli_icmp_rtt_seconds"
    lb = (("probe", "icmp"), ("target", "gw"))
    calls: list[tuple[float, list[float | None], tuple[float, ...], list[float]]] = [
        (T0 + 1, [0.0, 1.25e-05, 1.0], (10.0, 1.0), [1.2e-05, 1.3e-05, 0.7]),
        (T0 + 2, [1.0, None, 0.0], (10.0, 1.0), []),
        (T0 + 3, [0.1, float("nan"), 1.0], (10.0, 1.0), [0.004]),
        (T0 + 4, [0.0, 2e-05, 1.0], (float("inf"), 1.0), [2e-05]),
        (T0 + 5, [0.0, 2e-05, 1.0], (10.0, 1.0), [2e-05]),
    ]
    for encoded in (False, True):
        plain, prepared = Recorder(encoded=encoded), Recorder(encoded=encoded)
        prep = prepared.prepare(lb, gauges, counters, hist)
        for ts, g, c, obs in calls:
            plain.values(lb, ts, [(n, v) for n, v in zip(gauges, g, strict=True) if v is not None],
                         list(zip(counters, c, strict=True)), [(hist, obs)])
            prep.record(ts, g, c, obs)
        if encoded:
            assert prepared.drain_groups() == plain.drain_groups()
        else:
            assert prepared.drain() == plain.drain()
        assert prepared.changed_totals() == plain.changed_totals()
        assert prepared.total("mogli_icmp_sent_total", lb) == math.inf
        assert prepared.total("mogli_probe_runs_total", lb) == 5.0
    with pytest.raises(KeyError):
        Recorder().prepare(lb, ("mogli_no_such_metric",), counters, hist)


def test_a_prepared_group_writes_nanosecond_values_with_nine_decimals() -> None:
    """Values named in ``nanos`` (the ICMP RTTs, from nanosecond timestamps) are written with nine decimals:
    the report reads back as the same samples to the nanosecond, every other value exactly."""
    lb = (("probe", "icmp"), ("target", "gw"))
    gauges, counters, hist = ("mogli_icmp_rtt_avg_seconds", "mogli_probe_duration_seconds"), \
        ("mogli_icmp_sent_total",), "mogli_icmp_rtt_seconds"
    plain, nano = Recorder(encoded=True), Recorder(encoded=True)
    prep = nano.prepare(lb, gauges, counters, hist, frozenset({gauges[0], hist}))
    for ts, avg, rtts in ((T0 + 0.123456789, 5.6123456789e-05, [5.1e-05, 6.1234567e-05]), (T0 + 2, 1.5, [1.5])):
        plain.values(lb, ts, [(gauges[0], avg), (gauges[1], 0.123456789)], [(counters[0], 2.0)], [(hist, rtts)])
        prep.record(ts, [avg, 0.123456789], (2.0,), rtts)
    groups, _ = nano.drain_groups()
    assert '["mogli_icmp_rtt_avg_seconds",0.000056123]' in groups[0]
    assert '["mogli_probe_duration_seconds",0.123456789]' in groups[0]
    want, got = (wire.parse(json.loads(wire.decompress(wire.encode_groups(_report(), g), "gzip", 10**6))).samples
                 for g in (plain.drain_groups()[0], groups))
    assert [(s.name, s.labels, s.ts) for s in got] == [(s.name, s.labels, s.ts) for s in want]
    for a, b in zip(got, want, strict=True):
        if isinstance(b.value, wire.Histogram):
            assert isinstance(a.value, wire.Histogram)
            assert (a.value.buckets, a.value.count) == (b.value.buckets, b.value.count)
            assert a.value.sum == pytest.approx(b.value.sum, abs=5e-10)
        elif a.name == gauges[0]:
            assert a.value == pytest.approx(b.value, abs=5e-10)
        else:
            assert a.value == b.value


def test_a_totals_row_that_cannot_be_read_is_skipped_and_the_agent_starts(tmp_path: Path) -> None:
    """Flash that returns garbage inside an intact journal row, or a damaged row of the totals table: the
    agent starts with every other series (the damaged ones start again from 0), and its log names the
    spool and the series."""
    from helpers import free_port, start_agent, wait_until, write_agent_config

    cfg = write_agent_config(tmp_path, "case1", "tok-1", free_port(), {})
    p = tmp_path / "case1-spool.db"
    sp = Spool(p, 10**6, 10**6)
    _saved(_runs({"a": 1, "b": 2, "c": 3, "d": 4}), sp)
    key = {t: json.dumps([["probe", "tcp"], ["target", t]], separators=(",", ":")) for t in "abcde"}
    sp.close()
    db = sqlite3.connect(p)
    db.execute("INSERT INTO totals VALUES (?, ?)", (key["e"], '{"c":{"mogli_probe_runs_total":'))  # cut off
    rows = [(key["b"], '{"c":{"mogli_probe_runs_total":"many"}}'),  # zlib and framing intact, the text not
            (key["c"], '{"c":{},"h":{"mogli_probe_duration_seconds":[[0.1,0.5],[1],0.2]}}'),
            ("[[\"probe\"]]", "{}")]
    db.execute("INSERT INTO totals_log VALUES (99, ?)", (zlib.compress("\n".join(f"{k}\t{v}" for k, v in rows)
                                                                      .encode()),))
    db.commit()
    db.close()
    rec = Recorder()
    bad = rec.load_totals(Spool(p, 10**6, 10**6).totals())
    assert sorted(k for k, _ in bad) == sorted([key["e"], key["b"], key["c"], '[["probe"]]'])
    assert any("2 bounds, 1 counts" in why for _, why in bad), bad
    assert {t: rec.total("mogli_probe_runs_total", _tcp(t)) for t in "abcde"} == {"a": 1, "b": 0, "c": 0, "d": 4,
                                                                                "e": 0}
    agent = start_agent(tmp_path, cfg, "case1")
    try:
        wait_until(lambda: "cannot be read" in agent.output() or not agent.alive(), 20, "the agent's error")
        time.sleep(1.0)
        out = agent.output()
        assert agent.alive(), out[-3000:]
        assert f"{p}: saved totals of {key['e']} cannot be read" in out, out[-3000:]
        assert f"{p}: saved totals of {key['b']} cannot be read (ValueError" in out, out[-3000:]
        assert "Traceback" not in out
    finally:
        agent.stop()
