"""The agent's running totals and the samples waiting for the next batch.

Counters and histograms are cumulative at the source (DESIGN.md decision 2):
``inc`` adds to a total kept here, and every change emits a sample carrying the
new total. The totals that changed are saved with each spooled batch (one row per
label set, :meth:`Recorder.changed_totals`) and restored at start, so they survive a
restart of the agent.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections.abc import Iterable
from typing import Any

from agent import wire
from agent.catalog import METRICS, RTT_BUCKETS, SORTED_LABELS
from agent.wire import Histogram, Sample

Labels = tuple[tuple[str, str], ...]


class _Hist:
    __slots__ = ("bounds", "counts", "les", "name", "shape", "sum")

    def __init__(self, bounds: tuple[float, ...], name: str):
        self.bounds = bounds
        self.name = name
        self.les = (*bounds, math.inf)
        self.shape = (name, self.les)  # its part of a group's shape (wire.group_template)
        self.counts = [0] * (len(bounds) + 1)  # non-cumulative, last is +Inf
        self.sum = 0.0

    def observe_many(self, values: Iterable[float]) -> None:
        counts, bounds, where, total = self.counts, self.bounds, bisect.bisect_left, self.sum
        for v in values:
            counts[where(bounds, v)] += 1
            total += v
        self.sum = total

    @classmethod
    def load(cls, bounds: list[float], counts: list[int], total: float, name: str) -> _Hist:
        """A histogram as saved; ValueError or TypeError when the saved form is not one."""
        b = tuple(float(x) for x in bounds)
        c = [int(x) for x in counts]
        if len(c) != len(b) + 1 or any(x > y for x, y in itertools.pairwise(b)) or min(c) < 0:
            raise ValueError(f"{name}: {len(b)} bounds, {len(c)} counts")
        h = cls(b, name)
        h.counts, h.sum = c, float(total)
        return h

    def cumulative(self) -> list[int]:
        """The cumulative bucket counts, +Inf (the count) last: ints, exact and cheaper to write out than floats."""
        return list(itertools.accumulate(self.counts))

    def snapshot(self) -> Histogram:
        cum = self.cumulative()
        return Histogram(tuple(zip(self.les, cum, strict=True)), self.sum, cum[-1])


class _LabelSet:
    """Everything the recorder keeps about one label set: one dict lookup finds it (a probe run records
    a dozen values with one label set; hashing the nested label tuple once per value showed in
    bench/icmp.py)."""

    __slots__ = ("checked", "hists", "json", "key", "labels", "row", "totals")

    def __init__(self, labels: Labels):
        self.labels = labels
        self.checked: set[str] = set()  # names of the series checked against the catalog with these labels
        self.totals: dict[str, float] = {}  # counter name -> running total
        self.hists: dict[str, _Hist] = {}
        self.key = ""  # the spool's row key (JSON), made when first saved
        self.json = ""  # the labels as a report writes them (wire.labels_json), made when first needed
        self.row: tuple[int, int, str] = (0, 0, "")  # (totals, histograms, _totals_template) of the last save


class Prepared:
    """One label set's gauges, counters and histogram of a fixed shape, recorded again and again: what
    :meth:`Recorder.values` does for them, checked against the catalog once instead of every time (the
    ICMP fleet records one round of each target this way: ~1,000 a second at 10,000 targets). Get it
    with :meth:`Recorder.prepare`."""

    __slots__ = ("counters", "gauges", "hist", "ls", "n", "rec", "template")

    def __init__(self, rec: Recorder, ls: _LabelSet, gauges: tuple[str, ...], counters: tuple[str, ...],
                 hist: _Hist, nanos: frozenset[str]):
        self.rec, self.ls, self.gauges, self.counters, self.hist = rec, ls, gauges, counters, hist
        self.n = len(gauges) + len(counters) + 1
        self.template = wire.group_template((*gauges, *counters, hist.shape), nanos)

    def record(self, ts: float, gauges: list[float | None], counters: tuple[float, ...],
               observed: list[float]) -> None:
        """``Recorder.values(labels, ts, zip(names, gauges), zip(names, counters), [(histogram, observed)])``,
        the same group and totals; gauges that are None are not reported (a round without replies has no RTT)."""
        rec, ls = self.rec, self.ls
        try:
            fast = all(map(math.isfinite, gauges))  # type: ignore[arg-type]
        except TypeError:  # a None
            fast = False
        totals = ls.totals
        get = totals.get
        new = [get(name, 0.0) + inc for name, inc in zip(self.counters, counters, strict=True)]
        h = self.hist
        if not fast or not all(map(math.isfinite, new)):
            rec.values(ls.labels, ts, [(n, v) for n, v in zip(self.gauges, gauges, strict=True) if v is not None],
                       zip(self.counters, counters, strict=True), ((h.name, observed),))
            return
        totals.update(zip(self.counters, new, strict=True))
        h.observe_many(observed)
        rec._dirty.add(ls)
        if not math.isfinite(h.sum):
            rec._emit(ls, ts, [*self.gauges, *self.counters], [*gauges, *new], [])  # type: ignore[list-item]
            return
        if rec._encoded:
            cum = h.cumulative()
            rec._groups.append(self.template % (ts, ls.json, *gauges, *new, *cum, h.sum, cum[-1]))
            rec._count += self.n
        else:
            rec._emit(ls, ts, [*self.gauges, *self.counters], [*gauges, *new], [h])  # type: ignore[list-item]


class Recorder:
    """Running totals and what was recorded since the last drain.

    ``encoded=False`` keeps samples (:meth:`drain`); ``encoded=True`` (the agent) writes each call's
    values out as one group of the report format right away (:meth:`drain_groups`): at 10,000 ICMP
    targets, building 13 sample tuples per round and writing them out two seconds later, when they
    had left the CPU caches, cost the agent more than recording them (bench/icmp.py)."""

    def __init__(self, buckets: dict[str, tuple[float, ...]] | None = None, *, encoded: bool = False):
        self._sets: dict[Labels, _LabelSet] = {}
        self._buckets = buckets or {}
        self._encoded = encoded
        self._pending: list[Sample] = []
        self._groups: list[str] = []  # encoded: report groups (wire.group_json) since the last drain
        self._count = 0  # encoded: the values in them
        self._dirty: set[_LabelSet] = set()  # label sets whose totals changed since totals_saved()

    def _set(self, labels: Labels) -> _LabelSet:
        ls = self._sets.get(labels)
        if ls is None:
            ls = self._sets[labels] = _LabelSet(labels)
        return ls

    @staticmethod
    def _check(name: str, ls: _LabelSet) -> None:
        """Every series is checked against the catalog once; later samples of it only look it up."""
        if name in ls.checked:
            return
        labels = ls.labels
        if SORTED_LABELS[name] != tuple(k for k, _ in labels):  # KeyError: a metric missing from the catalog
            raise ValueError(f"{name}: labels {[k for k, _ in labels]} != catalog {list(METRICS[name].labels)}")
        ls.checked.add(name)

    def _emit(self, ls: _LabelSet, ts: float, names: list[str], numbers: list[float], hists: list[_Hist]) -> None:
        """Values of one label set at one time: finite ``numbers`` under ``names``, then live histograms
        (snapshots unless encoded: then they are written out at once)."""
        if not names and not hists:
            return
        if self._encoded:
            if not ls.json:
                ls.json = wire.labels_json(ls.labels)
            args: list[Any] = [ts, ls.json, *numbers]
            shape: wire.Shape = tuple(names)
            if hists:
                shape += tuple(h.shape for h in hists)
                for h in hists:
                    cum = h.cumulative()
                    args += cum
                    args += (h.sum, cum[-1])
            self._groups.append(wire.group_template(shape) % tuple(args))
            self._count += len(names) + len(hists)
        else:
            labels, new = ls.labels, tuple.__new__  # without NamedTuple's Python-level __new__
            self._pending += [new(Sample, (n, labels, v, ts)) for n, v in zip(names, numbers, strict=True)]
            self._pending += [new(Sample, (h.name, labels, h.snapshot(), ts)) for h in hists]

    def gauge(self, name: str, labels: Labels, value: float, ts: float) -> None:
        self.values(labels, ts, ((name, value),))

    def inc(self, name: str, labels: Labels, amount: float, ts: float) -> None:
        self.values(labels, ts, (), ((name, amount),))

    def values(self, labels: Labels, ts: float, gauges: Iterable[tuple[str, float]],
               counters: Iterable[tuple[str, float]] = (),
               observed: Iterable[tuple[str, Iterable[float]]] = ()) -> None:
        """Gauges, counter increments and histogram observations of one label set at one time (a probe
        run's own values), in one call and, encoded, one group. Values that are not finite numbers are
        not reported (a counter's total still keeps them)."""
        # hot (the ICMP fleet: ~1,000 calls a second at 10,000 targets): one lookup of the label set
        isfinite = math.isfinite
        ls = self._set(labels)
        checked, totals = ls.checked, ls.totals
        names: list[str] = []
        numbers: list[float] = []
        for name, value in gauges:
            if name not in checked:
                self._check(name, ls)
            if isfinite(value):
                names.append(name)
                numbers.append(float(value))
        changed = False
        for name, amount in counters:
            if name not in checked:
                self._check(name, ls)
            total = totals.get(name, 0.0) + amount
            totals[name] = total
            changed = True
            if isfinite(total):
                names.append(name)
                numbers.append(total)
        hists: list[_Hist] = []
        for name, values in observed:
            h = ls.hists.get(name)
            if h is None:
                self._check(name, ls)
                h = ls.hists[name] = _Hist(self._buckets.get(name, RTT_BUCKETS), name)
            h.observe_many(values)
            changed = True
            if isfinite(h.sum):
                hists.append(h)
        if changed:
            self._dirty.add(ls)
        self._emit(ls, ts, names, numbers, hists)

    def prepare(self, labels: Labels, gauges: tuple[str, ...], counters: tuple[str, ...],
                histogram: str, nanos: frozenset[str] = frozenset()) -> Prepared:
        """The label set's values of this shape, to record with :meth:`Prepared.record` (every name is
        checked against the catalog now: ValueError or KeyError as for :meth:`values`). The values named in
        ``nanos`` are reported to the nanosecond (wire.NANOS): times from nanosecond clocks."""
        ls = self._set(labels)
        for name in (*gauges, *counters, histogram):
            self._check(name, ls)
        h = ls.hists.get(histogram)
        if h is None:
            h = ls.hists[histogram] = _Hist(self._buckets.get(histogram, RTT_BUCKETS), histogram)
        if not ls.json:
            ls.json = wire.labels_json(ls.labels)
        return Prepared(self, ls, gauges, counters, h, nanos)

    def set_total(self, name: str, labels: Labels, value: float, ts: float) -> None:
        """Record a counter kept elsewhere (a kernel counter) at its cumulative ``value``.

        The value is reported as-is, so it matches ``ip -s link`` and friends. When the source
        resets (interface re-created, station re-associated, reboot) the value drops; Prometheus's
        rate()/increase() treat a drop as a counter reset, which is exactly what happened. Values
        that are not finite or negative are not counters and are ignored.
        """
        ls = self._set(labels)
        self._check(name, ls)
        if not math.isfinite(value) or value < 0:
            return
        ls.totals[name] = float(value)
        self._dirty.add(ls)
        self._emit(ls, ts, [name], [float(value)], [])

    def touch(self, name: str, labels: Labels, ts: float) -> None:
        """Report a counter at its current total (0 if new) so the series exists."""
        self.inc(name, labels, 0.0, ts)

    def observe(self, name: str, labels: Labels, value: float, ts: float) -> None:
        self.observe_many(name, labels, (value,), ts)

    def observe_many(self, name: str, labels: Labels, values: Iterable[float], ts: float) -> None:
        """Observe several values at one time: one sample with the resulting histogram
        (an ICMP round's RTTs: one snapshot instead of one per packet)."""
        self.values(labels, ts, (), (), ((name, values),))

    def total(self, name: str, labels: Labels) -> float:
        ls = self._sets.get(labels)
        return 0.0 if ls is None else ls.totals.get(name, 0.0)

    def drain(self) -> list[Sample]:
        """Samples recorded since the last drain, oldest first (``encoded=False``)."""
        if self._encoded:
            raise RuntimeError("an encoded recorder keeps groups: use drain_groups()")
        out, self._pending = self._pending, []
        return out

    def drain_groups(self) -> tuple[list[str], int]:
        """Report groups written since the last drain, oldest first, and how many values they hold
        (``encoded=True``; wire.encode_groups makes the report)."""
        out, n = self._groups, self._count
        self._groups, self._count = [], 0
        return out, n

    # -- persistence with the spool ---------------------------------------------
    def changed_totals(self) -> list[tuple[str, str]]:
        """(labels, totals) rows, JSON, one per label set whose counters or histograms changed since the
        last :meth:`totals_saved`: what the spool stores with the next batch, in the same transaction.
        A row holds all totals of its label set (an ICMP target's four counters and histogram).

        Only changed label sets: writing every total with every batch cost the agent ~8 % of a core at
        10,000 ICMP targets (bench/icmp.py) and rewrote megabytes of flash each time."""
        rows: list[tuple[str, str]] = []
        isfinite = math.isfinite
        for ls in self._dirty:
            if not ls.key:
                ls.key = json.dumps([list(p) for p in ls.labels], separators=(",", ":"))
            totals, hists = ls.totals, ls.hists
            if not all(map(isfinite, totals.values())):
                rows.append((ls.key, _totals_json(totals, hists)))
                continue
            n_totals, n_hists, template = ls.row
            if n_totals != len(totals) or n_hists != len(hists) or not template:  # names are only ever added
                template = _totals_template(tuple(totals), [(n, h.bounds) for n, h in hists.items()])
                ls.row = (len(totals), len(hists), template)
            args: list[Any] = [*totals.values()]
            for h in hists.values():
                args += h.counts
                args.append(_number(h.sum))
            rows.append((ls.key, template % tuple(args)))
        return rows

    def totals_saved(self) -> None:
        """The rows of :meth:`changed_totals` are stored (their batch is committed)."""
        self._dirty = set()

    def load_totals(self, rows: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Totals saved by :meth:`changed_totals`. Series whose metric left the catalog or whose labels
        changed (an older agent's spool) are dropped: they would only be rejected. A row that cannot be
        read (damaged on flash) is skipped whole and returned as (its key, why): its series start again
        from 0, which Prometheus takes for a counter reset, where failing would keep the agent from
        starting at all."""
        bad: list[tuple[str, str]] = []
        for k, v in rows:
            try:
                labels, counters, hists = _totals_row(k, v)
            except (ValueError, TypeError, AttributeError) as e:  # json's errors are ValueErrors
                bad.append((k, f"{type(e).__name__}: {e}"))
                continue
            ls: _LabelSet | None = None
            for name, total in counters:
                if self._known(name, labels):
                    ls = ls or self._set(labels)
                    ls.totals[name] = total
            for h in hists:
                if self._known(h.name, labels):
                    ls = ls or self._set(labels)
                    ls.hists[h.name] = h
                    ls.row = (0, 0, "")  # bounds may differ from the template's
            if ls is not None:
                ls.key = k
        return bad

    def load_legacy_totals(self, text: str) -> None:
        """All totals as one JSON document: how spools before per-label-set rows kept them. They are
        marked changed, so the next batch stores them as rows."""
        data: dict[str, Any] = json.loads(text)
        for n, lb, v in data.get("counters", []):
            labels = tuple((str(a), str(b)) for a, b in lb)
            if self._known(n, labels):
                ls = self._set(labels)
                ls.totals[n] = float(v)
                self._dirty.add(ls)
        for n, lb, bounds, counts, s in data.get("histograms", []):
            labels = tuple((str(a), str(b)) for a, b in lb)
            if self._known(n, labels):
                ls = self._set(labels)
                ls.hists[n] = _Hist.load(bounds, counts, s, n)
                ls.row = (0, 0, "")
                self._dirty.add(ls)

    @staticmethod
    def _known(name: str, labels: Labels) -> bool:
        return SORTED_LABELS.get(name) == tuple(k for k, _ in labels)


def _totals_row(k: str, v: str) -> tuple[Labels, list[tuple[str, float]], list[_Hist]]:
    """One row of :meth:`Recorder.changed_totals` read back: (labels, counter totals, histograms)."""
    labels = tuple((str(a), str(b)) for a, b in json.loads(k))
    data = json.loads(v)
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    counters = [(str(name), float(total)) for name, total in data.get("c", {}).items()]
    hists = [_Hist.load(bounds, counts, s, str(name)) for name, (bounds, counts, s) in data.get("h", {}).items()]
    return labels, counters, hists


def _number(v: float) -> str:
    """A float as JSON that json.loads reads back: repr, or Infinity/NaN when not finite (repr's 'inf' is not)."""
    return repr(v) if math.isfinite(v) else json.dumps(v)


def _totals_json(totals: dict[str, float], hists: dict[str, _Hist]) -> str:
    """A row of :meth:`Recorder.changed_totals` (the general form: totals that are not finite numbers)."""
    h = ",".join([f'"{n}":[{_bounds_json(h.bounds)},{h.counts!r},{_number(h.sum)}]' for n, h in hists.items()])
    return f'{{"c":{json.dumps(totals, separators=(",", ":"))},"h":{{{h}}}}}'


_TOTALS_TEMPLATES: dict[tuple[tuple[str, ...], tuple[tuple[str, tuple[float, ...]], ...]], str] = {}


def _totals_template(names: tuple[str, ...], hists: list[tuple[str, tuple[float, ...]]]) -> str:
    """A %-format writing a row of :meth:`Recorder.changed_totals` in one step: ``template % (*totals,
    *counts and _number(sum) of each histogram)``, totals finite (repr), counts ints. One per shape: at 10,000
    ICMP targets the agent saves ~1,000 rows a second of one shape (f-strings per value: 7.2-8.4 us a row)."""
    key = (names, tuple(hists))
    t = _TOTALS_TEMPLATES.get(key)
    if t is None:  # names are catalog identifiers and bounds numbers: no '%' or '"' to escape
        c = ",".join(f'"{n}":%r' for n in names)
        h = ",".join(f'"{n}":[{_bounds_json(b)},[{",".join(["%d"] * (len(b) + 1))}],%s]' for n, b in hists)
        t = _TOTALS_TEMPLATES[key] = f'{{"c":{{{c}}},"h":{{{h}}}}}'
    return t


_BOUNDS_JSON: dict[tuple[float, ...], str] = {}


def _bounds_json(bounds: tuple[float, ...]) -> str:
    j = _BOUNDS_JSON.get(bounds)
    if j is None:
        j = _BOUNDS_JSON[bounds] = json.dumps(list(bounds))
    return j
