"""POST and BODY throughput: usenetfs's NNTP client against a minimal raw-socket client.

Both talk to the same private INN on loopback, with the same articles (yEnc bodies of
716,800-byte payloads), with 1 and 4 connections. The raw client is the ceiling: blocking
sockets, one thread per connection, no parsing beyond finding the terminator.

    python benchmarks/bench_nntp.py [--articles N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import sabctools
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from usenetfs.innserver import InnServer  # noqa: E402
from usenetfs.nntp.client import NNTPClient, PoolOptions  # noqa: E402
from usenetfs.nntp.config import ServerConfig  # noqa: E402

PAYLOAD = 716_800
GROUP = "alt.binaries.test"


def make_articles(count: int) -> list[tuple[str, bytes]]:
    articles = []
    for _ in range(count):
        message_id = f"<{uuid.uuid4().hex}@bench.test>"
        encoded, crc = sabctools.yenc_encode(os.urandom(PAYLOAD))
        body = (b"=ybegin part=1 total=1 line=128 size=%d name=b\r\n=ypart begin=1 end=%d\r\n"
                % (PAYLOAD, PAYLOAD) + encoded + b"\r\n=yend size=%d part=1 pcrc32=%08x\r\n" % (PAYLOAD, crc))
        head = (f"From: a <a@b.test>\r\nNewsgroups: {GROUP}\r\nSubject: x\r\n"
                f"Message-ID: {message_id}\r\n\r\n").encode()
        articles.append((message_id, head + body))
    return articles


# ----------------------------------------------------------------- raw client
class RawConnection:
    def __init__(self, host: str, port: int):
        self.sock = socket.create_connection((host, port))
        # The same socket buffers as usenetfs's client, so the ceiling is not handicapped.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.buf = bytearray(4 << 20)
        self.fill = 0
        self._line()  # greeting

    def _line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n", 0, self.fill)
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[:end + 2]
                self.buf.extend(bytes(end + 2))
                self.fill -= end + 2
                return line
            self.fill += self.sock.recv_into(memoryview(self.buf)[self.fill:])

    def post(self, article: bytes) -> None:
        self.sock.sendall(b"POST\r\n")
        assert self._line().startswith(b"340")
        self.sock.sendall(article + b".\r\n")  # bodies never have leading dots (yEnc escapes them)
        assert self._line().startswith(b"240")

    def body(self, message_id: str) -> bytes:
        self.sock.sendall(f"BODY {message_id}\r\n".encode())
        view = memoryview(self.buf)
        scanned = 0
        while True:
            end = self.buf.find(b"\r\n.\r\n", max(0, scanned - 4), self.fill)
            if end >= 0:
                # Like any client, hand the caller the body (status line and all: the copy
                # is what counts); no un-stuffing, since yEnc bodies need none.
                body = bytes(view[:end + 2])
                self.fill = 0
                return body
            scanned = self.fill
            self.fill += self.sock.recv_into(view[self.fill:])


def raw_run(host: str, port: int, connections: int, work, articles) -> float:
    chunks = [articles[i::connections] for i in range(connections)]
    conns = [RawConnection(host, port) for _ in range(connections)]
    threads = [threading.Thread(target=lambda c=c, part=part: [work(c, a) for a in part])
               for c, part in zip(conns, chunks)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for c in conns:
        c.sock.close()
    return elapsed


def copy_beside_post_and_body(source: Path, directory: Path, host: str, port: int,
                              connections: int, articles: list[tuple[str, bytes]]) -> float:
    """Seconds until both a `cp` of `source` into `directory` and a raw POST + BODY of
    `articles` (make_articles: not yet posted; each read back right after its POST, as
    usenetfs verifies an upload) on `connections` connections are done. With `directory`
    in a FUSE filesystem that does no work, this bounds what any filesystem here can do
    for cp + upload: the copy and the posting share the machine's cores with INN, as a
    filesystem's would."""
    def post_and_read_back(connection: RawConnection, article: tuple[str, bytes]) -> None:
        connection.post(article[1])
        connection.body(article[0])

    os.sync()  # no dirty pages left over from earlier steps for the copy to wait on
    poster = threading.Thread(target=raw_run, args=(host, port, connections, post_and_read_back, articles))
    started = time.perf_counter()
    poster.start()
    try:
        subprocess.run(["cp", "--", str(source), str(directory / source.name)], check=True)
    finally:
        poster.join()
    return time.perf_counter() - started


# --------------------------------------------------------------- our client
async def client_run(host: str, port: int, connections: int, op: str, articles) -> float:
    config = ServerConfig(host, port)
    async with NNTPClient(config, PoolOptions(max_connections=connections)) as client:
        # Open the connections first, as the raw client does, so both time only transfers.
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(client.stat, "<warmup@bench.test>")
        limiter = trio.CapacityLimiter(connections)

        async def one(message_id: str, article: bytes) -> None:
            async with limiter:
                if op == "post":
                    await client.post(article, dot_free=True)  # yEnc: no leading dots
                else:
                    await client.body(message_id)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for message_id, article in articles:
                nursery.start_soon(one, message_id, article)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--articles", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-nntp-") as tmp:
        os.chmod(tmp, 0o755)
        with InnServer(Path(tmp) / "inn") as server:
            host, port = server.host, server.port
            print(f"INN at {server.url}; {args.articles} articles of {PAYLOAD} payload bytes, "
                  f"median of {args.rounds} rounds\n")
            print(f"{'':22}{'raw MB/s':>10}{'usenetfs MB/s':>15}{'ratio':>8}  goal")
            for connections in (1, 4):
                for op, goal in (("post", 0.9), ("body", 0.8)):
                    raw_rates, our_rates = [], []
                    for _ in range(args.rounds):
                        # Fresh ids per round for POST; BODY reads articles posted just before.
                        for who, rates in (("raw", raw_rates), ("ours", our_rates)):
                            articles = make_articles(args.articles)
                            size = sum(len(a) for _, a in articles)
                            if op == "body":
                                raw_run(host, port, 4, lambda c, a: c.post(a[1]), articles)
                            if who == "raw":
                                work = (lambda c, a: c.post(a[1])) if op == "post" else \
                                    (lambda c, a: c.body(a[0]))
                                elapsed = raw_run(host, port, connections, work, articles)
                            else:
                                elapsed = trio.run(client_run, host, port, connections, op, articles)
                            rates.append(size / elapsed / 1e6)
                    raw, ours = statistics.median(raw_rates), statistics.median(our_rates)
                    print(f"{op.upper():5} {connections} connection{'s' if connections > 1 else ' '}"
                          f"{raw:14.1f}{ours:15.1f}{ours / raw:8.2f}  >= {goal}")


if __name__ == "__main__":
    main()
