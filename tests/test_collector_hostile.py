"""Hostile input at the live collector: nothing a client sends gives a 5xx or changes what was applied."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import pytest
from helpers import free_port, http_get, http_post, scrape, start_collector, write_collector_config
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent import wire

TOKENS = {"stiftsplatz": "tok-stiftsplatz-0123456789abcdef", "rathaus": "tok-rathaus-0123456789abcdef"}
T0 = 1_790_000_000.0
STREAM = "feedfeedfeedfeed"
# series that legitimately move on every request, accepted or not
MOVING = ("mogli_collector_reports_total", "mogli_collector_duplicate_batches_total",
          "mogli_agent_last_report_timestamp_seconds", "mogli_agent_clock_offset_seconds")


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    d = tmp_path_factory.mktemp("hostile")
    p = free_port()
    col = start_collector(d, p, write_collector_config(d, p, TOKENS, max_body_bytes=100_000,
                                                       rate_limit={"per_second": 100000, "burst": 100000}))
    # one real batch applied, so replays of it have something to collide with
    s = wire.Sample("mogli_probe_success", (("probe", "tcp"), ("target", "sw")), 1.0, T0)
    body = wire.encode(wire.Report("stiftsplatz", "maikerwe-2026", STREAM, 1, T0, (s,)))
    assert _post(p, body, TOKENS["stiftsplatz"])[0] == 200
    yield p
    col.stop()
    assert "Traceback" not in col.output(), col.output()[-3000:]


def _post(port: int, body: bytes, token: str | None, encoding: str = "gzip") -> tuple[int, bytes]:
    h = {"Content-Encoding": encoding}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    return http_post(f"http://127.0.0.1:{port}/api/v1/reports", body, h)


def _state(port: int) -> list[str]:
    return [line for line in scrape(port).splitlines() if not line.startswith(MOVING)]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def _valid_obj(seq: int, value: float, version: int = wire.VERSION) -> dict:
    s = wire.Sample("mogli_probe_success", (("probe", "tcp"), ("target", "sw")), value, T0 + seq)
    return wire.report_body(wire.Report("stiftsplatz", "maikerwe-2026", STREAM, seq, T0, (s,)), version)


@st.composite
def mutated_reports(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from(wire.VERSIONS))  # what agents send, and what older agents spooled
    obj = _valid_obj(draw(st.integers(2, 10**6)), 0.0, version)
    path = draw(st.sampled_from(["version", "node", "site", "stream", "seq", "agent_start", "samples", "groups",
                                 "sample.name", "sample.type", "sample.labels", "sample.value", "sample.ts",
                                 "sample.extra", "label.value", "label.name"]))
    junk = draw(json_values)
    if version == 1:
        s, labels = obj["samples"][0], obj["samples"][0]["labels"]
    else:
        s, labels = obj["groups"][0], obj["groups"][0]["labels"]
    if path.startswith("sample."):
        key = path.split(".")[1]
        if key == "extra" or (key == "type" and version == 2):
            s[key] = junk
        elif key == "value" and isinstance(junk, int | float) and not isinstance(junk, bool):
            (s if version == 1 else s["values"][0])[key if version == 1 else 1] = "NaN"
        elif key in ("name", "value") and version == 2:
            s["values"][0][0 if key == "name" else 1] = junk
        else:
            s[key] = junk
    elif path == "label.value":
        labels["target"] = junk if not isinstance(junk, str) else junk + "x" * 300
    elif path == "label.name":
        labels[draw(st.sampled_from(["node", "__name__", "1bad", "le", "site"]))] = "x"
    else:
        obj[path] = junk
    try:  # a mutation that happens to be valid (site "a", seq 7) is not hostile: skip it
        wire.parse(json.loads(json.dumps(obj)))
    except (wire.WireError, RecursionError):
        pass
    else:
        assume(False)
    return gzip.compress(json.dumps(obj).encode())


bodies = st.one_of(
    st.binary(max_size=300),  # garbage, not gzip
    st.binary(max_size=300).map(gzip.compress),  # gzip of garbage
    json_values.map(lambda v: gzip.compress(json.dumps(v).encode())),  # JSON of the wrong shape
    mutated_reports(),  # a valid report with one field broken
    st.binary(min_size=10, max_size=200).map(lambda b: gzip.compress(b * 1000)[:-8]),  # truncated gzip
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, token=st.sampled_from([TOKENS["stiftsplatz"], "wrong-token", None]),
       encoding=st.sampled_from(["gzip", "identity", "deflate"]))
def test_garbage_never_5xx_and_never_changes_state(port: int, body: bytes, token: str | None, encoding: str) -> None:
    before = _state(port)
    status, answer = _post(port, body, token, encoding)
    assert 400 <= status < 500, (status, answer)
    assert "error" in json.loads(answer)
    assert _state(port) == before


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.floats(0, 1), token=st.sampled_from([TOKENS["stiftsplatz"], TOKENS["rathaus"]]))
def test_replays_and_foreign_tokens_change_nothing(port: int, value: float, token: str) -> None:
    before = _state(port)
    body = gzip.compress(json.dumps(_valid_obj(1, value)).encode())  # seq 1 again, another value
    status, answer = _post(port, body, token)
    if token == TOKENS["rathaus"]:
        assert status == 403
    else:
        assert status == 200 and json.loads(answer)["result"] == "duplicate"
    assert _state(port) == before
    assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
