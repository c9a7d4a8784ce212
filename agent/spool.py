"""The agent's disk spool: every batch is written here before it is sent.

SQLite in WAL mode (stdlib). A batch leaves the spool only when the collector
acknowledged it, or when the spool is over its size or age bound, oldest first,
and then it is counted as dropped. The sequence number, the spool's random
stream id and the agent's running totals live in the same database and change
in the same transaction as the batch they belong to, so a kill -9 at any point
leaves a consistent spool.

The totals (one row per label set, agent/recorder.py) are kept in two places:
the ``totals`` table (labels -> value) and a journal, ``totals_log``, with one
row per batch holding the rows that changed with it, zlib-compressed. Writing
the changed rows into the table with every batch rewrote nearly every page of
it each time (they are spread over its whole B-tree; the WAL gets each touched
page whole): at 1,000 ICMP targets that was 22 GB a day written to the
router's flash. A journal row is a few contiguous pages. Every
:data:`LOG_ROWS` journal rows (or :data:`LOG_BYTES` of them) the journal is
folded into the table, later rows winning, and emptied, in the transaction of
the batch that filled it (the numbers behind the bounds are at :data:`LOG_ROWS`).
:meth:`Spool.totals` is the table overridden by the journal in sequence order,
so a kill -9 leaves the old or the new state, never a mix. zlib's checksum
tells a journal row damaged on disk: it is skipped with an error in the log,
the rest loads.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import time
import zlib
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
CREATE TABLE IF NOT EXISTS totals_log (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
"""

log = logging.getLogger("mogli.agent.spool")

# When the journal is folded into the totals table. What one batch costs on disk is about
# J + T / LOG_ROWS: J its journal row, T the table's pages, all rewritten by a fold once every label
# set changed since the last one (and each page once more when the WAL is checkpointed). ICMP targets
# (four counters and the RTT histogram, ~350 bytes a row; zlib level 1 makes 15-32 bytes of one, 4 ms
# for 2,000 rows) at 10 s rounds and 2 s batches: a fifth of them change per batch. At 10,000 targets
# J = 29-64 KB and T = 3.5 MB, so 60 rows (2 minutes) make J + T / 60 = J + 58 KB, against the ~800
# pages (3.2 MB, nearly every page of the table) the previous design wrote per batch. bench/spool.py
# measured 250 KB vs 8.1 MB written per batch at 10,000 targets, 36 KB vs 480 KB at 1,000 (checkpoints
# included). 30 rows would make it J + 117 KB; 120 rows J + 29 KB, with twice the journal to read at
# start-up: 59 rows at 10,000 targets are 1.7 MB, merged in 0.2 s. The byte bound keeps the journal
# (and the start-up) small with many more label sets.
LOG_ROWS = 60
LOG_BYTES = 8 << 20


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
    def __init__(self, path: str | Path, max_bytes: int, max_age: float, *, log_rows: int = LOG_ROWS,
                 log_bytes: int = LOG_BYTES):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.log_rows = log_rows  # the journal of totals is folded into the table at this many rows ...
        self.log_bytes = log_bytes  # ... or bytes (module docstring)
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
        """The running totals saved so far: (labels, totals) rows (agent/recorder.py writes and reads them),
        the table's rows overridden by the journal's in sequence order. A journal row that cannot be read
        is skipped with an error in the log."""
        merged = {str(k): str(v) for k, v in self.db.execute("SELECT labels, value FROM totals")}
        for _, rows in self._journal():
            merged.update(rows)
        return list(merged.items())

    def _journal(self) -> list[tuple[int, list[tuple[str, str]]]]:
        """The journal's rows that can be read, oldest first: (seq, rows)."""
        out = []
        for seq, body in self.db.execute("SELECT seq, body FROM totals_log ORDER BY seq"):
            try:
                out.append((int(seq), _unpack(bytes(body))))
            except (zlib.error, UnicodeDecodeError, ValueError, TypeError) as e:
                log.error("%s: totals journal row seq %s cannot be read (%s): skipped, the totals it changed are "
                          "those of an earlier batch", self.path, seq, e)
        return out

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
            self._save_totals(seq, list(totals))
            if self._legacy:
                self.db.execute("DELETE FROM meta WHERE key='totals'")
            self._enforce(now)
        self._legacy = False
        return seq

    def _save_totals(self, seq: int, rows: list[tuple[str, str]]) -> None:
        """The changed rows as one journal row, or, when the journal is full, the journal and them folded
        into the table (inside :meth:`append`'s transaction)."""
        if not rows:
            return
        body = _pack(rows)
        n, size = self.db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM totals_log").fetchone()
        if body is not None and n + 1 < self.log_rows and size + len(body) < self.log_bytes:
            self.db.execute("INSERT INTO totals_log(seq, body) VALUES (?, ?)", (seq, body))
            return
        merged: dict[str, str] = {}
        for _, journal_rows in self._journal():
            merged.update(journal_rows)
        merged.update(rows)
        self.db.executemany("INSERT OR REPLACE INTO totals(labels, value) VALUES (?, ?)", merged.items())
        self.db.execute("DELETE FROM totals_log")

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


def _pack(rows: list[tuple[str, str]]) -> bytes | None:
    """Rows as ``labels TAB value`` lines, zlib level 1 (the fastest: ~11x on ICMP totals). The recorder
    writes both as JSON, whose strings escape tabs and newlines; a row that has one anyway (None) is
    written to the table directly."""
    text = "\n".join([k + "\t" + v for k, v in rows])
    if text.count("\n") != len(rows) - 1 or text.count("\t") != len(rows):
        return None
    return zlib.compress(text.encode(), 1)


def _unpack(body: bytes) -> list[tuple[str, str]]:
    out = []
    for line in zlib.decompress(body).decode().split("\n"):
        k, v = line.split("\t")  # ValueError: not one tab
        out.append((k, v))
    return out


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT/ROLLBACK around a block (autocommit connection)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
