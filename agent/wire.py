"""The report format between agent and collector (version 1), see docs/protocol.md.

Building is the agent's side, validating the collector's; both live here so they
cannot drift apart. Stdlib only: the collector imports this without the agent's
extras.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from agent.catalog import METRICS

VERSION = 2
"""What agents send. The collector also accepts version 1 (one object per sample): batches an older
agent spooled before an upgrade still arrive."""
VERSIONS = (1, 2)
CONTENT_TYPE = "application/json"
# The agent's clock when this attempt was sent (seconds since the epoch, decimal).
# A header, not a body field, so a spooled body is sent byte-identical on every retry.
SENT_AT_HEADER = "Mogli-Sent-At"
# Round trip of the agent's previous successful delivery, seconds: lets the collector
# take out the request's travel time when it estimates the agent's clock offset.
LAST_RTT_HEADER = "Mogli-Last-RTT"
# The oldest sequence number still in the agent's spool when this attempt was sent:
# anything older that the collector never applied was dropped from a full spool.
SPOOL_OLDEST_HEADER = "Mogli-Spool-Oldest"
MAX_SAMPLES = 50_000
MAX_LABELS = 16
MAX_LABEL_VALUE = 256
MAX_ID = 64
RESERVED_LABELS = frozenset({"node", "site", "job", "instance", "le", "quantile"})

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
STREAM_RE = re.compile(r"[0-9a-f]{8,32}")
LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts (``le`` ascending, last bucket +Inf), sum and count."""

    buckets: tuple[tuple[float, float], ...]
    sum: float
    count: float

    def to_json(self) -> dict[str, Any]:
        return {
            "buckets": [["+Inf" if math.isinf(le) else le, c] for le, c in self.buckets],
            "sum": self.sum,
            "count": self.count,
        }

    def json(self) -> str:
        """:meth:`to_json` as text, written directly (the agent writes one per ICMP round)."""
        return histogram_text(bucket_prefixes(tuple(le for le, _ in self.buckets)), [c for _, c in self.buckets],
                              self.sum, self.count)


class Sample(NamedTuple):
    """One value of one series. A NamedTuple, not a frozen dataclass: agents build thousands a
    second (an ICMP round makes thirteen) and a frozen dataclass's __init__ costs five times more."""

    name: str
    labels: tuple[tuple[str, str], ...]  # sorted by name
    value: float | Histogram
    ts: float  # seconds since the epoch, agent clock

    @property
    def type(self) -> str:
        return METRICS[self.name].type

    def to_json(self) -> dict[str, Any]:
        v = self.value.to_json() if isinstance(self.value, Histogram) else self.value
        return {"name": self.name, "type": self.type, "labels": dict(self.labels), "value": v, "ts": self.ts}


@dataclass(frozen=True)
class Report:
    node: str
    site: str
    stream: str  # random id of the agent's spool; a new spool starts a new sequence
    seq: int
    agent_start: float  # process start, agent clock: a change means the agent restarted
    samples: tuple[Sample, ...] = field(default=())


def report_body(r: Report, version: int = VERSION) -> dict[str, Any]:
    """The report as a JSON object: the plain statement of the format (:func:`encode` writes the same
    text without building it). Version 2 puts consecutive samples with the same labels and
    timestamp (a probe run's values) in one group; version 1 is one object per sample."""
    head: dict[str, Any] = {"version": version, "node": r.node, "site": r.site, "stream": r.stream, "seq": r.seq,
                            "agent_start": r.agent_start}
    if version == 1:
        head["samples"] = [s.to_json() for s in r.samples]
        return head
    groups: list[dict[str, Any]] = []
    for s in r.samples:
        v = s.value.to_json() if isinstance(s.value, Histogram) else s.value
        if groups and groups[-1]["ts"] == s.ts and groups[-1]["labels"] == dict(s.labels):
            groups[-1]["values"].append([s.name, v])
        else:
            groups.append({"ts": s.ts, "labels": dict(s.labels), "values": [[s.name, v]]})
    head["groups"] = groups
    return head


_PREFIXES: dict[tuple[float, ...], list[str]] = {}  # histogram bounds ("+Inf" last) -> '[<le>,' per bucket


def labels_json(labels: tuple[tuple[str, str], ...]) -> str:
    """A group's labels as JSON (the agent's recorder writes them once per label set)."""
    return json.dumps(dict(labels), separators=(",", ":"))


