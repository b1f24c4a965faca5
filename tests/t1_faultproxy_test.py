"""Tests of tests/faultproxy.py against a tiny in-test fake NNTP server (no INN needed).

The fake answers a greeting (200), POST (340, then 240 or 441), BODY (222 + stored
body), STAT (223/430), QUIT (205) and HANGUP (closes without a word, a test-only verb).
Clients are raw trio sockets, so every byte the proxy lets through is checked.
"""

from __future__ import annotations

import functools
import re
import socket

import pytest
import trio

from faultproxy import FaultProxy, Rule

TERM = b"\r\n.\r\n"
TIMEOUT = 5  # no single read in these tests should take this long; it stops hangs
OPEN_CLIENTS: list[Conn] = []


class Conn:
    """A buffered trio stream: lines and dot-terminated blocks (used by both ends)."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.buf = bytearray()

    @classmethod
    async def connect(cls, port: int) -> Conn:
        conn = cls(await trio.open_tcp_stream("127.0.0.1", port))
        OPEN_CLIENTS.append(conn)  # closed by the close_clients fixture
        return conn

    async def fill(self) -> bool:
        try:
            data = await self.stream.receive_some()
        except trio.BrokenResourceError:
            data = b""
        self.buf += data
        return bool(data)

    async def line(self) -> bytes:
        with trio.fail_after(TIMEOUT):
            while b"\n" not in self.buf:
                if not await self.fill():
                    raise EOFError(bytes(self.buf))
        end = self.buf.index(b"\n") + 1
        line = bytes(self.buf[:end])
        del self.buf[:end]
        return line

    async def block(self) -> bytes:
        """A dot-terminated block, terminator included (may be just b'.\\r\\n')."""
        start = 0
        with trio.fail_after(TIMEOUT):
            while True:
                if self.buf[:3] == b".\r\n":  # the block follows a CRLF: empty block
                    end = 3
                    break
                if (found := self.buf.find(TERM, start)) >= 0:
                    end = found + len(TERM)
                    break
                start = max(0, len(self.buf) - len(TERM))
                if not await self.fill():
                    raise EOFError(bytes(self.buf))
        block = bytes(self.buf[:end])
        del self.buf[:end]
        return block

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def command(self, text: str) -> bytes:
        await self.send(text.encode() + b"\r\n")
        return await self.line()

    async def read_to_eof(self) -> bytes:
        """Everything left until the peer closes."""
        with trio.fail_after(TIMEOUT):
            while await self.fill():
                pass
        data = bytes(self.buf)
        self.buf.clear()
        return data

    async def aclose(self) -> None:
        await self.stream.aclose()


class FakeNNTP:
    def __init__(self):
        self.articles: dict[bytes, bytes] = {}  # message-id -> article as sent (dot-stuffed, with terminator)
        self.commands: list[bytes] = []
        self.connections = 0
        self.port = 0
        self.trickle = 0  # send the last `trickle` bytes of a BODY response one by one

    async def send_trickled(self, conn: Conn, data: bytes) -> None:
        split = len(data) - self.trickle
        await conn.send(data[:split])
        for i in range(max(split, 0), len(data)):
            await trio.sleep(0.005)  # separate reads for the proxy, most likely
            await conn.send(data[i : i + 1])

    def add(self, msgid: bytes, wire_body: bytes) -> bytes:
        self.articles[msgid] = article(msgid, wire_body)
        return msgid

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = Conn(stream)
        async with stream:
            try:
                await conn.send(b"200 fake ready\r\n")
                while True:
                    line = await conn.line()
                    self.commands.append(line)
                    verb, _, arg = line.strip().partition(b" ")
                    verb = verb.upper()
                    if verb == b"POST":
                        await conn.send(b"340 send it\r\n")
                        art = await conn.block()
                        m = re.search(rb"^Message-ID:\s*(<[^>]+>)", art, re.M | re.I)
                        if m is None:
                            await conn.send(b"441 no message-id\r\n")
                        else:
                            self.articles[m.group(1)] = art
                            await conn.send(b"240 " + m.group(1) + b" received\r\n")
                    elif verb == b"BODY" and arg in self.articles:
                        body = self.articles[arg].split(b"\r\n\r\n", 1)[1]
                        await self.send_trickled(conn, b"222 0 " + arg + b"\r\n" + body)
                    elif verb in (b"BODY", b"STAT"):
                        if arg in self.articles:
                            await conn.send(b"223 0 " + arg + b"\r\n")
                        else:
                            await conn.send(b"430 no such article\r\n")
                    elif verb == b"QUIT":
                        await conn.send(b"205 bye\r\n")
                        return
                    elif verb == b"HANGUP":
                        return
                    else:
                        await conn.send(b"500 what?\r\n")
            except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass


def article(msgid: bytes, wire_body: bytes) -> bytes:
    """An article in wire form; `wire_body` is already dot-stuffed, without terminator."""
    headers = b"From: t@example.invalid\r\nNewsgroups: alt.test\r\nSubject: t\r\nMessage-ID: " + msgid
    return headers + b"\r\n\r\n" + wire_body + b".\r\n"


def big_body(size: int = 1 << 20) -> bytes:
    """~`size` bytes of dot-stuffed lines, many starting with '..', some just '..'."""
    lines, total, i = [], 0, 0
    while total < size:
        if i % 3 == 0:
            line = b".." + b"x" * (i % 200)  # a stuffed line starting with '.'
        elif i % 7 == 0:
            line = b".."  # a stuffed lone '.': "\r\n..\r\n" must not end the block
        else:
            line = b"%d " % i + b"y" * (i % 300)
        lines.append(line + b"\r\n")
        total += len(line) + 2
        i += 1
    return b"".join(lines)


def body_response(msgid: bytes, wire_body: bytes) -> bytes:
    return b"222 0 " + msgid + b"\r\n" + wire_body + b".\r\n"


async def wait_until(predicate, timeout: float = 3) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def client(proxy: FaultProxy, greeting: bytes = b"200") -> Conn:
    c = await Conn.connect(proxy.port)
    assert (await c.line()).startswith(greeting)
    return c


async def post(c: Conn, msgid: bytes, wire_body: bytes = b"hello\r\n") -> bytes:
    """POST an article; returns the final response line (raises EOFError if dropped)."""
    assert await c.command("POST") == b"340 send it\r\n"
    await c.send(article(msgid, wire_body))
    return await c.line()


@pytest.fixture(autouse=True)
async def close_clients():
    yield
    while OPEN_CLIENTS:
        await OPEN_CLIENTS.pop().aclose()


@pytest.fixture
async def fake(nursery):
    f = FakeNNTP()
    serve = functools.partial(trio.serve_tcp, f.handle, 0, host="127.0.0.1")
    listeners = await nursery.start(serve)
    f.port = listeners[0].socket.getsockname()[1]
    return f


@pytest.fixture
async def proxy(fake):
    async with FaultProxy.start("127.0.0.1", fake.port) as p:
        yield p


# --- transparent forwarding ---------------------------------------------------------


async def test_transparent_session(fake, proxy):
    c = await client(proxy)
    assert await post(c, b"<a@t>") == b"240 <a@t> received\r\n"
    assert fake.articles[b"<a@t>"] == article(b"<a@t>", b"hello\r\n")
    assert await c.command("STAT <a@t>") == b"223 0 <a@t>\r\n"
    assert await c.command("stat <nope@t>") == b"430 no such article\r\n"
    assert await c.command("BODY <a@t>") == b"222 0 <a@t>\r\n"
    assert await c.block() == b"hello\r\n.\r\n"
    assert await c.command("QUIT") == b"205 bye\r\n"
    assert await c.read_to_eof() == b""
    await wait_until(lambda: proxy.stats.active == 0)
    s = proxy.stats
    assert (s.connections, s.upstream_connections, s.faults) == (1, 1, 0)
    assert s.commands == {"POST": 1, "STAT": 2, "BODY": 1, "QUIT": 1}


async def test_empty_blocks(fake, proxy):
    fake.add(b"<empty@t>", b"")
    c = await client(proxy)
    assert await c.command("BODY <empty@t>") == b"222 0 <empty@t>\r\n"
    assert await c.block() == b".\r\n"
    assert await c.command("STAT <empty@t>") == b"223 0 <empty@t>\r\n"


async def test_one_megabyte_byte_exact_both_ways(fake, proxy):
    body = big_body()
    c = await client(proxy)
    assert await post(c, b"<big@t>", body) == b"240 <big@t> received\r\n"
    assert fake.articles[b"<big@t>"] == article(b"<big@t>", body)
    await c.send(b"BODY <big@t>\r\n")
    assert await c.line() + await c.block() == body_response(b"<big@t>", body)
    assert await c.command("STAT <big@t>") == b"223 0 <big@t>\r\n"


async def test_pipelined_commands_keep_order(fake, proxy):
    big = big_body(300_000)
    fake.add(b"<p1@t>", big)
    fake.add(b"<p2@t>", b"two\r\n..dot\r\n")
    c = await client(proxy)
    await c.send(b"BODY <p1@t>\r\nSTAT <p2@t>\r\nBODY <gone@t>\r\nBODY <p2@t>\r\nQUIT\r\n")
    assert await c.line() + await c.block() == body_response(b"<p1@t>", big)
    assert await c.line() == b"223 0 <p2@t>\r\n"
    assert await c.line() == b"430 no such article\r\n"
    assert await c.line() + await c.block() == body_response(b"<p2@t>", b"two\r\n..dot\r\n")
    assert await c.line() == b"205 bye\r\n"
    assert await c.read_to_eof() == b""


async def test_terminator_split_across_reads(fake, proxy):
    """The terminator (and look-alikes such as a stuffed lone dot) arriving byte by
    byte, both from the server (BODY) and from the client (the POSTed article)."""
    body = b"a\r\n..\r\n..b\r\n..\r\n"
    fake.trickle = 12
    c = await client(proxy)
    assert await c.command("POST") == b"340 send it\r\n"
    wire = article(b"<split@t>", body)
    await c.send(wire[:-12])
    for i in range(len(wire) - 12, len(wire)):
        await trio.sleep(0.005)
        await c.send(wire[i : i + 1])
    assert await c.line() == b"240 <split@t> received\r\n"
    assert fake.articles[b"<split@t>"] == wire
    await c.send(b"BODY <split@t>\r\n")
    assert await c.line() + await c.block() == body_response(b"<split@t>", body)
    fake.add(b"<empty@t>", b"")
    await c.send(b"BODY <empty@t>\r\n")  # status line and ".\r\n" trickled
    assert await c.line() + await c.block() == body_response(b"<empty@t>", b"")
    assert await c.command("STAT <split@t>") == b"223 0 <split@t>\r\n"


# --- command faults -------------------------------------------------------------------


async def test_reply_instead_of_340(fake, proxy):
    rule = proxy.add_rule(Rule(command="POST", action="reply", reply="502 Too many connections", times=2))
    c = await client(proxy)
    assert await c.command("POST") == b"502 Too many connections\r\n"
    assert await c.command("post") == b"502 Too many connections\r\n"
    assert await post(c, b"<r@t>") == b"240 <r@t> received\r\n"
    assert [cmd for cmd in fake.commands if cmd.startswith(b"POST")] == [b"POST\r\n"]
    assert (rule.matched, rule.fired, proxy.stats.faults_by_action["reply"]) == (3, 2, 2)


async def test_reply_close_after(fake, proxy):
    proxy.add_rule(Rule(command="stat", action="reply", reply="400 going down", close_after=True))
    c = await client(proxy)
    assert await c.command("STAT <x@t>") == b"400 going down\r\n"
    assert await c.read_to_eof() == b""
    assert not any(cmd.startswith(b"STAT") for cmd in fake.commands)


async def test_after_and_times_and_star(fake, proxy):
    fake.add(b"<s@t>", b"s\r\n")
    rule = proxy.add_rule(Rule(command="STAT", action="reply", reply="430 nope", after=1, times=1))
    c = await client(proxy)
    assert await c.command("STAT <s@t>") == b"223 0 <s@t>\r\n"
    assert await c.command("STAT <s@t>") == b"430 nope\r\n"
    assert await c.command("STAT <s@t>") == b"223 0 <s@t>\r\n"
    assert (rule.matched, rule.fired) == (3, 1)
    proxy.clear_rules()
    proxy.add_rule(Rule(command="*", action="reply", reply="503 down", times=1))
    assert await c.command("HELLO") == b"503 down\r\n"
    assert await c.command("HELLO") == b"500 what?\r\n"


async def test_reject_after_body(fake, proxy):
    proxy.add_rule(Rule(command="POST", action="reject_after_body", times=2))
    c = await client(proxy)
    assert await c.command("POST") == b"340 send article\r\n"
    await c.send(article(b"<rej@t>", big_body(200_000)))
    assert await c.line() == b"441 Posting failed\r\n"
    # An empty article ('.' straight away) is swallowed too.
    assert await c.command("POST") == b"340 send article\r\n"
    await c.send(b".\r\n")
    assert await c.line() == b"441 Posting failed\r\n"
    # The article never reached the server, and the connection is still usable.
    assert await c.command("STAT <rej@t>") == b"430 no such article\r\n"
    assert fake.articles == {}
    assert not any(cmd.startswith(b"POST") for cmd in fake.commands)


async def test_drop_before_response_post_lands(fake, proxy):
    proxy.add_rule(Rule(command="POST", action="drop_before_response"))
    c = await client(proxy)
    with pytest.raises(EOFError):
        await post(c, b"<landed@t>")
    # The proxy waited for the server's 240 before dropping, so it's there already.
    assert b"<landed@t>" in fake.articles


async def test_drop_before_response_body(fake, proxy):
    fake.add(b"<d@t>", b"d\r\n")
    proxy.add_rule(Rule(command="BODY", action="drop_before_response"))
    c = await client(proxy)
    await c.send(b"BODY <d@t>\r\n")
    assert await c.read_to_eof() == b""
    assert fake.commands == [b"BODY <d@t>\r\n"]


@pytest.mark.parametrize("cut", [0, 5, 1000, 300_000])
async def test_cut_response(fake, proxy, cut):
    body = big_body()
    fake.add(b"<cut@t>", body)
    proxy.add_rule(Rule(command="BODY", action="cut_response", cut_bytes=cut))
    c = await client(proxy)
    await c.send(b"BODY <cut@t>\r\n")
    assert await c.read_to_eof() == body_response(b"<cut@t>", body)[:cut]


async def test_delay(fake, proxy):
    fake.add(b"<slow@t>", b"slow\r\n")
    proxy.add_rule(Rule(command="BODY", action="delay", seconds=0.3))
    c = await client(proxy)
    start = trio.current_time()
    assert await c.command("BODY <slow@t>") == b"222 0 <slow@t>\r\n"
    assert trio.current_time() - start >= 0.3
    assert await c.block() == b"slow\r\n.\r\n"


async def test_stall(fake, proxy):
    proxy.add_rule(Rule(command="STAT", action="stall"))
    c = await client(proxy)
    await c.send(b"STAT <x@t>\r\n")
    with trio.move_on_after(0.3) as cs:
        await c.line()
    assert cs.cancelled_caught and c.buf == b""
    await wait_until(lambda: b"STAT <x@t>\r\n" in fake.commands)  # it was forwarded
    assert proxy.stats.active == 1  # and the connection is still open
    await c.aclose()
    await wait_until(lambda: proxy.stats.active == 0)


# --- connection faults ----------------------------------------------------------------


async def test_connect_reply(fake, proxy):
    proxy.add_rule(Rule(command="CONNECT", action="reply", reply="502 Too many connections", times=1))
    c = await Conn.connect(proxy.port)
    assert await c.read_to_eof() == b"502 Too many connections\r\n"
    assert fake.connections == 0 and proxy.stats.upstream_connections == 0
    await client(proxy)  # the next connection is normal


async def test_connect_close(fake, proxy):
    proxy.add_rule(Rule(command="CONNECT", action="close"))
    c = await Conn.connect(proxy.port)
    assert await c.read_to_eof() == b""
    assert fake.connections == 0


async def test_connect_stall(fake, proxy):
    proxy.add_rule(Rule(command="CONNECT", action="stall"))
    c = await Conn.connect(proxy.port)
    with trio.move_on_after(0.3) as cs:
        await c.line()
    assert cs.cancelled_caught and c.buf == b""
    assert proxy.stats.active == 1 and fake.connections == 0


async def test_connect_delay(fake, proxy):
    proxy.add_rule(Rule(command="CONNECT", action="delay", seconds=0.2))
    start = trio.current_time()
    await client(proxy)
    assert trio.current_time() - start >= 0.2


async def test_rule_validation():
    with pytest.raises(ValueError):
        Rule(command="BODY", action="explode")
    with pytest.raises(ValueError):
        Rule(command="CONNECT", action="cut_response")
    with pytest.raises(ValueError):
        Rule(command="BODY", action="reject_after_body")
    with pytest.raises(ValueError):
        Rule(command="POST", action="reply")


async def test_close_idle_after(fake):
    async with FaultProxy.start("127.0.0.1", fake.port, close_idle_after=0.3) as proxy:
        fake.add(b"<i@t>", b"i\r\n")
        idle, busy = await client(proxy), await client(proxy)
        start = trio.current_time()
        for _ in range(6):  # busy stays open while idle gets dropped
            await trio.sleep(0.1)
            assert await busy.command("STAT <i@t>") == b"223 0 <i@t>\r\n"
        assert await idle.read_to_eof() == b""
        assert trio.current_time() - start >= 0.3
        assert proxy.stats.idle_closes == 1
        await busy.aclose()
        await wait_until(lambda: proxy.stats.active == 0)


# --- robustness -----------------------------------------------------------------------


async def test_active_and_peak(fake, proxy):
    clients = [await client(proxy) for _ in range(3)]
    assert (proxy.stats.active, proxy.stats.peak_active) == (3, 3)
    for c in clients:
        await c.aclose()
    await wait_until(lambda: proxy.stats.active == 0)
    assert (proxy.stats.connections, proxy.stats.peak_active) == (3, 3)


async def test_upstream_hangs_up(fake, proxy):
    c = await client(proxy)
    await c.send(b"HANGUP\r\n")
    assert await c.read_to_eof() == b""
    await wait_until(lambda: proxy.stats.active == 0)
    await client(proxy)  # the proxy survived


async def test_client_leaves_mid_body(fake, proxy):
    fake.add(b"<big@t>", big_body())
    c = await client(proxy)
    await c.send(b"BODY <big@t>\r\n")
    assert (await c.line()).startswith(b"222")
    await c.aclose()
    await wait_until(lambda: proxy.stats.active == 0)
    c = await client(proxy)
    assert await c.command("STAT <big@t>") == b"223 0 <big@t>\r\n"


async def test_upstream_unreachable():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with FaultProxy.start("127.0.0.1", port) as proxy:
        c = await Conn.connect(proxy.port)
        assert await c.read_to_eof() == b""
        await wait_until(lambda: proxy.stats.active == 0)
        assert proxy.stats.upstream_connections == 0
