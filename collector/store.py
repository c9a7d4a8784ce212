"""The collector's durable memory: which (node, stream, seq) were applied.

Agents send each spool stream strictly oldest first, one batch at a time, so a
high-water mark per (node, stream) decides "already applied" exactly. A jump
past hwm + 1 means the agent had to drop batches: that is counted as a gap.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    node TEXT NOT NULL,
    stream TEXT NOT NULL,
    hwm INTEGER NOT NULL,
    missing INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (node, stream)
);
"""


class Store:
    def __init__(self, path: str | Path):
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # an ack is a promise: fsync before it
        self.db.executescript(SCHEMA)
        self._hwm: dict[tuple[str, str], int] = {}
        self._missing: dict[str, int] = {}
        for node, stream, hwm, missing in self.db.execute("SELECT node, stream, hwm, missing FROM streams"):
            self._hwm[(node, stream)] = int(hwm)
            self._missing[node] = self._missing.get(node, 0) + int(missing)

    def hwm(self, node: str, stream: str) -> int:
        return self._hwm.get((node, stream), 0)

    def missing(self, node: str) -> int:
        return self._missing.get(node, 0)

    def commit(self, node: str, stream: str, seq: int) -> int:
        """Record ``seq`` as applied; returns how many sequence numbers were skipped."""
        prev = self.hwm(node, stream)
        gap = max(0, seq - prev - 1)
        self.db.execute(
            "INSERT INTO streams(node, stream, hwm, missing) VALUES (?,?,?,?) "
            "ON CONFLICT(node, stream) DO UPDATE SET hwm=excluded.hwm, missing=missing+excluded.missing",
            (node, stream, seq, gap),
        )
        self._hwm[(node, stream)] = seq
        if gap:
            self._missing[node] = self._missing.get(node, 0) + gap
        return gap

    def close(self) -> None:
        self.db.close()
