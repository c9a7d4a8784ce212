"""A node's uplink in the demo: a TCP relay from where the node sees the operations centre to the collector.

In namespace mode the relay listens in the hub namespace and the link faults are nftables rules in the
node's namespace (the relay stays clean). Without root there is one relay per node on its own loopback
address, and the relay itself plays the faulty link: ``loss`` percent of new connections are swallowed
(accepted, never answered: a probe times out), 100 cuts the link (open connections are closed, new ones
swallowed).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket


class Relay:
    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.loss = 0
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "", port: int = 0, sock: socket.socket | None = None) -> None:
        if sock is not None:
            self._server = await asyncio.start_server(self._handle, sock=sock)
        else:
            self._server = await asyncio.start_server(self._handle, host, port)

    def set_loss(self, percent: int) -> None:
        self.loss = percent
        if percent >= 100:
            for w in list(self._open):
                w.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._open):
            w.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self._open.add(w)
        try:
            if self.loss >= 100 or random.random() * 100 < self.loss:
                with contextlib.suppress(OSError, asyncio.TimeoutError):
                    await asyncio.wait_for(r.read(), 30)  # swallow: read, never answer
                return
            try:
                ur, uw = await asyncio.open_connection(*self.upstream)
            except OSError:
                return
            self._open.add(uw)
            try:
                await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))
            finally:
                self._open.discard(uw)
                uw.close()
        finally:
            self._open.discard(w)
            w.close()

    @staticmethod
    async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(OSError):
                w.write_eof()
