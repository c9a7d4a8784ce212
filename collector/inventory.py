"""The event's inventory: site, nodes with coordinates and role, cameras and the node they hang off.

Ansible renders this file from its inventory (the single source); the collector
exports it as info metrics so Grafana can draw the festival map and join names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.confload import check, load_file
from agent.wire import ID_RE

_LAT = check(min=-90, max=90)
_LON = check(min=-180, max=180)


@dataclass(frozen=True)
class SiteEntry:
    id: str = field(metadata=check(pattern=ID_RE.pattern))
    title: str = ""
    lat: float = field(default=0.0, metadata=_LAT)
    lon: float = field(default=0.0, metadata=_LON)


@dataclass(frozen=True)
class NodeEntry:
    lat: float = field(metadata=_LAT)
    lon: float = field(metadata=_LON)
    title: str = ""
    role: str = field(default="edge", metadata=check(pattern=r"[a-z][a-z0-9_-]{0,31}"))


@dataclass(frozen=True)
class CameraEntry:
    node: str = field(metadata=check(pattern=ID_RE.pattern))
    title: str = ""
    lat: float | None = field(default=None, metadata=_LAT)
    lon: float | None = field(default=None, metadata=_LON)


@dataclass(frozen=True)
class Inventory:
    site: SiteEntry
    nodes: dict[str, NodeEntry] = field(default_factory=dict)
    cameras: dict[str, CameraEntry] = field(default_factory=dict)

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        for n in self.nodes:
            if not ID_RE.fullmatch(n):
                errors.append((f"nodes.{n}", f"node id must match {ID_RE.pattern}"))
        for c, cam in self.cameras.items():
            if not ID_RE.fullmatch(c):
                errors.append((f"cameras.{c}", f"camera id must match {ID_RE.pattern}"))
            if cam.node not in self.nodes:
                errors.append((f"cameras.{c}.node", f"camera on undefined node {cam.node!r}"))
        return errors


def load(path: str | Path) -> Inventory:
    return load_file(path, Inventory)
