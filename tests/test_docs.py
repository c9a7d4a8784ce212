"""Every metric is documented, with its type, in docs/metrics.md."""

from __future__ import annotations

import re

from helpers import ROOT

from agent.catalog import METRICS
from collector.exposition import OWN_METRICS


def _documented() -> dict[str, str]:
    rows = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        m = re.match(r"\|\s*`(mogli_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_every_metric_is_documented_with_its_type() -> None:
    docs = _documented()
    expected = {m.name: m.type for m in METRICS.values()} | {m.name: m.type for m in OWN_METRICS.values()}
    missing = sorted(set(expected) - set(docs))
    assert not missing, f"not in docs/metrics.md: {missing}"
    wrong = {n: (docs[n], t) for n, t in expected.items() if docs[n] != t}
    assert not wrong, f"documented type differs (docs, code): {wrong}"
    stale = sorted(set(docs) - set(expected))
    assert not stale, f"documented but not exported: {stale}"
