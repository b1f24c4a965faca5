"""Retrying NNTP operations: per-answer policies, jittered backoff, rate limits, statistics.

`Retrier.run(op)` borrows a pool connection for each attempt and calls `op(conn)`.
What happens on failure depends on the answer: a policy per response code (502, 441,
500, 503, 400) or for network failures says how long to wait and how often to try;
permanent errors (bad credentials, posting not allowed, untrusted certificate) are raised
at once, so a wrong password never becomes a retry storm. Answers that are results rather
than failures (430 not found, 441 duplicate) are raised to the caller untouched.
"""

from __future__ import annotations

import collections
import logging
import random
import statistics
from dataclasses import dataclass, field
from typing import Awaitable, Callable, TypeVar

import trio

from . import errors as E
from .connection import NNTPConnection
from .pool import ConnectionPool

log = logging.getLogger(__name__)
T = TypeVar("T")

NETWORK = "network"  # policy key for lost connections, timeouts and refused connects


@dataclass(frozen=True)
class Policy:
    delay: float  # base delay in seconds; attempt n waits up to delay * 2**(n-1)
    tries: int  # attempts in all, the first included
    max_delay: float = 300.0


DEFAULT_POLICIES: dict[object, Policy] = {
    502: Policy(30.0, 10),
    441: Policy(5.0, 3),
    500: Policy(10.0, 5),
    503: Policy(10.0, 5),
    400: Policy(5.0, 8),
    482: Policy(30.0, 10),
    NETWORK: Policy(1.0, 8, max_delay=60.0),
}


def scaled_policies(factor: float, base: dict | None = None) -> dict[object, Policy]:
    """The same policies with every delay multiplied by `factor` (tests, `server test`)."""
    base = base or DEFAULT_POLICIES
    return {key: Policy(p.delay * factor, p.tries, p.max_delay * factor) for key, p in base.items()}


class TokenBucket:
    """Limits a rate (units per second) with a burst of one second's worth. Off if rate is None."""

    def __init__(self, rate: float | None):
        self.rate = rate
        self._tokens = rate or 0.0
        self._stamp: float | None = None

    async def take(self, amount: float) -> None:
        if not self.rate:
            return
        now = trio.current_time()
        if self._stamp is not None:
            self._tokens = min(self.rate, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= amount  # may go negative: a large article waits for its debt
        if self._tokens < 0:
            await trio.sleep(-self._tokens / self.rate)


@dataclass
class RetryStats:
    attempts: int = 0
    retries_by_code: collections.Counter = field(default_factory=collections.Counter)
    failures: collections.Counter = field(default_factory=collections.Counter)
    bytes_sent: int = 0
    bytes_received: int = 0
    latencies: dict[str, collections.deque] = field(default_factory=dict)

    def record_latency(self, kind: str, seconds: float) -> None:
        self.latencies.setdefault(kind, collections.deque(maxlen=1000)).append(seconds)

    def latency_summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for kind, values in self.latencies.items():
            ordered = sorted(values)
            out[kind] = {
                "count": len(ordered),
                "p50_ms": 1000 * statistics.median(ordered),
                "p95_ms": 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            }
        return out


class Retrier:
    def __init__(
        self,
        pool: ConnectionPool,
        *,
        policies: dict[object, Policy] | None = None,
        bytes_per_second: float | None = None,
        articles_per_second: float | None = None,
        rng: random.Random | None = None,
    ):
        self.pool = pool
        self.policies = dict(DEFAULT_POLICIES)
        self.policies.update(policies or {})
        self.byte_bucket = TokenBucket(bytes_per_second)
        self.article_bucket = TokenBucket(articles_per_second)
        self.stats = RetryStats()
        self._rng = rng or random.Random()

    def policy_for(self, error: E.NNTPError) -> tuple[object, Policy] | None:
        """The policy that applies to `error`, or None if it must not be retried."""
        if isinstance(error, (E.PermanentError, E.ArticleNotFound, E.DuplicateArticle)):
            return None
        if isinstance(error, (E.ConnectionBroken, E.ConnectFailed, E.ProtocolError)):
            return NETWORK, self.policies[NETWORK]
        code = error.code
        if code in self.policies:
            return code, self.policies[code]
        if isinstance(error, E.TemporaryError):
            key = 500 if code is None or code >= 500 else 400
            return key, self.policies[key]
        return None

    def backoff(self, policy: Policy, retry_number: int) -> float:
        """Full jitter: uniform in [0, min(max_delay, delay * 2**(n-1))]."""
        ceiling = min(policy.max_delay, policy.delay * (2 ** (retry_number - 1)))
        return self._rng.uniform(0, ceiling)

    async def run(self, op: Callable[[NNTPConnection], Awaitable[T]], *, what: str,
                  kind: str = "op", nbytes: int = 0, counts_as_article: bool = False) -> T:
        """Run `op` on a pooled connection until it succeeds or its policy gives up."""
        retry = 0
        while True:
            await self.byte_bucket.take(nbytes)
            if counts_as_article:
                await self.article_bucket.take(1)
            self.stats.attempts += 1
            started = trio.current_time()
            try:
                async with self.pool.connection() as conn:
                    sent, received = conn.bytes_sent, conn.bytes_received
                    try:
                        result = await op(conn)
                    finally:
                        self.stats.bytes_sent += conn.bytes_sent - sent
                        self.stats.bytes_received += conn.bytes_received - received
            except E.NNTPError as error:
                decision = self.policy_for(error)
                key = decision[0] if decision else type(error).__name__
                if decision is None or retry + 1 >= decision[1].tries:
                    self.stats.failures[str(key)] += 1
                    raise
                retry += 1
                self.stats.retries_by_code[str(key)] += 1
                delay = self.backoff(decision[1], retry)
                level = logging.INFO if retry < 3 else logging.WARNING
                log.log(level, "%s: %s; retry %d of %d in %.1f s", what, error, retry,
                        decision[1].tries - 1, delay)
                await trio.sleep(delay)
                continue
            self.stats.record_latency(kind, trio.current_time() - started)
            return result
