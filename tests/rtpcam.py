"""A simulated camera for tests: RTP packets on loopback that a live capture on `lo` sees."""

from __future__ import annotations

import socket
import struct
import threading
import time


class RtpCamera:
    """A camera on loopback: RTP/H.264-like packets, 25 frames/s of 4 packets, the last with the marker bit.

    freeze() keeps the packets flowing but no frame completes (an encoder that hangs while the network
    side keeps sending), resume() brings the picture back.
    """

    def __init__(self) -> None:
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.bind(("127.0.0.1", 0))
        self.port = self.sink.getsockname()[1]
        self.frozen = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        seq, ts, n = 1000, 0, 0
        next_t = time.monotonic()
        while not self.stop.is_set():
            for k in range(4):
                marker = 0x80 if (k == 3 and not self.frozen.is_set()) else 0
                hdr = struct.pack("!BBHII", 0x80, marker | 96, seq & 0xFFFF, ts & 0xFFFFFFFF, 0x1234ABCD)
                tx.sendto(hdr + bytes(400), ("127.0.0.1", self.port))
                seq += 1
            if not self.frozen.is_set():
                ts += 3600  # 90 kHz / 25 fps
            n += 1
            next_t += 0.04
            time.sleep(max(0.0, next_t - time.monotonic()))
            while True:  # drain the sink so the socket buffer never fills
                try:
                    self.sink.recv(2048, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
        tx.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sink.close()