def bucket_prefixes(les: tuple[float, ...]) -> list[str]:
    """The start of each bucket's JSON (``[<le>,``) for bounds ending in +Inf; one shared list per bounds."""
    p = _PREFIXES.get(les)
    if p is None:
        p = _PREFIXES[les] = [f"[{json.dumps('+Inf' if math.isinf(le) else le)}," for le in les]
    return p


def histogram_text(prefixes: list[str], cumulative: Sequence[float], total: float, count: float) -> str:
    """A histogram value as JSON from its bucket prefixes (:func:`bucket_prefixes`), cumulative counts,
    sum and count."""
    pairs = ",".join([f"{p}{c!r}]" for p, c in zip(prefixes, cumulative, strict=True)])
    return f'{{"buckets":[{pairs}],"sum":{total!r},"count":{count!r}}}'


class JsonValue(Protocol):
    """A value that writes its own JSON (a histogram)."""

    def json(self) -> str: ...


def values_json(items: Sequence[tuple[str, float | JsonValue]]) -> list[str]:
    """The ``[name, value]`` texts of a group; every value a finite number or a histogram."""
    return [f'["{n}",{v!r}]' if isinstance(v, float) else f'["{n}",{v.json()}]' for n, v in items]


Shape = tuple[str | tuple[str, tuple[float, ...]], ...]
"""What a group holds, in order: a metric name for each number, (name, bounds ending in +Inf) for each histogram."""
_TEMPLATES: dict[tuple[Shape, frozenset[str]], str] = {}
NANOS = "%.9f"
"""How :func:`group_template` writes the values named in its ``nanos``: seconds with nine decimals. For times
taken from nanosecond clocks (ICMP RTTs) that keeps every digit they have, at ~300 ns a value against ~770 ns
for repr's shortest round trip of an average of them (17 digits; most of a round's group's cost)."""


def group_template(shape: Shape, nanos: frozenset[str] = frozenset()) -> str:
    """A %-format that writes one group of the current version in one step, like :func:`group_json` over
    :func:`values_json`: ``template % (ts, labels_text, *values)``, where ``values`` holds each number
    (finite) and, for each histogram, its cumulative counts (ints), sum and count. One template per
    shape, made once: at 10,000 ICMP targets the agent writes ~1,000 groups a second of the same few
    shapes (a text per value and joins: 26.1 us a round against 24.5, warm). Values (and histogram sums)
    named in ``nanos`` are written as :data:`NANOS`, the rest with repr."""
    t = _TEMPLATES.get((shape, nanos))
    if t is None:
        parts = []
        for item in shape:  # names are catalog identifiers and bounds numbers: no '%' or '"' to escape
            if isinstance(item, str):
                parts.append(f'["{item}",{NANOS if item in nanos else "%r"}]')
            else:
                name, les = item
                buckets = ",".join(f"{p}%d]" for p in bucket_prefixes(les))
                parts.append(f'["{name}",{{"buckets":[{buckets}],"sum":{NANOS if name in nanos else "%r"},'
                             f'"count":%d}}]')
        t = _TEMPLATES[(shape, nanos)] = '{"ts":%r,"labels":%s,"values":[' + ",".join(parts) + "]}"
    return t


def group_json(labels_text: str, ts: float, values: list[str]) -> str:
    """One group of the current version from its labels (:func:`labels_json`) and ``[name, value]`` texts."""
    return f'{{"ts":{ts!r},"labels":{labels_text},"values":[{",".join(values)}]}}'


def encode_groups(r: Report, groups: list[str]) -> bytes:
    """A report of the current version from groups already written out (:func:`group_json`; the agent's
    recorder writes each probe run's group when it records it), gzip-compressed."""
    head = json.dumps(report_body(Report(r.node, r.site, r.stream, r.seq, r.agent_start)), separators=(",", ":"))
    text = f"{head[:-3]}[{','.join(groups)}]}}"  # ... "groups":[] -> ... "groups":[...]
    return gzip.compress(text.encode(), compresslevel=3)  # level 6: 3x the CPU for 11 % less


def encode(r: Report) -> bytes:
    """The report in the current version as JSON, gzip-compressed (``Content-Encoding: gzip``).

    Written directly rather than through json.dumps(report_body(r)) (tests check they agree): at
    10,000 ICMP targets an agent reports ~13,000 samples a second and building the object cost it
    ~9 us per sample (bench/icmp.py). Values that are not finite numbers are left out."""
    groups: list[str] = []
    group: list[tuple[str, float | Histogram]] = []
    labels: tuple[tuple[str, str], ...] = ()
    ts = -1.0
    for name, lab, value, t in r.samples:
        if lab != labels or t != ts:
            if group:
                groups.append(group_json(labels_json(labels), ts, values_json(group)))
                group = []
            labels, ts = lab, t
        if isinstance(value, Histogram):
            group.append((name, value))
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            group.append((name, float(value)))
    if group:
        groups.append(group_json(labels_json(labels), ts, values_json(group)))
    return encode_groups(r, groups)


