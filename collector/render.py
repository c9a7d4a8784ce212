"""Fast /metrics rendering for the agents' series, byte-identical to prometheus-client.

prometheus-client builds a Sample object and a label dict per series on every
scrape and formats them again; at 100k series that is ~2 s of one core, and the
GIL makes ingest wait while it runs. Here the formatted ``name{labels}`` prefix
of every series is cached (labels of a series never change), so a scrape only
formats values and joins strings. The collector's own and inventory families
are few and still go through prometheus-client (``families``). A test checks
that both formats come out byte-identical to prometheus-client's encoders.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Iterator
from typing import cast

from prometheus_client import CollectorRegistry
from prometheus_client import openmetrics as om
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_latest_om
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _float_to_go

from agent.catalog import METRICS
from agent.wire import Histogram
from collector.exposition import _le, families
from collector.inventory import Inventory
from collector.remote_write import Writer
from collector.state import Snapshot

Labels = tuple[tuple[str, str], ...]
floatToGoString = cast(Callable[[float], str], _float_to_go)  # the exact number format Prometheus reads


def _esc(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _One(Collector):
    def __init__(self, metric: object):
        self.metric = metric

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        yield self.metric


def _advance(gen: Generator[None, None, bytes]) -> bytes | None:
    """One step of a render; its result once it is done."""
    try:
        next(gen)
    except StopIteration as done:
        return cast(bytes, done.value)
    return None


class Renderer:
    def __init__(self) -> None:
        # (sample name, agent labels, node, site, le) -> 'name{...}' (with a trailing space)
        self._prefix: dict[tuple[str, Labels, str, str, str], str] = {}
        self._headers: dict[tuple[str, bool], str] = {}

    def _p(self, sample: str, labels: Labels, node: str, site: str, le: str = "") -> str:
        key = (sample, labels, node, site, le)
        p = self._prefix.get(key)
        if p is None:
            pairs = [*labels, ("node", node), ("site", site)]
            if le:
                pairs.append(("le", le))
            pairs.sort()
            p = self._prefix[key] = sample + "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in pairs) + "} "
        return p

    def _header(self, name: str, openmetrics: bool) -> str:
        h = self._headers.get((name, openmetrics))
        if h is None:
            spec = METRICS[name]
            base = name[:-6] if spec.type == "counter" and name.endswith("_total") else name
            if openmetrics:
                h = f"# HELP {base} {_esc(spec.help)}\n# TYPE {base} {spec.type}\n"
            else:
                help_ = spec.help.replace("\\", r"\\").replace("\n", r"\n")
                h = f"# HELP {name} {help_}\n# TYPE {name} {spec.type}\n"
            self._headers[(name, openmetrics)] = h
        return h

    def render(self, snap: Snapshot, inv: Inventory | None, writer: Writer | None, pending: int,
               openmetrics: bool) -> bytes:
        """Render in one go (benchmarks, tests)."""
        gen = self.steps(snap, inv, writer, pending, openmetrics)
        while (out := _advance(gen)) is None:
            pass
        return out

    async def render_async(self, snap: Snapshot, inv: Inventory | None, writer: Writer | None, pending: int,
                           openmetrics: bool) -> bytes:
        """Render on the event loop, handing it back every few thousand series so ingest never waits long."""
        gen = self.steps(snap, inv, writer, pending, openmetrics)
        while (out := _advance(gen)) is None:
            await asyncio.sleep(0)
        return out

    def steps(self, snap: Snapshot, inv: Inventory | None, writer: Writer | None, pending: int,
              openmetrics: bool, step: int = 1000) -> Generator[None, None, bytes]:
        if len(self._prefix) > 4 * sum(len(n.series) for n in snap.nodes.values()) + 10_000:
            self._prefix.clear()  # series came and went (cameras replaced): start over
        chunks: dict[str, list[str]] = {}
        # the collector's own and inventory families: few, rendered by prometheus-client
        encode = generate_latest_om if openmetrics else generate_latest
        for fam in families(snap, inv, writer, pending, include_series=False):
            reg = CollectorRegistry(auto_describe=False)
            reg.register(_One(fam))
            text = encode(reg).decode()
            if openmetrics:
                text = text[: -len("# EOF\n")]
            key = fam.name + "_total" if fam.type == "counter" else fam.name
            chunks[key] = [text]
        # the agents' series
        p = self._p
        done = 0
        folded: dict[str, int] = {}
        for node_id in sorted(snap.nodes):
            n = snap.nodes[node_id]
            if not snap.live(n):
                continue
            site = n.site
            for (name, labels), (value, _ts) in sorted(n.series.items()):
                done += 1
                if done % step == 0:
                    # fold each family's new lines into one segment, so no single step joins them all
                    for fam_name, lines in chunks.items():
                        k = folded.get(fam_name, 0)
                        if len(lines) - k > 1:
                            lines[k:] = ["".join(lines[k:])]
                        folded[fam_name] = min(k + 1, len(lines))
                    yield
                if name not in METRICS:
                    continue
                out = chunks.get(name)
                if out is None:
                    out = chunks[name] = [self._header(name, openmetrics)]
                if isinstance(value, Histogram):
                    for le, c in value.buckets:
                        out.append(f"{p(name + '_bucket', labels, node_id, site, _le(le))}{floatToGoString(c)}\n")
                    out.append(f"{p(name + '_count', labels, node_id, site)}{floatToGoString(value.count)}\n")
                    out.append(f"{p(name + '_sum', labels, node_id, site)}{floatToGoString(value.sum)}\n")
                else:
                    out.append(f"{p(name, labels, node_id, site)}{floatToGoString(value)}\n")
        parts = ["".join(chunks[k]).encode() for k in sorted(chunks)]
        if openmetrics:
            parts.append(b"# EOF\n")
        return b"".join(parts)


# Content types (as prometheus-client's choose_encoder names them) the fast path renders.
FAST = {
    "text/plain; version=0.0.4; charset=utf-8": False,
    om.exposition.CONTENT_TYPE_LATEST: True,
    "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=underscores": True,
}
