"""The collector's configuration (see collector/example.yml for every key, commented)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from agent.confload import check, load_file, load_text
from agent.wire import ID_RE

SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = field(default=9630, metadata=check(min=0, max=65535))


@dataclass(frozen=True)
class AgentEntry:
    # sha256 of the node's bearer token, lower-case hex (`mogli-collector add-agent NODE` prints it)
    token_sha256: str = field(metadata=check(pattern=SHA256_RE.pattern))


def _nodes(v: dict[str, AgentEntry]) -> str | None:
    for node in v:
        if not ID_RE.fullmatch(node):
            return f"node id {node!r} must match {ID_RE.pattern}"
    hashes = [a.token_sha256 for a in v.values()]
    if len(set(hashes)) != len(hashes):
        return "two nodes share one token"
    return None


@dataclass(frozen=True)
class RemoteWriteConfig:
    # Prometheus remote-write endpoint for late samples (replayed spools), e.g.
    # http://127.0.0.1:9090/api/v1/write (Prometheus needs --web.enable-remote-write-receiver
    # and storage.tsdb.out_of_order_time_window). Empty: no backfill.
    url: str = ""
    # Labels the scrape adds, so backfilled samples land in the same series as scraped ones.
    job: str = "mogli"
    instance: str = ""  # default: listen.host:listen.port, as in the scrape config
    # Samples measured longer ago than this when they arrive count as late and are backfilled.
    late_after: float = field(default=20.0, metadata=check(min=1, max=86400))
    timeout: float = field(default=10.0, metadata=check(min=0.5, max=300))
    max_samples_per_request: int = field(default=5000, metadata=check(min=1, max=100_000))


@dataclass(frozen=True)
class TlsConfig:
    cert_file: str = ""  # PEM certificate (chain); with key_file: serve HTTPS
    key_file: str = ""
    client_ca_file: str = ""  # when set, agents must present a client certificate signed by this CA


@dataclass(frozen=True)
class RateLimitConfig:
    # Reports per second each node may send (token bucket); over it: 429, the agent backs off.
    per_second: float = field(default=20.0, metadata=check(min=0.01, max=100_000))
    burst: int = field(default=100, metadata=check(min=1, max=1_000_000))


@dataclass(frozen=True)
class CollectorConfig:
    listen: ListenConfig = field(default_factory=ListenConfig)
    state_path: str = "/var/lib/mogli-collector/state.db"
    stale_after: float = field(default=60.0, metadata=check(min=1, max=86400))
    max_body_bytes: int = field(default=8_000_000, metadata=check(min=10_000, max=512_000_000))
    require_token: bool = True
    # The event's inventory (site, nodes with coordinates, cameras), rendered by Ansible. Empty: none.
    inventory: str = ""
    # When an agent's clock is off by more than this, its sample timestamps are corrected.
    max_clock_offset: float = field(default=5.0, metadata=check(min=0.001, max=86400 * 365))
    remote_write: RemoteWriteConfig = field(default_factory=RemoteWriteConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    agents: dict[str, AgentEntry] = field(default_factory=dict, metadata=check(validate=_nodes))
    log_level: str = field(default="info", metadata=check(pattern="debug|info|warning|error"))

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        if self.require_token and not self.agents:
            errors.append(("agents", "require_token is true but no agents are listed: nobody could report"))
        if bool(self.tls.cert_file) != bool(self.tls.key_file):
            errors.append(("tls", "cert_file and key_file go together"))
        if self.tls.client_ca_file and not self.tls.cert_file:
            errors.append(("tls.client_ca_file", "client certificates need cert_file and key_file"))
        for key in ("cert_file", "key_file", "client_ca_file"):
            path = getattr(self.tls, key)
            if path and not os.path.isfile(path):
                errors.append((f"tls.{key}", f"no such file: {path}"))
        return errors


def load(path: str | Path) -> CollectorConfig:
    return load_file(path, CollectorConfig)


def loads(text: str, file: str = "<config>") -> CollectorConfig:
    return load_text(text, CollectorConfig, file)
