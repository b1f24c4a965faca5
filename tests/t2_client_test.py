"""Level 2: the NNTP client against a real INN on loopback (and the fault proxy)."""

import functools
import os
import threading
import uuid

import pytest
import trio

from usenetfs.nntp import errors as E
from usenetfs.nntp.config import ServerConfig, parse_server_url
from usenetfs.nntp.connection import NNTPConnection

from faultproxy import FaultProxy, Rule

GROUP = "alt.binaries.test"


def new_id() -> str:
    return f"<{uuid.uuid4().hex}@example.test>"


def make_article(message_id: str, body: bytes, group: str = GROUP) -> bytes:
    headers = (f"From: someone <someone@example.test>\r\nNewsgroups: {group}\r\n"
               f"Subject: {uuid.uuid4().hex}\r\nMessage-ID: {message_id}\r\n\r\n")
    return headers.encode() + body


def config_for(url: str, **kwargs) -> ServerConfig:
    config = parse_server_url(url)
    return ServerConfig(**{**config.__dict__, **kwargs})


async def test_post_and_fetch_are_byte_exact(inn):
    body = (b".starts with a dot\r\n..two dots\r\n.\r\nplain line\r\n"
            + bytes(range(1, 256)).replace(b"\r", b"").replace(b"\n", b"") + b"\r\n"
            + b"x" * 5000 + b"\r\n")
    message_id = new_id()
    async with await NNTPConnection.open(config_for(inn.url)) as conn:
        assert conn.greeting.startswith("200")
        assert "READER" in conn.capabilities
        accepted = await conn.post(make_article(message_id, body))
        assert accepted in (None, message_id)
        assert await conn.body(message_id) == body
        assert await conn.stat(message_id)
        assert f"Message-ID: {message_id}".encode() in await conn.head(message_id)
        assert (await conn.article(message_id)).endswith(body)


async def test_group_exists(inn):
    async with await NNTPConnection.open(config_for(inn.url)) as conn:
        assert await conn.group_exists("alt.binaries.test") is True
        assert await conn.group_exists("alt.not.carried.here") is False
        with pytest.raises(ValueError):
            await conn.group_exists("two words")


async def test_large_body_and_missing_article(inn):
    body = b"".join(os.urandom(64).hex().encode() + b"\r\n" for _ in range(12000))  # ~1.5 MB
    message_id = new_id()
    async with await NNTPConnection.open(config_for(inn.url)) as conn:
        await conn.post(make_article(message_id, body))
        assert await conn.body(message_id) == body
        with pytest.raises(E.ArticleNotFound):
            await conn.body(new_id())
        assert not await conn.stat(new_id())
        # A 430 does not break the connection.
        assert await conn.body(message_id) == body
        assert await conn.body(message_id, stuffed=True) == body  # nothing to un-stuff here
        dotted_id = new_id()
        await conn.post(make_article(dotted_id, b".starts with a dot\r\n..two\r\nplain\r\n"))
        assert await conn.body(dotted_id) == b".starts with a dot\r\n..two\r\nplain\r\n"
        assert await conn.body(dotted_id, stuffed=True) == b"..starts with a dot\r\n...two\r\nplain\r\n"
        # then(): runs on the body in the worker thread; what it raises does not break the
        # connection (the exchange itself went fine).
        same, thread = await conn.body(message_id, then=lambda got: (got == body, threading.get_ident()))
        assert same and thread != threading.get_ident()

        def refuse(got):
            raise ValueError("not what I wanted")
        with pytest.raises(ValueError):
            await conn.body(message_id, then=refuse)
        assert not conn.broken and await conn.body(message_id) == body
        # With stuffed=True, then() is lent the body where it lies in the receive buffer
        # (no copy); the view is released when then() returns. Without then(), a copy.
        lent = []
        assert await conn.body(message_id, stuffed=True, then=lambda got: lent.append(got) or bytes(got)) == body
        assert isinstance(lent[0], memoryview)
        with pytest.raises(ValueError):
            lent[0].tobytes()  # released
        assert type(await conn.body(message_id, stuffed=True)) is bytes


async def test_duplicate_post_is_recognised(inn):
    message_id = new_id()
    article = make_article(message_id, b"once\r\n")
    async with await NNTPConnection.open(config_for(inn.url)) as conn:
        await conn.post(article)
        with pytest.raises(E.DuplicateArticle):
            await conn.post(article)


async def test_authinfo(inn_auth):
    good = config_for(inn_auth.url, user="alice", password="wonderland")
    async with await NNTPConnection.open(good) as conn:
        assert conn.authenticated
        message_id = new_id()
        await conn.post(make_article(message_id, b"authenticated\r\n"))
        assert await conn.body(message_id) == b"authenticated\r\n"

    async with await NNTPConnection.open(config_for(inn_auth.url)) as anonymous:
        with pytest.raises(E.AuthenticationRequired):
            await anonymous.body(new_id())

    with pytest.raises(E.AuthenticationFailed):
        await NNTPConnection.open(config_for(inn_auth.url, user="alice", password="wrong"))