class WireError(ValueError):
    """A report that cannot be applied; ``path`` names the offending field."""

    def __init__(self, path: str, message: str, status: int = 400):
        self.path = path
        self.message = message
        self.status = status
        super().__init__(f"{path}: {message}" if path else message)


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo Content-Encoding, refusing more than ``limit`` bytes after inflating (a gzip bomb)."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        if len(body) > limit:
            raise WireError("", f"body larger than {limit} bytes", 413)
        return body
    if enc != "gzip":
        raise WireError("", f"unsupported Content-Encoding {encoding!r} (use gzip)", 415)
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
        if len(out) > limit:
            raise WireError("", f"body larger than {limit} bytes after decompression", 413)
        if not d.eof:
            raise WireError("", "truncated gzip body")
    except zlib.error as e:
        raise WireError("", f"broken gzip body: {e}") from None
    return out


def _num(v: Any, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise WireError(path, f"expected a number, got {type(v).__name__}")
    f = float(v)
    if not math.isfinite(f):
        raise WireError(path, "must be finite")
    return f


def _str(v: Any, path: str, pattern: re.Pattern[str] | None = None, maxlen: int = MAX_LABEL_VALUE) -> str:
    if not isinstance(v, str):
        raise WireError(path, f"expected a string, got {type(v).__name__}")
    if len(v) > maxlen:
        raise WireError(path, f"longer than {maxlen} characters")
    if pattern is not None and not pattern.fullmatch(v):
        raise WireError(path, f"{v[:40]!r} does not match {pattern.pattern}")
    return v


def _ts(v: Any, path: str) -> float:
    t = _num(v, path)
    if not 0 < t < 4_102_444_800:  # 2100-01-01
        raise WireError(path, "timestamp out of range")
    return t


def _histogram(v: Any, path: str) -> Histogram:
    if not isinstance(v, dict) or set(v) != {"buckets", "sum", "count"}:
        raise WireError(path, "histogram value must be an object with exactly buckets, sum, count")
    b = v["buckets"]
    if not isinstance(b, list) or not 1 <= len(b) <= 64:
        raise WireError(path + ".buckets", "expected a list of 1..64 [le, count] pairs")
    out: list[tuple[float, float]] = []
    prev_le, prev_c = -math.inf, 0.0
    for i, pair in enumerate(b):
        p = f"{path}.buckets[{i}]"
        if not isinstance(pair, list) or len(pair) != 2:
            raise WireError(p, "expected [le, count]")
        le_raw, c_raw = pair
        le = math.inf if le_raw == "+Inf" else _num(le_raw, p + "[0]")
        c = _num(c_raw, p + "[1]")
        if le <= prev_le:
            raise WireError(p, "bucket bounds must increase")
        if c < prev_c:
            raise WireError(p, "bucket counts must be cumulative")
        out.append((le, c))
        prev_le, prev_c = le, c
    if not math.isinf(out[-1][0]):
        raise WireError(path + ".buckets", 'last bucket must be "+Inf"')
    count = _num(v["count"], path + ".count")
    if count != out[-1][1]:
        raise WireError(path + ".count", "must equal the +Inf bucket")
    return Histogram(tuple(out), _num(v["sum"], path + ".sum"), count)


def parse(obj: Any) -> Report:
    """Validate a decoded JSON report (version 1 or 2); raise WireError naming the first bad field."""
    if not isinstance(obj, dict):
        raise WireError("", "report must be a JSON object")
    version = obj.get("version")
    if version not in VERSIONS or isinstance(version, bool):
        raise WireError("version", f"unsupported version {version!r} (this collector speaks {VERSIONS})")
    body = "samples" if version == 1 else "groups"
    known = {"version", "node", "site", "stream", "seq", "agent_start", body}
    extra = set(obj) - known
    if extra:
        raise WireError(sorted(extra)[0], "unknown field")
    for k in sorted(known):
        if k not in obj:
            raise WireError(k, "missing")
    node = _str(obj["node"], "node", ID_RE, MAX_ID)
    site = _str(obj["site"], "site", ID_RE, MAX_ID)
    stream = _str(obj["stream"], "stream", STREAM_RE, 32)
    seq = obj["seq"]
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq < 2**63:
        raise WireError("seq", "must be an integer >= 1")
    agent_start = _ts(obj["agent_start"], "agent_start")
    raw = obj[body]
    if not isinstance(raw, list):
        raise WireError(body, "expected a list")
    if version == 1:
        if len(raw) > MAX_SAMPLES:
            raise WireError("samples", f"more than {MAX_SAMPLES} samples", 413)
        samples = [_sample(s, f"samples[{i}]") for i, s in enumerate(raw)]
    else:
        samples = _groups(raw)
    return Report(node, site, stream, seq, agent_start, tuple(samples))


def _labels(labels: Any, path: str) -> dict[str, str]:
    """A sample's label set: names and values, before they are checked against a metric."""
    if not isinstance(labels, dict):
        raise WireError(path, "expected an object")
    if len(labels) > MAX_LABELS:
        raise WireError(path, f"more than {MAX_LABELS} labels")
    for k, v in labels.items():
        lp = f"{path}.{str(k)[:40]}"
        if not LABEL_RE.fullmatch(k) or k.startswith("__"):
            raise WireError(lp, "invalid label name")
        if k in RESERVED_LABELS:
            raise WireError(lp, "reserved label, set by the collector")
        _str(v, lp)
    return labels


def _value(spec: Any, v: Any, path: str) -> float | Histogram:
    if spec.type == "histogram":
        return _histogram(v, path)
    f = _num(v, path)
    if spec.type == "counter" and f < 0:
        raise WireError(path, "a counter cannot be negative")
    return f


def _groups(raw: list[Any]) -> list[Sample]:
    """Version 2: groups of values sharing labels and timestamp."""
    out: list[Sample] = []
    for i, g in enumerate(raw):
        path = f"groups[{i}]"
        if not isinstance(g, dict) or set(g) != {"ts", "labels", "values"}:
            raise WireError(path, "expected an object with exactly the fields ts, labels, values")
        labels = _labels(g["labels"], path + ".labels")
        names = set(labels)
        pairs = tuple(sorted(labels.items()))
        ts = _ts(g["ts"], path + ".ts")
        values = g["values"]
        if not isinstance(values, list) or not values:
            raise WireError(path + ".values", "expected a non-empty list of [name, value]")
        if len(out) + len(values) > MAX_SAMPLES:
            raise WireError("groups", f"more than {MAX_SAMPLES} samples", 413)
        for j, nv in enumerate(values):
            vp = f"{path}.values[{j}]"
            if not isinstance(nv, list) or len(nv) != 2:
                raise WireError(vp, "expected [name, value]")
            name = _str(nv[0], vp + "[0]", maxlen=128)
            spec = METRICS.get(name)
            if spec is None:
                raise WireError(vp + "[0]", f"unknown metric {name[:80]!r}")
            if names != set(spec.labels):
                raise WireError(path + ".labels", f"{name} has the labels {', '.join(spec.labels) or 'none'}, "
                                f"not {', '.join(sorted(names)) or 'none'}")
            out.append(Sample(name, pairs, _value(spec, nv[1], vp + "[1]"), ts))
    return out


def _sample(s: Any, path: str) -> Sample:
    if not isinstance(s, dict):
        raise WireError(path, "expected an object")
    if set(s) != {"name", "type", "labels", "value", "ts"}:
        raise WireError(path, "expected exactly the fields name, type, labels, value, ts")
    name = _str(s["name"], path + ".name", maxlen=128)
    spec = METRICS.get(name)
    if spec is None:
        raise WireError(path + ".name", f"unknown metric {name[:80]!r}")
    if s["type"] != spec.type:
        raise WireError(path + ".type", f"{name} is a {spec.type}")
    labels = _labels(s["labels"], path + ".labels")
    for k in labels:
        if k not in spec.labels:
            raise WireError(f"{path}.labels.{str(k)[:40]}",
                            f"{name} has no label {k!r} (allowed: {', '.join(spec.labels) or 'none'})")
    missing = set(spec.labels) - set(labels)
    if missing:
        raise WireError(path + ".labels", f"missing label(s) {', '.join(sorted(missing))}")
    ts = _ts(s["ts"], path + ".ts")
    return Sample(name, tuple(sorted(labels.items())), _value(spec, s["value"], path + ".value"), ts)
