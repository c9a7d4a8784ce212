"""The collector's durable memory: which (node, stream, seq) were applied.

Agents send their newest batch first (live data on time) and replay the backlog
oldest first, so batches can arrive out of order. Per (node, stream) we keep a
``floor`` (every seq below it is settled: applied, or dropped by the agent) and
the set of applied seqs at or above it. The agent tells us the oldest seq still
in its spool (``Mogli-Spool-Oldest``): whatever below that was never applied was
dropped from a full spool, and is counted as missing. The set stays small: it
only holds what arrived ahead of the floor.

Everything an acknowledgement promises (the applied seq, the backfill bodies of
its late samples) is committed in one transaction with synchronous=FULL before
the collector answers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    node TEXT NOT NULL,
    stream TEXT NOT NULL,
    floor INTEGER NOT NULL DEFAULT 1,
    missing INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (node, stream)
);
CREATE TABLE IF NOT EXISTS applied (
    node TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (node, stream, seq)
);
CREATE TABLE IF NOT EXISTS backfill (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    samples INTEGER NOT NULL,
    body BLOB NOT NULL
);
"""


@dataclass
class StreamState:
    floor: int = 1
    missing: int = 0
    applied: set[int] = field(default_factory=set)

    def seen(self, seq: int) -> bool:
        return seq < self.floor or seq in self.applied


class Store:
    def __init__(self, path: str | Path):
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # an ack is a promise: fsync before it
        self.db.executescript(SCHEMA)
        self.streams: dict[tuple[str, str], StreamState] = {}
        self._missing: dict[str, int] = {}  # per node, over all its streams (read on every scrape)
        for node, stream, floor, missing in self.db.execute("SELECT node, stream, floor, missing FROM streams"):
            self.streams[(node, stream)] = StreamState(int(floor), int(missing))
            self._missing[node] = self._missing.get(node, 0) + int(missing)
        for node, stream, seq in self.db.execute("SELECT node, stream, seq FROM applied"):
            self.streams.setdefault((node, stream), StreamState()).applied.add(int(seq))

    def seen(self, node: str, stream: str, seq: int) -> bool:
        st = self.streams.get((node, stream))
        return st is not None and st.seen(seq)

    def missing(self, node: str) -> int:
        return self._missing.get(node, 0)

    def commit(self, node: str, stream: str, seq: int, oldest: int | None = None,
               backfill: Sequence[tuple[int, bytes]] = ()) -> int:
        """Record ``seq`` as applied (with its backfill bodies) in one transaction.

        ``oldest``: the oldest seq still in the agent's spool. Returns how many
        sequence numbers this settled as missing (dropped by the agent).
        """
        key = (node, stream)
        st = self.streams.get(key) or StreamState()
        applied = set(st.applied)
        applied.add(seq)
        floor, newly_missing = st.floor, 0
        if oldest is not None and oldest > floor:
            # below the agent's oldest spooled batch nothing more can come: settle it
            newly_missing = (oldest - floor) - sum(1 for s in applied if floor <= s < oldest)
            floor = oldest
        while floor in applied:
            floor += 1
        applied = {s for s in applied if s >= floor}
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(
                "INSERT INTO streams(node, stream, floor, missing) VALUES (?,?,?,?) "
                "ON CONFLICT(node, stream) DO UPDATE SET floor=excluded.floor, missing=missing+excluded.missing",
                (node, stream, floor, newly_missing),
            )
            self.db.execute("DELETE FROM applied WHERE node=? AND stream=? AND seq<?", (node, stream, floor))
            if seq >= floor:
                self.db.execute("INSERT OR IGNORE INTO applied(node, stream, seq) VALUES (?,?,?)",
                                (node, stream, seq))
            for n, body in backfill:
                self.db.execute("INSERT INTO backfill(samples, body) VALUES (?, ?)", (n, body))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.streams[key] = StreamState(floor, st.missing + newly_missing, applied)
        if newly_missing:
            self._missing[node] = self._missing.get(node, 0) + newly_missing
        return newly_missing

    def next_backfill(self) -> tuple[int, bytes, int] | None:
        row = self.db.execute("SELECT id, body, samples FROM backfill ORDER BY id LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]), int(row[2]))

    def delete_backfill(self, row_id: int) -> None:
        self.db.execute("DELETE FROM backfill WHERE id=?", (row_id,))

    def backfill_pending(self) -> tuple[int, int]:
        """(requests, samples) waiting to be written."""
        n, samples = self.db.execute("SELECT COUNT(*), COALESCE(SUM(samples), 0) FROM backfill").fetchone()
        return int(n), int(samples)

    def close(self) -> None:
        self.db.close()
