"""BODY latency by article size, one connection: usenetfs's client against a raw socket.

Small articles are what packed small files, index backups and shares are made of. INN's
nnrpd writes a response's status line and body separately without TCP_NODELAY, so a
client that delays its ACKs waits 40 ms per response under ~64 KB (see
usenetfs/nntp/connection.py `_ack_now`). The raw client ACKs at once too, so it is the
ceiling, not a straw man.

    python benchmarks/bench_latency.py [--requests N]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_nntp import GROUP, RawConnection  # noqa: E402
from usenetfs.innserver import InnServer  # noqa: E402
from usenetfs.nntp.client import NNTPClient, PoolOptions  # noqa: E402
from usenetfs.nntp.config import ServerConfig  # noqa: E402

SIZES = (2_000, 20_000, 60_000, 200_000, 700_000)


class _QuickAckSocket:
    """The raw client's socket, ACKing every receive at once (as usenetfs's does)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def recv_into(self, view) -> int:
        n = self._sock.recv_into(view)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return n

    def __getattr__(self, name):
        return getattr(self._sock, name)


class QuickAckConnection(RawConnection):
    def __init__(self, host: str, port: int):
        super().__init__(host, port)
        self.sock = _QuickAckSocket(self.sock)


def article(message_id: str, size: int) -> bytes:
    head = f"From: a <a@b.test>\r\nNewsgroups: {GROUP}\r\nSubject: x\r\nMessage-ID: {message_id}\r\n\r\n"
    return head.encode() + (b"x" * 126 + b"\r\n") * (size // 128)


async def ours(host: str, port: int, ids: list[str]) -> list[float]:
    async with NNTPClient(ServerConfig(host, port), PoolOptions(max_connections=1)) as client:
        times = []
        for message_id in ids:
            started = time.perf_counter()
            await client.body(message_id)
            times.append(time.perf_counter() - started)
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    os.chmod(tmp, 0o755)
    with InnServer(tmp / "inn") as server:
        raw = QuickAckConnection(server.host, server.port)
        print(f"{'article bytes':>14}{'usenetfs p50 ms':>17}{'raw p50 ms':>12}{'ratio':>8}")
        for size in SIZES:
            ids = [f"<lat-{size}-{i}-{os.getpid()}@bench.test>" for i in range(args.requests)]
            for message_id in ids:
                raw.post(article(message_id, size))
            raw_times = []
            for message_id in ids:
                started = time.perf_counter()
                raw.body(message_id)
                raw_times.append(time.perf_counter() - started)
            our_times = trio.run(ours, server.host, server.port, ids)
            a, b = statistics.median(our_times) * 1e3, statistics.median(raw_times) * 1e3
            print(f"{size:>14,}{a:>17.2f}{b:>12.2f}{b / a:>8.2f}", flush=True)
        raw.sock.close()


if __name__ == "__main__":
    main()
