"""Delivers spooled batches to the collector, oldest first, one at a time.

A batch is deleted from the spool only after the collector acknowledged exactly
that (node, stream, seq). The newest batch goes first while it is fresh, so live
data reaches the operations centre on time after an outage; the backlog follows
oldest first at no more than ``replay_rate`` batches a second, so a long replay
never starves live data (the collector accepts batches out of order and applies
each once). Transport failures, 401/403, 429 and 5xx keep the
batch and retry with exponential backoff and full jitter. A 4xx that says the
batch itself can never be applied (400, 413, 415, 422) removes it and counts
``mogli_agent_send_errors_total{reason="rejected"}``, so one bad batch cannot
block the spool forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time

import aiohttp

from agent import __version__, wire
from agent.config import CollectorConfig
from agent.recorder import Recorder
from agent.spool import Batch, Spool

log = logging.getLogger("mogli.agent.sender")

REJECTED = frozenset({400, 413, 415, 422})


def jittered(base: float, cap: float, attempt: int) -> float:
    """Exponential backoff with full jitter, at least 0.2 s."""
    return max(0.2, random.uniform(0, min(cap, base * 2**attempt)))


class SendError(Exception):
    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


class Sender:
    def __init__(self, cfg: CollectorConfig, spool: Spool, rec: Recorder, wakeup: asyncio.Event, token: str = ""):
        self.cfg = cfg
        self.spool = spool
        self.rec = rec
        self.wakeup = wakeup
        self._token = token
        self._session: aiohttp.ClientSession | None = None
        self.sent = 0
        self.last_rtt: float | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.cfg.url.startswith("https:"):
            return True
        ctx = ssl.create_default_context(cafile=self.cfg.ca_file or None)
        if self.cfg.client_cert_file:
            ctx.load_cert_chain(self.cfg.client_cert_file, self.cfg.client_key_file or None)
        return ctx

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout),
                connector=aiohttp.TCPConnector(ssl=self._ssl(), limit=1),
                headers={"User-Agent": f"mogli-agent/{__version__}"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, batch: Batch) -> dict[str, object]:
        headers = {
            "Content-Type": wire.CONTENT_TYPE,
            "Content-Encoding": "gzip",
            wire.SENT_AT_HEADER: f"{time.time():.6f}",
            wire.SPOOL_OLDEST_HEADER: str(self.spool.oldest_seq() or batch.seq),
        }
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if self.last_rtt is not None:
            headers[wire.LAST_RTT_HEADER] = f"{self.last_rtt:.6f}"
        s = await self.session()
        t0 = time.monotonic()
        try:
            async with s.post(self.cfg.url, data=batch.body, headers=headers) as resp:
                text = await resp.text()
                if resp.status != 200:
                    reason = (
                        "rejected" if resp.status in REJECTED
                        else "auth" if resp.status in (401, 403)
                        else "throttled" if resp.status == 429
                        else "server" if resp.status >= 500
                        else "http"
                    )
                    raise SendError(reason, f"HTTP {resp.status}: {text[:300]}")
        except TimeoutError:
            raise SendError("timeout", f"no answer within {self.cfg.timeout} s") from None
        except (aiohttp.ClientError, OSError) as e:
            raise SendError("connect", f"{type(e).__name__}: {e}") from None
        self.last_rtt = time.monotonic() - t0
        try:
            ack = json.loads(text)
        except ValueError:
            raise SendError("bad_ack", f"acknowledgement is not JSON: {text[:100]!r}") from None
        if not isinstance(ack, dict) or ack.get("seq") != batch.seq or ack.get("stream") != self.spool.stream:
            raise SendError("bad_ack", f"acknowledgement does not match batch {batch.seq}: {text[:200]}")
        return ack

    def pick(self, now: float) -> tuple[Batch | None, bool]:
        """The batch to send next and whether it is live (fresh) rather than backlog."""
        created = self.spool.newest_created()  # a replay must not read the newest body on every pick
        if created is None:
            return None, False
        if now - created <= self.live_window:
            return self.spool.newest(), True
        return self.spool.oldest(), False

    @property
    def live_window(self) -> float:
        return 2 * self.cfg.report_interval + 2.0

    async def run(self) -> None:
        attempt = 0
        next_replay = 0.0
        while True:
            batch, live = self.pick(time.time())
            if batch is None:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            if not live:
                wait = next_replay - time.monotonic()
                if wait > 0:  # replay budget used up: wait, unless a live batch arrives first
                    self.wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wakeup.wait(), wait)
                    continue
                next_replay = time.monotonic() + 1.0 / self.cfg.replay_rate
            try:
                await self.post(batch)
            except SendError as e:
                self.rec.inc("mogli_agent_send_errors_total", (("reason", e.reason),), 1, time.time())
                if e.reason == "rejected":
                    log.error("collector rejected batch %d for good, removing it: %s", batch.seq, e)
                    self.spool.delete(batch.seq)
                    continue
                delay = jittered(1.0, self.cfg.backoff_max, attempt)
                attempt += 1
                log.warning("sending batch %d failed (%s): %s; retry in %.1f s", batch.seq, e.reason, e, delay)
                await asyncio.sleep(delay)
                continue
            self.spool.delete(batch.seq)
            self.sent += 1
            if attempt:
                log.info("collector reachable again after %d failed attempts", attempt)
            attempt = 0
