"""The collector's HTTP API against a real collector process: acks, auth, bad bodies never 5xx."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    free_port,
    http_get,
    http_post,
    sample_value,
    scrape,
    start_collector,
    write_collector_config,
)

from agent import wire

TOKENS = {"stiftsplatz": "token-stiftsplatz-0123456789", "rathaus": "token-rathaus-0123456789"}
T0 = 1_790_000_000.0


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    d = tmp_path_factory.mktemp("collector")
    port = free_port()
    p = start_collector(d, port, write_collector_config(d, port, TOKENS, max_body_bytes=200_000))
    yield port
    p.stop()
    assert "Traceback" not in p.output(), p.output()


def _body(node: str = "stiftsplatz", seq: int = 1, stream: str = "aaaabbbbccccdddd", value: float = 1.0) -> bytes:
    s = wire.Sample("mogli_probe_success", (("probe", "tcp"), ("target", "rathaus-switch")), value, T0)
    return wire.encode(wire.Report(node, "maikerwe-2026", stream, seq, T0, (s,)))


def _post(port: int, body: bytes, token: str | None = TOKENS["stiftsplatz"], **headers: str) -> tuple[int, dict]:
    h = {"Content-Type": "application/json", "Content-Encoding": "gzip", **headers}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    status, raw = http_post(f"http://127.0.0.1:{port}/api/v1/reports", body, h)
    return status, json.loads(raw)


def test_ack_names_the_batch_and_replay_is_not_applied_twice(collector: int) -> None:
    status, ack = _post(collector, _body(seq=1, stream="1111222233334444", value=0))
    assert status == 200 and ack == {"node": "stiftsplatz", "stream": "1111222233334444", "seq": 1,
                                     "result": "applied"}
    status, ack = _post(collector, _body(seq=1, stream="1111222233334444", value=1))
    assert status == 200 and ack["result"] == "duplicate"
    m = scrape(collector)
    # the replay with a different value was acknowledged but not applied
    assert sample_value(m, "mogli_probe_success", node="stiftsplatz", target="rathaus-switch") == 0
    assert sample_value(m, "mogli_collector_duplicate_batches_total", node="stiftsplatz") >= 1


def test_out_of_order_batches_apply_once_and_dropped_ones_are_counted(collector: int) -> None:
    stream = "5555666677778888"

    def missing() -> float:
        return sample_value(scrape(collector), "mogli_collector_missing_batches_total", node="stiftsplatz") or 0

    assert _post(collector, _body(seq=1, stream=stream))[1]["result"] == "applied"
    before = missing()
    # live first: 9 arrives while 5..8 are still in the agent's spool (oldest 5): nothing missing yet
    assert _post(collector, _body(seq=9, stream=stream), **{"Mogli-Spool-Oldest": "5"})[1]["result"] == "applied"
    assert missing() == before + 3  # 2, 3, 4 were dropped from the agent's full spool
    assert _post(collector, _body(seq=6, stream=stream), **{"Mogli-Spool-Oldest": "5"})[1]["result"] == "applied"
    assert _post(collector, _body(seq=5, stream=stream), **{"Mogli-Spool-Oldest": "5"})[1]["result"] == "applied"
    for seq in (1, 5, 6, 9):
        assert _post(collector, _body(seq=seq, stream=stream))[1]["result"] == "duplicate"
    assert _post(collector, _body(seq=7, stream=stream), **{"Mogli-Spool-Oldest": "7"})[1]["result"] == "applied"
    assert missing() == before + 3


@pytest.mark.parametrize(
    ("body", "headers", "status", "fragment"),
    [
        (b"this is not json", {"Content-Encoding": "identity"}, 400, "not JSON"),
        (gzip.compress(b"[1, 2"), {}, 400, "not JSON"),
        (b"\x1f\x8b\x08garbage", {}, 400, "gzip"),
        (gzip.compress(b'{"version": 1}'), {}, 400, "missing"),
        (gzip.compress(json.dumps({"version": 1, "node": "stiftsplatz", "site": "s", "stream": "aaaabbbbccccdddd",
                                   "seq": 1, "agent_start": T0, "samples": [{"name": "x"}]}).encode()),
         {}, 400, "samples[0]"),
        (gzip.compress(b"[" * 100_000 + b"]" * 100_000), {}, 400, ""),
        (gzip.compress(b" " * 1_000_000), {}, 413, "larger than"),
        (b"x" * 300_000, {"Content-Encoding": "identity"}, 413, ""),
        (_body(), {"Content-Encoding": "br"}, 415, "Content-Encoding"),
    ],
)
def test_bad_bodies_get_4xx_with_a_message(collector: int, body: bytes, headers: dict, status: int,
                                           fragment: str) -> None:
    got, answer = _post(collector, body, **headers)
    assert got == status, answer
    assert fragment in answer.get("error", "") + answer.get("path", "")
    assert http_get(f"http://127.0.0.1:{collector}/healthz")[0] == 200


def test_tokens(collector: int) -> None:
    assert _post(collector, _body(seq=99), token=None)[0] == 401
    assert _post(collector, _body(seq=99), token="wrong")[0] == 401
    # rathaus's token cannot report for stiftsplatz
    status, answer = _post(collector, _body(node="stiftsplatz", seq=99), token=TOKENS["rathaus"])
    assert status == 403 and answer["path"] == "node"
    m = scrape(collector)
    assert TOKENS["rathaus"] not in m and TOKENS["stiftsplatz"] not in m
    assert sample_value(m, "mogli_collector_reports_total", result="forbidden") >= 1


def test_unknown_paths_and_methods_are_4xx(collector: int) -> None:
    assert http_get(f"http://127.0.0.1:{collector}/api/v1/reports")[0] == 405
    assert http_get(f"http://127.0.0.1:{collector}/nope")[0] == 404


def test_collector_log_never_contains_tokens(collector: int, tmp_path: Path) -> None:
    _post(collector, _body(seq=1000), token="a-secret-that-must-not-leak")
    # the module fixture's log is checked at teardown for tracebacks; tokens are never logged at all
    logs = list(Path(tmp_path).parent.glob("collector*/collector.log"))
    assert logs
    for log in logs:
        assert "a-secret-that-must-not-leak" not in log.read_text()
