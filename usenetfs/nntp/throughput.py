"""Transfer rates over a short moving window, from the NNTP client's byte counters.

The retrier already counts every byte sent and received (`RetryStats.bytes_sent`,
`bytes_received`). `Throughput.run` samples those counters once a second and keeps the
last `window` seconds of samples; a rate is the change since the oldest sample divided
by the time since it. Nothing is added to the request path, and the answer is right
whatever the sizes of the requests (one 700 KiB POST or many small commands).
"""

from __future__ import annotations

import collections

import trio

from .retry import RetryStats


class Throughput:
    def __init__(self, stats: RetryStats, *, window: float = 10.0, interval: float = 1.0) -> None:
        self.stats = stats
        self.window = window
        self.interval = interval
        self._samples: collections.deque[tuple[float, int, int]] = collections.deque()

    def sample(self) -> None:
        now = trio.current_time()
        self._samples.append((now, self.stats.bytes_sent, self.stats.bytes_received))
        while len(self._samples) > 1 and self._samples[0][0] < now - self.window:
            self._samples.popleft()

    async def run(self) -> None:
        while True:
            self.sample()
            await trio.sleep(self.interval)

    def rates(self) -> dict:
        """Bytes per second up and down over the last `window` seconds (0 before the
        first full interval), and the totals since the client started."""
        now = trio.current_time()
        sent, received = self.stats.bytes_sent, self.stats.bytes_received
        up = down = 0.0
        span = 0.0
        if self._samples:
            then, sent_then, received_then = self._samples[0]
            span = now - then
            if span > 0:
                up, down = (sent - sent_then) / span, (received - received_then) / span
        return {"upload_bytes_per_second": up, "download_bytes_per_second": down,
                "window_seconds": min(span, self.window), "bytes_sent": sent, "bytes_received": received}


__all__ = ["Throughput"]
