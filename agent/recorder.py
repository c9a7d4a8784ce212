"""The agent's running totals and the samples waiting for the next batch.

Counters and histograms are cumulative at the source (DESIGN.md decision 2):
``inc`` adds to a total kept here, and every change emits a sample carrying the
new total. Totals are saved with each spooled batch and restored at start, so
they survive a restart of the agent.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections.abc import Iterable
from typing import Any

from agent.catalog import METRICS, RTT_BUCKETS, SORTED_LABELS
from agent.wire import Histogram, Sample

Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]


class _Hist:
    __slots__ = ("bounds", "counts", "les", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.les = (*bounds, math.inf)
        self.counts = [0] * (len(bounds) + 1)  # non-cumulative, last is +Inf
        self.sum = 0.0

    def observe_many(self, values: Iterable[float]) -> None:
        counts, bounds, where = self.counts, self.bounds, bisect.bisect_left
        for v in values:
            counts[where(bounds, v)] += 1
            self.sum += v

    def snapshot(self) -> Histogram:
        cum = list(map(float, itertools.accumulate(self.counts)))
        return Histogram(tuple(zip(self.les, cum, strict=True)), self.sum, cum[-1])


class Recorder:
    def __init__(self, buckets: dict[str, tuple[float, ...]] | None = None):
        self._totals: dict[SeriesKey, float] = {}
        self._hists: dict[SeriesKey, _Hist] = {}
        self._buckets = buckets or {}
        self._pending: list[Sample] = []
        self._checked: dict[Labels, set[str]] = {}  # label set -> names of the series checked with it

    def _names(self, labels: Labels) -> set[str]:
        names = self._checked.get(labels)
        if names is None:
            names = self._checked[labels] = set()
        return names

    def _check(self, name: str, labels: Labels, names: set[str] | None = None) -> None:
        """Every series is checked against the catalog once; later samples of it only look it up."""
        names = self._names(labels) if names is None else names
        if name in names:
            return
        if SORTED_LABELS[name] != tuple(k for k, _ in labels):  # KeyError: a metric missing from the catalog
            raise ValueError(f"{name}: labels {[k for k, _ in labels]} != catalog {list(METRICS[name].labels)}")
        names.add(name)

    def gauge(self, name: str, labels: Labels, value: float, ts: float) -> None:
        self._check(name, labels)
        if math.isfinite(value):
            self._pending.append(Sample(name, labels, float(value), ts))

    def inc(self, name: str, labels: Labels, amount: float, ts: float) -> None:
        self._check(name, labels)
        key = (name, labels)
        total = self._totals.get(key, 0.0) + amount
        self._totals[key] = total
        self._pending.append(Sample(name, labels, total, ts))

    def values(self, labels: Labels, ts: float, gauges: Iterable[tuple[str, float]],
               counters: Iterable[tuple[str, float]] = ()) -> None:
        """Gauges and counter increments of one label set at one time (a probe run's own values):
        what :meth:`gauge` and :meth:`inc` do for each, in one call."""
        # hot (the ICMP fleet: ~1,000 calls a second at 10,000 targets): one lookup of the label set
        # for the check, and the Sample tuples built without NamedTuple's Python-level __new__
        pending, totals, new, isfinite = self._pending, self._totals, tuple.__new__, math.isfinite
        names = self._names(labels)
        for name, value in gauges:
            if name not in names:
                self._check(name, labels, names)
            if isfinite(value):
                pending.append(new(Sample, (name, labels, float(value), ts)))
        for name, amount in counters:
            if name not in names:
                self._check(name, labels, names)
            key = (name, labels)
            total = totals.get(key, 0.0) + amount
            totals[key] = total
            pending.append(new(Sample, (name, labels, total, ts)))

    def set_total(self, name: str, labels: Labels, value: float, ts: float) -> None:
        """Record a counter kept elsewhere (a kernel counter) at its cumulative ``value``.

        The value is reported as-is, so it matches ``ip -s link`` and friends. When the source
        resets (interface re-created, station re-associated, reboot) the value drops; Prometheus's
        rate()/increase() treat a drop as a counter reset, which is exactly what happened. Values
        that are not finite or negative are not counters and are ignored.
        """
        self._check(name, labels)
        if not math.isfinite(value) or value < 0:
            return
        self._totals[(name, labels)] = float(value)
        self._pending.append(Sample(name, labels, float(value), ts))

    def touch(self, name: str, labels: Labels, ts: float) -> None:
        """Report a counter at its current total (0 if new) so the series exists."""
        self.inc(name, labels, 0.0, ts)

    def observe(self, name: str, labels: Labels, value: float, ts: float) -> None:
        self.observe_many(name, labels, (value,), ts)

    def observe_many(self, name: str, labels: Labels, values: Iterable[float], ts: float) -> None:
        """Observe several values at one time: one sample with the resulting histogram
        (an ICMP round's RTTs: one snapshot instead of one per packet)."""
        key = (name, labels)
        h = self._hists.get(key)
        if h is None:
            self._check(name, labels)
            h = self._hists[key] = _Hist(self._buckets.get(name, RTT_BUCKETS))
        h.observe_many(values)
        self._pending.append(tuple.__new__(Sample, (name, labels, h.snapshot(), ts)))

    def total(self, name: str, labels: Labels) -> float:
        return self._totals.get((name, labels), 0.0)

    def drain(self) -> list[Sample]:
        """Samples recorded since the last drain, oldest first."""
        out, self._pending = self._pending, []
        return out

    # -- persistence with the spool ---------------------------------------------
    def dump_totals(self) -> str:
        return json.dumps(
            {
                "counters": [[n, list(map(list, lb)), v] for (n, lb), v in self._totals.items()],
                "histograms": [
                    [n, list(map(list, lb)), list(h.bounds), h.counts, h.sum] for (n, lb), h in self._hists.items()
                ],
            }
        )

    def load_totals(self, text: str) -> None:
        """Totals saved with the last spooled batch. Series whose metric left the catalog or whose
        labels changed (an older agent's spool) are dropped: they would only be rejected."""
        data: dict[str, Any] = json.loads(text)

        def known(n: str, lb: list[list[str]]) -> Labels | None:
            labels = tuple((str(a), str(b)) for a, b in lb)
            return labels if SORTED_LABELS.get(n) == tuple(k for k, _ in labels) else None

        for n, lb, v in data.get("counters", []):
            if (labels := known(n, lb)) is not None:
                self._totals[(n, labels)] = float(v)
        for n, lb, bounds, counts, s in data.get("histograms", []):
            if (labels := known(n, lb)) is not None:
                h = _Hist(tuple(bounds))
                h.counts, h.sum = list(counts), float(s)
                self._hists[(n, labels)] = h
