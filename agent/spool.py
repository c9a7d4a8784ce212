"""The agent's disk spool: every batch is written here before it is sent.

SQLite in WAL mode (stdlib). A batch leaves the spool only when the collector
acknowledged it, or when the spool is over its size or age bound, oldest first,
and then it is counted as dropped. The sequence number, the spool's random
stream id and the agent's running totals (one row per label set, only the
changed ones written) live in the same database and change in the
same transaction as the batch they belong to, so a kill -9 at any point leaves
a consistent spool.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    samples INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS totals (labels TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Batch:
    seq: int
    created: float
    samples: int
    body: bytes


@dataclass(frozen=True)
class SpoolStats:
    batches: int
    bytes: int
    oldest_created: float | None
    dropped: int


class Spool:
    def __init__(self, path: str | Path, max_bytes: int, max_age: float):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age = max_age
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes; fsync at checkpoints
        self.db.executescript(SCHEMA)
        if str(path) != ":memory:":
            os.chmod(self.path, 0o600)
        with self._tx():
            if self._meta("stream") is None:
                self._set("stream", secrets.token_hex(8))
                self._set("next_seq", "1")
                self._set("dropped", "0")
        self.stream: str = self._meta("stream") or ""
        self._legacy = self._meta("totals") is not None  # totals of an older spool, removed by the next append

    def _tx(self) -> sqlite3.Connection:
        return _Tx(self.db)  # type: ignore[return-value]

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def totals(self) -> list[tuple[str, str]]:
        """The running totals saved so far: (labels, totals) rows (agent/recorder.py writes and reads them)."""
        return [(str(k), str(v)) for k, v in self.db.execute("SELECT labels, value FROM totals")]

    def legacy_totals(self) -> str | None:
        """Totals as one JSON document, as spools before the per-series rows kept them (removed by the
        next :meth:`append`, which stores them as rows)."""
        return self._meta("totals")

    def append(self, build: Callable[[int], bytes], samples: int, totals: Iterable[tuple[str, str]] = (),
               now: float | None = None) -> int:
        """Store one batch and the totals that changed with it; ``build(seq)`` makes its body. Returns
        the sequence number."""
        now = time.time() if now is None else now
        with self._tx():
            seq = int(self._meta("next_seq") or "1")
            body = build(seq)
            self.db.execute(
                "INSERT INTO batches(seq, created, samples, body) VALUES (?,?,?,?)", (seq, now, samples, body)
            )
            self._set("next_seq", str(seq + 1))
            self.db.executemany("INSERT OR REPLACE INTO totals(labels, value) VALUES (?, ?)", totals)
            if self._legacy:
                self.db.execute("DELETE FROM meta WHERE key='totals'")
            self._enforce(now)
        self._legacy = False
        return seq

    def _enforce(self, now: float) -> None:
        dropped = 0
        cur = self.db.execute("DELETE FROM batches WHERE created < ?", (now - self.max_age,))
        dropped += cur.rowcount
        total = self.db.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM batches").fetchone()[0]
        if total > self.max_bytes:
            # oldest first; never the newest batch (it is what we just measured)
            rows = self.db.execute("SELECT seq, LENGTH(body) FROM batches ORDER BY seq").fetchall()
            for seq, size in rows[:-1]:
                if total <= self.max_bytes:
                    break
                self.db.execute("DELETE FROM batches WHERE seq=?", (seq,))
                total -= size
                dropped += 1
        if dropped:
            self._set("dropped", str(int(self._meta("dropped") or "0") + dropped))

    def _first(self, order: str) -> Batch | None:
        sql = f"SELECT seq, created, samples, body FROM batches ORDER BY seq {order} LIMIT 1"
        row = self.db.execute(sql).fetchone()
        return None if row is None else Batch(int(row[0]), float(row[1]), int(row[2]), bytes(row[3]))

    def oldest(self) -> Batch | None:
        return self._first("ASC")

    def newest(self) -> Batch | None:
        return self._first("DESC")

    def newest_created(self) -> float | None:
        """When the newest batch was cut, without reading its body."""
        row = self.db.execute("SELECT created FROM batches ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    def oldest_seq(self) -> int | None:
        row = self.db.execute("SELECT MIN(seq) FROM batches").fetchone()
        return None if row[0] is None else int(row[0])

    def delete(self, seq: int) -> None:
        with self._tx():
            self.db.execute("DELETE FROM batches WHERE seq=?", (seq,))

    def stats(self) -> SpoolStats:
        n, size, oldest = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0), MIN(created) FROM batches"
        ).fetchone()
        return SpoolStats(int(n), int(size), None if oldest is None else float(oldest),
                          int(self._meta("dropped") or "0"))

    def close(self) -> None:
        self.db.close()


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT/ROLLBACK around a block (autocommit connection)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
