"""One logical session to one account: a capped, lazily grown pool of NNTP connections.

Rules (docs/nntp.md has the why):
- Never more than `cap` connections open or opening; `cap` starts at `max_connections`
  and only shrinks, when the server says "too many connections" — the pool then keeps
  the number that worked as the learned limit and stops opening new ones for a while.
- Connections open on demand, are reused most-recently-used first, closed after
  `idle_timeout` unused or `max_lifetime` old, and idle ones get a DATE round trip every
  `health_interval` so that connections the server dropped silently are replaced.
- At most `max_handshakes` connections are being set up at once.

Concurrency: everything between awaits is atomic (trio); the pool's state is owned by
whichever task runs, and the maintenance task only touches connections it has taken out
of the idle list.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import AsyncIterator, Awaitable, Callable

import trio

from . import errors as E
from .config import ServerConfig
from .connection import NNTPConnection

log = logging.getLogger(__name__)


@dataclass
class PoolStats:
    created: int = 0  # connections successfully opened
    recycled: int = 0  # closed because they reached max_lifetime
    idle_closed: int = 0  # closed after idle_timeout
    dead_found: int = 0  # idle connections that failed their health check
    broken: int = 0  # dropped after a failure while in use
    connect_failures: int = 0
    too_many: int = 0  # "too many connections" answers seen while connecting
    peak_open: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


Connector = Callable[[ServerConfig], Awaitable[NNTPConnection]]


class ConnectionPool:
    def __init__(
        self,
        config: ServerConfig,
        *,
        max_connections: int = 4,
        idle_timeout: float = 300.0,
        max_lifetime: float = 3600.0,
        health_interval: float = 30.0,
        max_handshakes: int = 2,
        too_many_backoff: float = 30.0,
        connector: Connector = NNTPConnection.open,
    ):
        if max_connections < 1:
            raise ValueError("a pool needs at least one connection")
        self.config = config
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime
        self.health_interval = health_interval
        self.too_many_backoff = too_many_backoff
        self._connector = connector
        self._cap = max_connections
        self.learned_limit: int | None = None
        self._idle: list[NNTPConnection] = []  # most recently used last
        self._open = 0  # open + being opened: what counts against the account
        self._connecting = 0  # of those, being opened (waiting for or in a handshake)
        self._refused = False  # a handshake was refused since the pool last learned its limit
        self._in_use = 0
        self._handshakes = trio.Semaphore(max(1, max_handshakes))
        self._no_new_until = 0.0  # after "too many connections": open nothing before this
        self._changed = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery | None = None
        self._closing = False
        self.stats = PoolStats()

    # --------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> "ConnectionPool":
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        self._nursery.start_soon(self._maintain)
        return self

    async def __aexit__(self, *exc_info) -> bool:
        await self.aclose()
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        # The body's exception is not the maintenance nursery's: handing it in would wrap it
        # in an ExceptionGroup (strict exception groups, trio >= 0.25). Let it pass as is.
        await self._nursery_manager.__aexit__(None, None, None)
        return False

    async def aclose(self) -> None:
        """QUIT every idle connection; connections in use are closed when released."""
        self._closing = True
        self._changed.unpark_all()  # waiters wake up and see the pool is closed
        idle, self._idle = self._idle, []
        with trio.CancelScope(shield=True):
            for conn in idle:
                await self._discard(conn)

    # ------------------------------------------------------------------ usage
    @property
    def cap(self) -> int:
        return self._cap

    @property
    def open_count(self) -> int:
        return self._open

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def in_use(self) -> int:
        return self._in_use

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[NNTPConnection]:
        """Borrow a connection. If the body breaks it (see NNTPConnection.broken), it is
        dropped; otherwise it goes back to the pool, whatever the body raised."""
        conn = await self.acquire()
        try:
            yield conn
        finally:
            await self.release(conn)

    async def acquire(self) -> NNTPConnection:
        while True:
            if self._closing:
                raise E.ConnectionBroken("the connection pool is closed")
            conn = await self._take_idle()
            if conn is not None:
                return conn
            now = trio.current_time()
            if self._open < self._cap and now >= self._no_new_until:
                conn = await self._open_new()
                if conn is not None:
                    return conn
                continue
            # Wait for a release, a discard, or the end of a "too many" pause.
            deadline = self._no_new_until if self._open < self._cap else float("inf")
            with trio.move_on_at(deadline):
                await self._changed.park()

    async def release(self, conn: NNTPConnection) -> None:
        self._in_use -= 1
        too_old = trio.current_time() - conn.created_at >= self.max_lifetime
        if conn.closed or conn.broken or self._closing or too_old:
            if conn.broken:
                self.stats.broken += 1
            elif too_old:
                self.stats.recycled += 1
            await self._discard(conn)
        else:
            self._idle.append(conn)
            self._changed.unpark()

    # --------------------------------------------------------------- internals
    async def _take_idle(self) -> NNTPConnection | None:
        now = trio.current_time()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.created_at >= self.max_lifetime:
                self.stats.recycled += 1
                await self._discard(conn)
                continue
            self._in_use += 1
            return conn
        return None

    async def _open_new(self) -> NNTPConnection | None:
        """Open one connection, or return None after learning a lower limit."""
        self._open += 1
        self._connecting += 1
        self.stats.peak_open = max(self.stats.peak_open, self._open)
        try:
            async with self._handshakes:
                conn = await self._connector(self.config)
        except E.TooManyConnections:
            self._open -= 1
            self.stats.too_many += 1
            self._refused = True
            self._no_new_until = trio.current_time() + self.too_many_backoff
            self._handshake_done()
            self._changed.unpark_all()
            if self._open == 0:
                raise  # not even one: let the retry policy decide how long to wait
            return None
        except BaseException:
            self._open -= 1
            self.stats.connect_failures += 1
            self._handshake_done()
            self._changed.unpark_all()
            raise
        self._handshake_done()
        self.stats.created += 1
        self._in_use += 1
        return conn

    def _handshake_done(self) -> None:
        """Learn from a refusal only once no other handshake is under way: those may still
        be refused too, so what is open while they run is not yet what the account allows
        (counting them made a limit of 2 read as 3 or 4 when one burst of handshakes
        met it)."""
        self._connecting -= 1
        if self._refused and not self._connecting:
            self._refused = False
            self._learn_limit()

    def _learn_limit(self) -> None:
        """The server refused one more and no handshake is under way: what is open now is
        what the account allows."""
        working = max(1, self._open)
        if working < self._cap:
            log.warning("%s: server allows only %d connections; lowering the pool cap from %d",
                        self.config.describe(), working, self._cap)
            self._cap = working
            self.learned_limit = working
        self._no_new_until = trio.current_time() + self.too_many_backoff

    async def _discard(self, conn: NNTPConnection) -> None:
        self._open -= 1
        self._changed.unpark_all()
        await conn.aclose()

    async def _maintain(self) -> None:
        """Close idle and old connections; health-check the ones idle for a while."""
        period = max(0.05, min(self.health_interval, self.idle_timeout, self.max_lifetime) / 4)
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            keep: list[NNTPConnection] = []
            to_check: list[NNTPConnection] = []
            for conn in self._idle:
                if now - conn.created_at >= self.max_lifetime:
                    self.stats.recycled += 1
                    self._nursery.start_soon(self._discard, conn)
                elif now - conn.last_used >= self.idle_timeout:
                    self.stats.idle_closed += 1
                    self._nursery.start_soon(self._discard, conn)
                elif now - conn.last_used >= self.health_interval:
                    to_check.append(conn)
                else:
                    keep.append(conn)
            self._idle = keep
            for conn in to_check:
                self._in_use += 1  # out of the idle list while checked
                self._nursery.start_soon(self._health_check, conn)

    async def _health_check(self, conn: NNTPConnection) -> None:
        try:
            with trio.fail_after(min(10.0, self.config.response_timeout)):
                await conn.date()
        except (E.NNTPError, trio.TooSlowError):
            self.stats.dead_found += 1
            log.info("%s: an idle connection was dead; dropped it", self.config.describe())
            if not conn.broken:
                await conn._abort()  # noqa: SLF001 - closing without QUIT is the point
            conn.broken = False  # don't count it as broken-in-use as well
            self._in_use -= 1
            await self._discard(conn)
            return
        await self.release(conn)
