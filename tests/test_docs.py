"""Every metric is documented, with its type, in docs/metrics.md."""

from __future__ import annotations

import dataclasses
import re

from helpers import ROOT

from agent.catalog import METRICS
from agent.probes import PROBES
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


SECTIONS = ("## What it measures", "## Config", "## Metrics", "## Permissions", "## Example output")


def test_every_probe_kind_has_its_page_with_every_config_key() -> None:
    """docs/probes/<kind>.md for each kind the agent runs, with the five sections and every config key in Config
    (the metrics are checked against docs/metrics.md above)."""
    problems = []
    for kind, pk in sorted(PROBES.items()):
        page = ROOT / "docs" / "probes" / f"{kind}.md"
        if not page.exists():
            problems.append(f"{kind}: no {page.relative_to(ROOT)}")
            continue
        text = page.read_text()
        problems += [f"{kind}: no section {s!r}" for s in SECTIONS if f"\n{s}\n" not in text]
        config = text.split("\n## Config\n", 1)[-1].split("\n## ", 1)[0]
        problems += [f"{kind}: config key {f.name!r} not in Config" for f in dataclasses.fields(pk.config)
                     if f.init and not re.search(rf"\b{f.name}:", config)]
    assert not problems, "\n".join(problems)
