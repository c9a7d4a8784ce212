"""The collector's HTTP side (aiohttp): ingest, /metrics, health.

Every client error is a 4xx with a JSON body naming the field; nothing a client
sends produces a 5xx or a partial apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from agent import __version__, wire
from agent.wire import Sample
from collector import remote_write
from collector.config import CollectorConfig
from collector.exposition import registry_for
from collector.inventory import Inventory
from collector.render import FAST, Renderer
from collector.state import State
from collector.status import StatusTracker, render_html
from collector.status import status as status_of
from collector.store import Store

log = logging.getLogger("mogli.collector")

STATE_KEY = web.AppKey("state", State)


@dataclass
class Extras:
    writer: remote_write.Writer | None
    inventory: Inventory | None
    limiter: RateLimiter
    tracker: StatusTracker = field(default_factory=StatusTracker)
    renderer: Renderer = field(default_factory=Renderer)
    # rendered /metrics: (state version, content type, second) -> body
    cache: dict[tuple[int, str, int], bytes] = field(default_factory=dict)


EXTRAS_KEY = web.AppKey("extras", Extras)
CONFIG_KEY = web.AppKey("config", CollectorConfig)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _error(status: int, message: str, path: str = "") -> web.Response:
    body: dict[str, Any] = {"error": message}
    if path:
        body["path"] = path
    return web.json_response(body, status=status)


class Auth:
    """Bearer tokens, stored only as sha256, each bound to one node."""

    def __init__(self, cfg: CollectorConfig):
        self.required = cfg.require_token
        self.by_hash = {a.token_sha256: node for node, a in cfg.agents.items()}

    def node_for(self, header: str) -> str | None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = token_hash(token.strip())
        found = None
        for h, node in self.by_hash.items():  # constant time per entry; no early exit on match
            if hmac.compare_digest(h, digest):
                found = node
        return found


AUTH_KEY = web.AppKey("auth", Auth)


class RateLimiter:
    """A token bucket per key (the node a token is bound to, else the client address)."""

    def __init__(self, per_second: float, burst: int):
        self.rate = per_second
        self.burst = float(burst)
        self.buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str, now: float) -> bool:
        tokens, last = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self.buckets[key] = (tokens, now)
            return False
        self.buckets[key] = (tokens - 1.0, now)
        if len(self.buckets) > 100_000:  # strangers cycling addresses cannot grow this forever
            self.buckets.clear()
        return True


async def ingest(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    cfg = request.app[CONFIG_KEY]
    auth = request.app[AUTH_KEY]
    bound: str | None = None
    if auth.required:
        bound = auth.node_for(request.headers.get("Authorization", ""))
        if bound is None:
            state.count("unauthorized")
            return _error(401, "missing or unknown bearer token")
    if not request.app[EXTRAS_KEY].limiter.allow(bound or request.remote or "?", time.monotonic()):
        state.count("throttled")
        return _error(429, "too many reports; slow down")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        state.count("too_large")
        return _error(413, f"body larger than {cfg.max_body_bytes} bytes")
    try:
        body = wire.decompress(raw, request.headers.get("Content-Encoding", ""), cfg.max_body_bytes)
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise wire.WireError("", f"body is not JSON: {e}") from None
        report = wire.parse(obj)
    except wire.WireError as e:
        state.count("too_large" if e.status == 413 else "bad_request")
        return _error(e.status, e.message, e.path)
    except RecursionError:
        state.count("bad_request")
        return _error(400, "body nested too deeply")
    if bound is not None and bound != report.node:
        state.count("forbidden")
        return _error(403, f"this token belongs to another node, not {report.node!r}", "node")
    now = time.time()
    sent_at = _header_float(request, wire.SENT_AT_HEADER, 0, 4_102_444_800)
    rtt = _header_float(request, wire.LAST_RTT_HEADER, 0, 600)
    oldest = _header_float(request, wire.SPOOL_OLDEST_HEADER, 1, 2**53)
    result = state.apply(report, now, sent_at, rtt, int(oldest) if oldest is not None else None)
    writer = request.app[EXTRAS_KEY].writer
    if result == "applied" and writer is not None:
        writer.wakeup.set()
    state.count(result)
    return web.json_response({"node": report.node, "stream": report.stream, "seq": report.seq, "result": result})


def _header_float(request: web.Request, name: str, lo: float, hi: float) -> float | None:
    """A numeric header, or None when absent or not a sane number (it only feeds an estimate)."""
    raw = request.headers.get(name)
    if raw is None:
        return None
    try:
        v = float(raw)
    except ValueError:
        return None
    return v if lo <= v <= hi else None


async def metrics(request: web.Request) -> web.Response:
    """Render from a snapshot (collector/render.py); reuse the bytes while nothing changed (same second)."""
    state = request.app[STATE_KEY]
    extras = request.app[EXTRAS_KEY]
    now = time.time()
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    key = (state.version, content_type, int(now))
    data = extras.cache.get(key)
    if data is None:
        snap = state.snapshot(now)
        pending = state.store.backfill_pending()[1] if extras.writer is not None else 0
        if content_type in FAST:
            data = await extras.renderer.render_async(snap, extras.inventory, extras.writer, pending,
                                                      FAST[content_type])
        else:  # another escaping or version asked for: prometheus-client's own encoders, off the loop
            registry = registry_for(lambda _now: snap, extras.inventory, extras.writer, pending)
            data = await asyncio.get_running_loop().run_in_executor(None, encoder, registry)
        extras.cache.clear()
        extras.cache[key] = data
    resp = web.Response(body=data)
    resp.headers["Content-Type"] = content_type
    return resp


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


def _status(request: web.Request) -> dict[str, Any]:
    state = request.app[STATE_KEY]
    extras = request.app[EXTRAS_KEY]
    return status_of(state.snapshot(time.time()), extras.inventory, extras.tracker)


async def api_status(request: web.Request) -> web.Response:
    return web.json_response(_status(request))


async def index(request: web.Request) -> web.Response:
    lang = "en" if request.query.get("lang") == "en" else "de"
    return web.Response(text=render_html(_status(request), lang), content_type="text/html")


@web.middleware
async def errors_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        resp: web.StreamResponse = await handler(request)
        return resp
    except web.HTTPRequestEntityTooLarge as e:
        return _error(413, e.text or "request too large")
    except web.HTTPException as e:
        if e.status >= 400:
            return _error(e.status, e.reason)
        raise


def make_app(cfg: CollectorConfig, store: Store | None = None, inv: Inventory | None = None) -> web.Application:
    # client_max_size bounds the compressed body; decompress() bounds the inflated one
    app = web.Application(
        client_max_size=cfg.max_body_bytes,
        middlewares=[errors_as_json],
        handler_args={"auto_decompress": False},  # we inflate ourselves, with a size bound
    )
    store = store or Store(cfg.state_path)
    rw = cfg.remote_write
    backfill = None
    writer = None
    if rw.url:
        instance = rw.instance or f"{cfg.listen.host}:{cfg.listen.port}"

        def backfill(node: str, site: str, samples: list[Sample]) -> list[tuple[int, bytes]]:
            extra = (("instance", instance), ("job", rw.job), ("node", node), ("site", site))
            bodies = remote_write.build_bodies(samples, extra, rw.max_samples_per_request)
            per = -(-len(samples) // max(1, len(bodies)))
            return [(per, b) for b in bodies]

        writer = remote_write.Writer(rw.url, rw.timeout, store)
    app[STATE_KEY] = State(store, cfg.stale_after, cfg.max_clock_offset, rw.late_after, backfill)
    app[EXTRAS_KEY] = Extras(writer, inv, RateLimiter(cfg.rate_limit.per_second, cfg.rate_limit.burst))
    app[CONFIG_KEY] = cfg
    app[AUTH_KEY] = Auth(cfg)
    app.router.add_post("/api/v1/reports", ingest)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/", index)
    app.router.add_get("/api/v1/status", api_status)

    async def background(app: web.Application) -> Any:
        tasks = []
        if writer is not None:
            tasks.append(asyncio.create_task(writer.run()))
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        app[STATE_KEY].store.close()

    app.cleanup_ctx.append(background)
    return app
