"""`usenetfs server test`: prove an account works end to end, and measure it.

Connects once directly (so a wrong password, a refused connection or an untrusted
certificate fails within seconds with one clear line), reports what the server said,
then posts N encrypted test articles through the pool, reads every one back by BODY,
decodes and compares it, and reports rates and latencies. Success means every article
made the round trip byte for byte.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import trio

from .codec.article import build_article
from .codec.errors import CodecError
from .codec.segment import SegmentCodec, SegmentId
from .errors import UserError
from .keys import VolumeKeys
from .nntp import errors as E
from .nntp.client import NNTPClient, PoolOptions
from .nntp.config import ServerConfig
from .nntp.connection import NNTPConnection
from .nntp.posting import ArticlePoster, VerifyOptions
from .nntp.retry import scaled_policies

PAYLOAD_SIZE = 716_800  # the usual article payload (Nyuu, ngPost)
PROPAGATION_WAIT = 0.5  # seconds between posting and the first BODY


@dataclass
class ServerTestReport:
    server: str
    greeting: str = ""
    capabilities: list[str] = field(default_factory=list)
    tls: str | None = None
    authenticated: bool = False
    articles: int = 0
    round_tripped: int = 0
    failures: list[str] = field(default_factory=list)
    post_seconds: float = 0.0
    fetch_seconds: float = 0.0
    payload_bytes: int = 0
    connections_cap: int = 0
    connections_peak: int = 0
    learned_limit: int | None = None
    latency: dict = field(default_factory=dict)
    retries: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.articles > 0 and self.round_tripped == self.articles and not self.failures

    def lines(self) -> list[str]:
        mb = self.payload_bytes / 1e6
        post_rate = mb / self.post_seconds if self.post_seconds else 0.0
        fetch_rate = mb / self.fetch_seconds if self.fetch_seconds else 0.0
        limit = (f"learned limit {self.learned_limit}" if self.learned_limit
                 else "no limit hit")
        out = [
            f"server:        {self.server}",
            f"greeting:      {self.greeting}",
            f"capabilities:  {' '.join(self.capabilities) or '(none advertised)'}",
            f"TLS:           {self.tls or 'off'}",
            f"login:         {'ok' if self.authenticated else 'not used'}",
            f"connections:   cap {self.connections_cap}, peak {self.connections_peak}, {limit}",
            f"articles:      {self.round_tripped}/{self.articles} round-tripped "
            f"({self.payload_bytes / 1e6:.1f} MB of payload)",
            f"post:          {post_rate:.1f} MB/s",
            f"fetch:         {fetch_rate:.1f} MB/s (BODY, decrypt, compare)",
        ]
        for kind, summary in sorted(self.latency.items()):
            out.append(f"latency {kind + ':':6} p50 {summary['p50_ms']:.1f} ms, "
                       f"p95 {summary['p95_ms']:.1f} ms ({summary['count']} requests)")
        if self.retries:
            out.append("retries:       " + ", ".join(f"{k}: {v}" for k, v in sorted(self.retries.items())))
        out += [f"FAILED:        {failure}" for failure in self.failures]
        return out


async def probe(config: ServerConfig, report: ServerTestReport) -> None:
    """One direct connection, no retries: fail fast on configuration problems."""
    try:
        conn = await NNTPConnection.open(config)
    except E.NNTPError as error:
        raise UserError(str(error)) from None
    async with conn:
        report.greeting = conn.greeting
        report.capabilities = conn.capabilities
        report.tls = conn.tls_version
        report.authenticated = conn.authenticated


async def run_server_test(config: ServerConfig, *, group: str, articles: int = 10,
                          connections: int = 4, payload_size: int = PAYLOAD_SIZE,
                          delay_scale: float = 0.1) -> ServerTestReport:
    report = ServerTestReport(server=config.describe(), articles=articles)
    await probe(config, report)

    keys = VolumeKeys(os.urandom(32))  # throw-away: test articles must not be linkable
    codec = SegmentCodec(keys.data_key)
    scope = os.urandom(16)
    payloads = [os.urandom(payload_size) for _ in range(articles)]
    report.payload_bytes = payload_size * articles
    ids = [SegmentId(scope, 0, number) for number in range(articles)]
    bodies = await trio.to_thread.run_sync(
        lambda: [codec.encode(ident, payload).body for ident, payload in zip(ids, payloads)])

    def make(number: int, generation: int) -> tuple[str, bytes]:
        message_id = keys.message_id(ids[number], generation)
        return message_id, build_article(message_id, group, bodies[number])

    options = PoolOptions(max_connections=connections, too_many_backoff=5.0)
    async with NNTPClient(config, options, policies=scaled_policies(delay_scale)) as client:
        # The propagation wait happens once, outside the timed fetch phase.
        poster = ArticlePoster(client, VerifyOptions(delay=0.0, tries=5, interval=0.5))
        posted: dict[int, str] = {}

        async def post_one(number: int) -> None:
            message_id, article = make(number, 0)
            try:
                await poster.post(message_id, article, dot_free=True)  # built by codec.article
                posted[number] = message_id
            except E.NNTPError as error:
                report.failures.append(f"article {number}: {error}")

        async def fetch_one(number: int) -> None:
            message_id = posted[number]
            try:
                body = await poster.fetch_when_ready(message_id, stuffed=True)  # yEnc un-stuffs
                if body is None:
                    report.failures.append(f"article {number}: {message_id} not found by BODY")
                    return
                data = await trio.to_thread.run_sync(codec.decode, ids[number], body)
            except (E.NNTPError, CodecError) as error:
                report.failures.append(f"article {number}: {error}")
                return
            if data == payloads[number]:
                report.round_tripped += 1
            else:
                report.failures.append(f"article {number}: came back different")

        started = time.perf_counter()
        await _run_limited(post_one, range(articles), connections)
        report.post_seconds = time.perf_counter() - started
        await trio.sleep(PROPAGATION_WAIT)
        started = time.perf_counter()
        await _run_limited(fetch_one, sorted(posted), connections)
        report.fetch_seconds = time.perf_counter() - started

        stats = client.stats()
        report.connections_cap = client.pool.cap
        report.connections_peak = stats["connections"]["peak_open"]
        report.learned_limit = client.pool.learned_limit
        report.latency = stats["latency"]
        report.retries = stats["retries"]
    return report


async def _run_limited(fn, items, limit: int) -> None:
    limiter = trio.CapacityLimiter(limit)

    async def one(item):
        async with limiter:
            await fn(item)

    async with trio.open_nursery() as nursery:
        for item in items:
            nursery.start_soon(one, item)
