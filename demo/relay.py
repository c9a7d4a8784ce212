"""A node's uplink in the demo: a TCP relay from where the node sees the operations centre to the collector.

In namespace mode the relay listens in the hub namespace and the link faults are nftables rules in the
node's namespace (the relay stays clean). Without root there is one relay per node on its own loopback
address, and the relay itself plays the faulty link. A connection the kernel has accepted cannot be
"lost" any more (a TCP probe only connects), so the relay plays loss by not listening: with ``loss``
percent it closes its port for each half-second slice (a connection attempt then fails, as one whose
SYN got lost would), and 100 cuts the link (port closed, open connections closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket

SLICE = 0.5  # seconds


class Relay:
    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.loss = 0
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._where: tuple[str, int] | None = None
        self._flapper: asyncio.Task[None] | None = None

    async def start(self, host: str = "", port: int = 0, sock: socket.socket | None = None) -> None:
        if sock is not None:
            self._server = await asyncio.start_server(self._handle, sock=sock)
        else:
            self._where = (host, port)
            await self._listen(True)

    async def _listen(self, on: bool) -> None:
        if on and self._server is None and self._where is not None:
            self._server = await asyncio.start_server(self._handle, *self._where)
        elif not on and self._server is not None:
            self._server.close()
            self._server = None

    def set_loss(self, percent: int) -> None:
        """0 clean .. 100 cut; only for a relay started with host and port."""
        self.loss = percent
        if percent >= 100:
            for w in list(self._open):
                w.close()
        if self._flapper is None:
            self._flapper = asyncio.create_task(self._flap())

    async def _flap(self) -> None:
        while True:
            await self._listen(not (self.loss >= 100 or random.random() * 100 < self.loss))
            if self.loss <= 0:
                self._flapper = None
                return
            await asyncio.sleep(SLICE)

    async def close(self) -> None:
        if self._flapper is not None:
            self._flapper.cancel()
        server, self._server, self._where = self._server, None, None
        if server is not None:
            server.close()
        for w in list(self._open):
            w.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self._open.add(w)
        try:
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
