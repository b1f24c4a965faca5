"""`NNTPClient`: the pool and the retry manager behind one small API.

This is what the rest of usenetfs talks to: post an article, fetch a body, check an
id, read the statistics. Every call is retried by policy on pooled connections.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ServerConfig
from .connection import NNTPConnection
from .pool import ConnectionPool
from .retry import Policy, Retrier


@dataclass(frozen=True)
class PoolOptions:
    max_connections: int = 4
    idle_timeout: float = 300.0
    max_lifetime: float = 3600.0
    health_interval: float = 30.0
    max_handshakes: int = 2
    too_many_backoff: float = 30.0


class NNTPClient:
    def __init__(
        self,
        config: ServerConfig,
        pool_options: PoolOptions = PoolOptions(),
        *,
        policies: dict[object, Policy] | None = None,
        bytes_per_second: float | None = None,
        articles_per_second: float | None = None,
    ):
        self.config = config
        self.pool = ConnectionPool(config, **pool_options.__dict__)
        self.retrier = Retrier(self.pool, policies=policies, bytes_per_second=bytes_per_second,
                               articles_per_second=articles_per_second)

    async def __aenter__(self) -> "NNTPClient":
        await self.pool.__aenter__()
        return self

    async def __aexit__(self, *exc_info):
        return await self.pool.__aexit__(*exc_info)

    async def post(self, article: bytes, *, dot_free: bool = False) -> str | None:
        """POST with retries; the Message-ID the server named, if any."""
        return await self.retrier.run(lambda conn: conn.post(article, dot_free=dot_free), what="POST",
                                      kind="post", nbytes=len(article), counts_as_article=True)

    async def body(self, message_id: str, *, stuffed: bool = False, then=None):
        """BODY with retries (`stuffed`, `then`: see NNTPConnection.body)."""
        return await self.retrier.run(lambda conn: conn.body(message_id, stuffed=stuffed, then=then),
                                      what=f"BODY {message_id}", kind="body")

    async def stat(self, message_id: str) -> bool:
        return await self.retrier.run(lambda conn: conn.stat(message_id),
                                      what=f"STAT {message_id}", kind="stat")

    async def run(self, op, *, what: str, kind: str = "op", nbytes: int = 0,
                  counts_as_article: bool = False):
        """Any operation `op(conn: NNTPConnection)`, retried like the others."""
        return await self.retrier.run(op, what=what, kind=kind, nbytes=nbytes,
                                      counts_as_article=counts_as_article)

    def stats(self) -> dict:
        pool = self.pool
        retry = self.retrier.stats
        return {
            "connections": {
                "open": pool.open_count,
                "idle": pool.idle_count,
                "in_use": pool.in_use,
                "cap": pool.cap,
                "learned_limit": pool.learned_limit,
                **pool.stats.as_dict(),
            },
            "attempts": retry.attempts,
            "retries": dict(retry.retries_by_code),
            "failures": dict(retry.failures),
            "bytes_sent": retry.bytes_sent,
            "bytes_received": retry.bytes_received,
            "latency": retry.latency_summary(),
        }


__all__ = ["NNTPClient", "NNTPConnection", "PoolOptions", "ServerConfig"]
