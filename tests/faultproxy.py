"""A fault-injecting, NNTP-aware TCP proxy for tests.

Owns: `FaultProxy` (listens on 127.0.0.1, opens one upstream connection per client and
relays NNTP transparently), `Rule` (which command to break, how and how often) and
`ProxyStats` (what the proxy saw and did). It exists to produce the faults a real INN
on loopback won't: refused greetings, a POST that fails after the article was sent, a
connection that dies before the 240 although the article landed, a body cut mid-way,
a slow or silent server, silent idle disconnects. Plain TCP only, no TLS.

    async with FaultProxy.start(upstream_host, upstream_port) as proxy:
        proxy.add_rule(Rule(command="POST", action="reply", reply="502 Too many connections", times=2))
        ...  # the client connects to 127.0.0.1:proxy.port
        proxy.stats.faults

Commands are handled one at a time (read one, relay exactly one response, read the
next), which keeps pipelined commands correct because NNTP answers them in order.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

log = logging.getLogger(__name__)

CRLF = b"\r\n"
TERMINATOR = b"\r\n.\r\n"
CHUNK = 64 * 1024
MAX_LINE = 64 * 1024
# Status codes followed by a dot-terminated block (RFC 3977; 211 only for LISTGROUP).
MULTILINE = frozenset(b"100 101 215 220 221 222 224 225 230 231".split())
# "Send the article" codes, after which the client sends a dot-terminated block.
SEND_ARTICLE = (b"340", b"335")

ACTIONS = frozenset(
    {"reply", "reject_after_body", "drop_before_response", "cut_response", "delay", "stall", "close"}
)
CONNECT_ACTIONS = frozenset({"reply", "stall", "close", "delay"})

Sink = Callable[[bytes], Awaitable[None]]


@dataclass
class Rule:
    """One fault. `command` is a verb ("POST", "BODY", ...; any case), "*" for any
    command, or "CONNECT" for the connection/greeting. Fires on matches after the first
    `after` ones, at most `times` times (None: always). `matched`/`fired` count across
    connections. Rules are tried in the order added and the first that fires wins, so
    later rules never see that command (and don't count it as a match).

    For POST, delay/cut_response/drop_before_response act on the FINAL response (the
    240/441 after the article); the 340 and the article pass through untouched."""

    command: str
    action: str
    reply: str | None = None  # reply / reject_after_body: the line to send (no CRLF)
    times: int | None = None
    after: int = 0
    close_after: bool = False  # reply: close the client connection after the reply
    cut_bytes: int = 0  # cut_response: bytes of the final response to let through
    seconds: float = 0.0  # delay: how long to hold the final response (or greeting)
    matched: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        self.command = self.command.upper()
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}")
        if self.command == "CONNECT" and self.action not in CONNECT_ACTIONS:
            raise ValueError(f"CONNECT supports only {sorted(CONNECT_ACTIONS)}")
        if self.action == "reject_after_body" and self.command != "POST":
            raise ValueError("reject_after_body is for POST only")
        if self.action == "reject_after_body" and self.reply is None:
            self.reply = "441 Posting failed"
        if self.action == "reply" and not self.reply:
            raise ValueError("action 'reply' needs reply=")

    def matches(self, verb: str) -> bool:
        # "*" means any command, not the connection itself.
        return self.command == verb or (self.command == "*" and verb != "CONNECT")


@dataclass
class ProxyStats:
    connections: int = 0  # client connections accepted
    upstream_connections: int = 0  # upstream connections opened (CONNECT faults open none)
    active: int = 0  # client connections open right now
    peak_active: int = 0
    commands: Counter[str] = field(default_factory=Counter)  # by verb, faulted ones included
    faults: int = 0  # rules fired, CONNECT ones included
    faults_by_action: Counter[str] = field(default_factory=Counter)
    idle_closes: int = 0  # connections closed by close_idle_after


class _Eof(Exception):
    """A peer closed or reset its side."""


class _Hangup(Exception):
    """The proxy decided to close this client connection (a fault, or idleness)."""


_DISCONNECTS = (_Eof, trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class _Reader:
    """Buffered reads from a trio stream: lines, and dot-terminated blocks relayed in chunks."""

    def __init__(self, stream: trio.abc.ReceiveStream):
        self.stream = stream
        self.buf = bytearray()

    async def fill(self) -> None:
        try:
            data = await self.stream.receive_some(CHUNK)
        except trio.BrokenResourceError as exc:
            raise _Eof("connection reset") from exc
        if not data:
            raise _Eof("connection closed")
        self.buf += data

    async def line(self) -> bytes:
        start = 0
        while (end := self.buf.find(b"\n", start)) < 0:
            if len(self.buf) > MAX_LINE:
                raise _Eof("line too long")
            start = len(self.buf)
            await self.fill()
        line = bytes(self.buf[: end + 1])
        del self.buf[: end + 1]
        return line

    async def relay_block(self, send: Sink) -> None:
        """Pass a dot-terminated block to `send`, terminator included, chunk by chunk.

        The block follows a line that ended in CRLF, so the search starts with a CRLF
        tail: that makes an empty block (".\r\n" straight away) match too. Afterwards
        the last 4 bytes are kept to catch a terminator split across chunks."""
        tail = CRLF
        while True:
            if not self.buf:
                await self.fill()
            hay = tail + self.buf
            found = hay.find(TERMINATOR)
            if found >= 0:
                end = found + len(TERMINATOR) - len(tail)
                chunk = bytes(self.buf[:end])
                del self.buf[:end]
                await send(chunk)
                return
            chunk = bytes(self.buf)
            self.buf.clear()
            tail = hay[-(len(TERMINATOR) - 1) :]
            await send(chunk)

    async def drain(self) -> None:
        """Read and discard until the peer goes away (stalls keep the connection open)."""
        try:
            while True:
                self.buf.clear()
                await self.fill()
        except _Eof:
            pass


async def _discard(data: bytes) -> None:
    pass


def _budget(stream: trio.abc.SendStream, limit: int) -> Sink:
    """A sink that lets `limit` bytes through to `stream`, then hangs up."""
    remaining = limit

    async def send(data: bytes) -> None:
        nonlocal remaining
        part = data[: max(remaining, 0)]
        if part:
            await stream.send_all(part)
        remaining -= len(data)
        if remaining <= 0:
            raise _Hangup(f"response cut after {limit} bytes")

    return send


def _line(text: str) -> bytes:
    return text.encode("utf-8") + CRLF


class FaultProxy:
    """Use `FaultProxy.start(host, port)`; rules can be added or cleared at any time."""

    def __init__(self, upstream_host: str, upstream_port: int, *, close_idle_after: float | None = None):
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.close_idle_after = close_idle_after  # read on every wait, so it may be changed live
        self.host = "127.0.0.1"
        self.port = 0
        self.rules: list[Rule] = []
        self.stats = ProxyStats()

    @classmethod
    @asynccontextmanager
    async def start(
        cls, upstream_host: str, upstream_port: int, *, close_idle_after: float | None = None
    ) -> AsyncIterator[FaultProxy]:
        proxy = cls(upstream_host, upstream_port, close_idle_after=close_idle_after)
        async with trio.open_nursery() as nursery:
            # nursery.start() takes no keyword arguments, hence the partial.
            serve = functools.partial(trio.serve_tcp, proxy._handle, 0, host=proxy.host)
            listeners = await nursery.start(serve)
            proxy.port = listeners[0].socket.getsockname()[1]
            try:
                yield proxy
            finally:
                # Tears down the listener and every open pair.
                nursery.cancel_scope.cancel()

    def add_rule(self, rule: Rule) -> Rule:
        self.rules.append(rule)
        return rule

    def clear_rules(self) -> None:
        self.rules.clear()

    def _fire(self, verb: str) -> Rule | None:
        """The first rule that fires for `verb`, with its counters updated; rules in order."""
        for rule in self.rules:
            if not rule.matches(verb):
                continue
            rule.matched += 1
            if rule.matched <= rule.after or (rule.times is not None and rule.fired >= rule.times):
                continue
            rule.fired += 1
            self.stats.faults += 1
            self.stats.faults_by_action[rule.action] += 1
            log.debug("fault %s on %s", rule.action, verb)
            return rule
        return None

    async def _handle(self, client: trio.SocketStream) -> None:
        stats = self.stats
        stats.connections += 1
        stats.active += 1
        stats.peak_active = max(stats.peak_active, stats.active)
        pair = _Pair(self, client)
        try:
            await pair.run()
        except _Hangup as exc:
            log.debug("proxy closed the client: %s", exc)
        except _DISCONNECTS as exc:
            # A peer went away: close this pair, never the test.
            log.info("connection pair closed: %r", exc)
        finally:
            stats.active -= 1
            await pair.aclose()


class _Pair:
    """One client connection and its upstream connection."""

    def __init__(self, proxy: FaultProxy, client: trio.SocketStream):
        self.proxy = proxy
        self.client = client
        self.cr = _Reader(client)
        self.upstream: trio.SocketStream | None = None
        self.ur: _Reader | None = None

    async def aclose(self) -> None:
        # Shielded: when the proxy shuts down, a cancelled first aclose() would
        # otherwise skip the second and leak the upstream socket.
        with trio.CancelScope(shield=True):
            await self.client.aclose()
            if self.upstream is not None:
                await self.upstream.aclose()

    async def run(self) -> None:
        proxy = self.proxy
        rule = proxy._fire("CONNECT")
        if rule is not None and rule.action != "delay":
            if rule.action == "reply":
                await self.client.send_all(_line(rule.reply))
            elif rule.action == "stall":
                await self.cr.drain()
            raise _Hangup(f"CONNECT {rule.action}")
        self.upstream = await trio.open_tcp_stream(proxy.upstream_host, proxy.upstream_port)
        proxy.stats.upstream_connections += 1
        self.ur = _Reader(self.upstream)
        greeting = await self.ur.line()
        if rule is not None:
            await trio.sleep(rule.seconds)
        await self.client.send_all(greeting)

        while True:
            line = await self._next_command()
            words = line.split(maxsplit=1)
            verb = words[0].decode("ascii", "replace").upper() if words else ""
            proxy.stats.commands[verb] += 1
            rule = proxy._fire(verb)
            if rule is None:
                await self._exchange(line, verb, self.client.send_all)
                if verb == "QUIT":
                    return
            else:
                await self._inject(rule, line, verb)

    async def _next_command(self) -> bytes:
        idle = self.proxy.close_idle_after
        if idle is None:
            return await self.cr.line()
        with trio.move_on_after(idle):
            return await self.cr.line()
        # Servers drop idle clients without a word; so do we.
        self.proxy.stats.idle_closes += 1
        raise _Hangup(f"idle for {idle}s")

    async def _exchange(self, line: bytes, verb: str, final: Sink, delay: float = 0.0) -> None:
        """Send one command upstream and relay its response. For POST/IHAVE the 340/335
        goes to the client and the article to the server; `final` gets the final
        response (delayed by `delay`), which is what the faults act on."""
        await self.upstream.send_all(line)
        status = await self.ur.line()
        if verb in ("POST", "IHAVE") and status[:3] in SEND_ARTICLE:
            await self.client.send_all(status)
            await self.cr.relay_block(self.upstream.send_all)
            status = await self.ur.line()
        if delay:
            await trio.sleep(delay)
        await final(status)
        code = status[:3]
        if code in MULTILINE or (code == b"211" and verb == "LISTGROUP"):
            await self.ur.relay_block(final)

    async def _inject(self, rule: Rule, line: bytes, verb: str) -> None:
        action = rule.action
        if action == "reply":
            await self.client.send_all(_line(rule.reply))
            if rule.close_after:
                raise _Hangup("closed after reply")
        elif action == "reject_after_body":
            await self.client.send_all(b"340 send article" + CRLF)
            await self.cr.relay_block(_discard)
            await self.client.send_all(_line(rule.reply))
        elif action == "delay":
            await self._exchange(line, verb, self.client.send_all, delay=rule.seconds)
        elif action == "drop_before_response":
            # Wait for the server's answer so the command (the article) really landed.
            await self._exchange(line, verb, _discard)
            raise _Hangup("dropped before the response")
        elif action == "cut_response":
            await self._exchange(line, verb, _budget(self.client, rule.cut_bytes))
            raise _Hangup("response cut")
        elif action == "stall":
            await self.upstream.send_all(line)
            await self.cr.drain()
            raise _Hangup("client left a stalled connection")
        elif action == "close":
            raise _Hangup("closed on command")
