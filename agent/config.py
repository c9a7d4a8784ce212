"""The agent's configuration (see agent/example.yml for every key, commented)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.confload import check, load_file, load_text
from agent.probes import PROBES
from agent.wire import ID_RE

ID_PATTERN = ID_RE.pattern


def _url(v: str) -> str | None:
    u = urlsplit(v)
    if u.scheme not in ("http", "https") or not u.hostname:
        return "must be an http:// or https:// URL"
    return None


@dataclass(frozen=True)
class CollectorConfig:
    url: str = field(default="http://127.0.0.1:9630/api/v1/reports", metadata=check(validate=_url))
    token_file: str = ""  # file holding this node's bearer token (0600); empty: send no token
    ca_file: str = ""  # CA bundle to verify an https collector; empty: system CAs
    client_cert_file: str = ""  # client certificate (PEM) when the collector requires one
    client_key_file: str = ""
    timeout: float = field(default=4.0, metadata=check(min=0.5, max=300))
    report_interval: float = field(default=2.0, metadata=check(min=0.2, max=600))
    backoff_max: float = field(default=10.0, metadata=check(min=0.5, max=3600))
    # Backlog batches replayed per second after an outage; the newest (live) batch always goes first.
    replay_rate: float = field(default=20.0, metadata=check(min=0.1, max=10000))


@dataclass(frozen=True)
class SpoolConfig:
    path: str = "/var/lib/mogli-agent/spool.db"
    max_bytes: int = field(default=200_000_000, metadata=check(min=10_000))
    max_age: float = field(default=7 * 86400.0, metadata=check(min=60))


def _probes_class() -> type[Any]:
    """One list of probes per kind, built from the PROBES registry."""
    fields: list[tuple[str, Any, Any]] = [
        (kind, list[pk.config], field(default_factory=list)) for kind, pk in PROBES.items()  # type: ignore[name-defined]
    ]
    return dataclasses.make_dataclass("ProbesConfig", fields, frozen=True)


ProbesConfig: type[Any] = _probes_class()


@dataclass(frozen=True)
class AgentConfig:
    node: str = field(metadata=check(pattern=ID_PATTERN))
    site: str = field(metadata=check(pattern=ID_PATTERN))
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)  # type: ignore[valid-type]
    log_level: str = field(default="info", metadata=check(pattern="debug|info|warning|error"))

    def validate(self) -> list[tuple[str, str]]:
        """Cross-field checks: target label values must be unique per kind."""
        errors = []
        for kind in PROBES:
            seen: set[str] = set()
            for i, p in enumerate(getattr(self.probes, kind)):
                label = p.name or p.target
                if label in seen:
                    errors.append((f"probes.{kind}[{i}]", f"duplicate target {label!r}; set a distinct name"))
                seen.add(label)
        return errors


def probe_list(cfg: AgentConfig) -> list[tuple[str, Any]]:
    out = [(kind, p) for kind in PROBES for p in getattr(cfg.probes, kind)]
    spool_dir = str(Path(cfg.spool.path).parent)
    # the case-health probe reports the spool's file system unless told otherwise
    return [(k, dataclasses.replace(p, disk_paths=[spool_dir]) if k == "system" and not p.disk_paths else p)
            for k, p in out]


def load(path: str | Path) -> AgentConfig:
    return load_file(path, AgentConfig)


def loads(text: str, file: str = "<config>") -> AgentConfig:
    return load_text(text, AgentConfig, file)