async def test_tls_trusted_and_untrusted(inn_tls):
    trusted = config_for(inn_tls.url.replace("nntp://", "nntps://"), ca_file=str(inn_tls.cert_file))
    async with await NNTPConnection.open(trusted) as conn:
        assert conn.tls_version and conn.tls_version.startswith("TLS")
        message_id = new_id()
        await conn.post(make_article(message_id, b"..over tls\r\n"))
        assert await conn.body(message_id) == b"..over tls\r\n"

    untrusted = config_for(inn_tls.url.replace("nntp://", "nntps://"))
    with pytest.raises(E.TLSError, match="not trusted"):
        await NNTPConnection.open(untrusted)


async def test_refusing_server(inn_refuse):
    with pytest.raises(E.ServerUnavailable) as caught:
        await NNTPConnection.open(config_for(inn_refuse.url))
    assert caught.value.code == 502


async def test_connection_refused_is_fast_and_clear():
    port = _unused_port()
    with pytest.raises(E.ConnectFailed, match="cannot connect"):
        await NNTPConnection.open(ServerConfig("127.0.0.1", port))


async def test_response_timeout_breaks_the_connection(inn):
    async with FaultProxy.start(inn.host, inn.port) as proxy:
        proxy.add_rule(Rule(command="BODY", action="stall"))
        config = ServerConfig("127.0.0.1", proxy.port, response_timeout=0.5)
        conn = await NNTPConnection.open(config)
        with pytest.raises(E.ResponseTimeout):
            await conn.body(new_id())
        assert conn.broken and conn.closed
        with pytest.raises(E.ConnectionBroken):
            await conn.stat(new_id())


async def test_cut_body_breaks_the_connection(inn):
    message_id = new_id()
    body = b"y" * 200_000 + b"\r\n"
    async with await NNTPConnection.open(config_for(inn.url)) as conn:
        await conn.post(make_article(message_id, body))
    async with FaultProxy.start(inn.host, inn.port) as proxy:
        proxy.add_rule(Rule(command="BODY", action="cut_response", cut_bytes=50_000))
        conn = await NNTPConnection.open(ServerConfig("127.0.0.1", proxy.port))
        with pytest.raises(E.ConnectionBroken):
            await conn.body(message_id)
        assert conn.broken


async def test_greeting_too_many_connections(inn):
    async with FaultProxy.start(inn.host, inn.port) as proxy:
        proxy.add_rule(Rule(command="CONNECT", action="reply", reply="502 Too many connections"))
        with pytest.raises(E.TooManyConnections):
            await NNTPConnection.open(ServerConfig("127.0.0.1", proxy.port))


def _unused_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_starttls_upgrades_a_plain_connection(inn):
    reader = inn.add_reader("starttls")
    config = config_for(reader.url + "?starttls=1", ca_file=str(reader.cert_file))
    async with await NNTPConnection.open(config) as conn:
        assert conn.tls_version and conn.tls_version.startswith("TLS")
        assert "STARTTLS" not in conn.capabilities  # asked again after the upgrade
        message_id = new_id()
        await conn.post(make_article(message_id, b"upgraded\r\n"))
        assert await conn.body(message_id) == b"upgraded\r\n"


async def test_large_body_over_tls(inn_tls):
    # Many TLS records, so the receive loop waits for more data (and ACKs) many times.
    body = b"".join(os.urandom(64).hex().encode() + b"\r\n" for _ in range(12000))  # ~1.5 MB
    config = config_for(inn_tls.url.replace("nntp://", "nntps://"), ca_file=str(inn_tls.cert_file))
    message_id = new_id()
    async with await NNTPConnection.open(config) as conn:
        await conn.post(make_article(message_id, body))
        assert await conn.body(message_id) == body
        assert conn.bytes_received > len(body)


async def test_cancel_mid_body_breaks_the_connection_and_frees_its_thread():
    """A trio cancel while the worker thread is receiving a body: the call returns at
    once, the connection is broken, and the thread (woken by the socket's shutdown)
    finishes and closes the socket, which the server sees as end of stream."""
    saw_eof = trio.Event()
    body_started = trio.Event()

    async def server(stream: trio.SocketStream) -> None:
        await stream.send_all(b"200 fake server ready\r\n")
        buffered = b""
        while True:
            data = await stream.receive_some()
            if not data:
                saw_eof.set()
                return
            buffered += data
            while b"\r\n" in buffered:
                line, buffered = buffered.split(b"\r\n", 1)
                if line == b"CAPABILITIES":
                    await stream.send_all(b"101 caps\r\nVERSION 2\r\nREADER\r\n.\r\n")
                elif line.startswith(b"BODY"):
                    # Half a body, then silence (well within response_timeout).
                    await stream.send_all(b"222 0 <x@y> body\r\n" + b"x" * 126 + b"\r\n" * 800)
                    body_started.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, server, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        conn = await NNTPConnection.open(ServerConfig("127.0.0.1", port, response_timeout=600))
        with trio.move_on_after(0.3) as scope:
            await conn.body("<x@y>")
        assert scope.cancelled_caught and body_started.is_set()
        assert conn.broken and conn.closed
        with trio.fail_after(30):  # a hang guard, not a timing requirement
            await saw_eof.wait()
            while conn._busy or conn._sock is not None:  # noqa: SLF001
                await trio.sleep(0.01)
        with pytest.raises(E.ConnectionBroken):
            await conn.stat("<x@y>")
        await conn.aclose()  # closing again is harmless
        nursery.cancel_scope.cancel()
