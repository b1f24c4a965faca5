"""One NNTP session over trio: connect, TLS, login, and the commands usenetfs uses.

`NNTPConnection.open()` returns a ready session (greeting read, STARTTLS and AUTHINFO
done, MODE READER sent only when the server needs it). Commands are strictly one at a
time. Any failure that could leave the byte stream out of step (a timeout, a cut-off
body, a cancelled command, a malformed line) marks the connection broken and closes it:
it is never reused. Server answers are turned into the exceptions of `errors`.
"""

from __future__ import annotations

import logging
import socket
import ssl

import trio

from . import errors as E
from .config import ServerConfig
from .protocol import (
    Response,
    ResponseReader,
    accepted_message_id,
    encode_block,
    format_command,
    is_too_many_connections,
)

log = logging.getLogger(__name__)

_RECEIVE_CHUNK = 256 * 1024
_SOCKET_BUFFER = 4 * 1024 * 1024
_NOT_FOUND_CODES = (420, 423, 430, 451)


def tls_context(config: ServerConfig) -> ssl.SSLContext:
    """Verify the certificate and host name unless told otherwise; with `ca_file`,
    trust exactly that file (e.g. a self-signed server certificate)."""
    context = ssl.create_default_context(cafile=config.ca_file)
    if not config.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _ack_now(sock) -> None:
    """ACK what was just received, now. Servers such as INN's nnrpd write a response's
    status line and its body separately without TCP_NODELAY, so Nagle holds the body until
    the status line is ACKed, and a client in delayed-ACK mode waits 40 ms to do that:
    every response under about 64 KB took 40 ms instead of 0.2 ms. (Linux resets
    TCP_QUICKACK by itself, hence after every receive.)"""
    if _QUICKACK is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except OSError:
            pass


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class _PlainTransport:
    """TCP with recv_into straight into the response buffer (no per-chunk bytes)."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream

    async def send_all(self, data) -> None:
        await self.stream.send_all(data)

    async def receive_into(self, view: memoryview) -> int:
        n = await self.stream.socket.recv_into(view)
        _ack_now(self.stream.socket)
        return n

    async def aclose(self) -> None:
        await self.stream.aclose()


class _TLSTransport:
    def __init__(self, stream: trio.SSLStream):
        self.stream = stream

    async def send_all(self, data) -> None:
        await self.stream.send_all(data)

    async def receive_into(self, view: memoryview) -> int:
        data = await self.stream.receive_some(len(view))
        _ack_now(self.stream.transport_stream.socket)
        view[: len(data)] = data
        return len(data)

    async def aclose(self) -> None:
        await self.stream.aclose()


def error_for(code: int, text: str, doing: str) -> E.NNTPError:
    """The exception for an unwanted answer to `doing` (e.g. "POST <id>")."""
    message = f"{doing}: server answered {code} {text}".rstrip()
    if is_too_many_connections(code, text):
        return E.TooManyConnections(message, code, text)
    if code in _NOT_FOUND_CODES:
        return E.ArticleNotFound(message, code, text)
    if code == 441:
        lowered = text.lower()
        if text.startswith("435") or "duplicate" in lowered or "already" in lowered:
            return E.DuplicateArticle(message, code, text)
        return E.PostRejected(message, code, text)
    if code == 440:
        return E.PostingNotAllowed(message, code, text)
    if code == 481:
        return E.AuthenticationFailed(message, code, text)
    if code == 480:
        return E.AuthenticationRequired(message, code, text)
    if code in (400, 502):
        return E.ServerUnavailable(message, code, text)
    return E.ServerError(message, code, text)


class NNTPConnection:
    """A logged-in NNTP session. Use `await NNTPConnection.open(config)`."""

    def __init__(self, config: ServerConfig, transport):
        self.config = config
        self._transport = transport
        self._reader = ResponseReader()
        self.broken = False
        self.closed = False
        self.capabilities: list[str] = []
        self.greeting = ""
        self.tls_version: str | None = None
        self.authenticated = False
        self.created_at = trio.current_time()
        self.last_used = self.created_at
        self.bytes_sent = 0
        self.bytes_received = 0

    # ------------------------------------------------------------------ setup
    @classmethod
    async def open(cls, config: ServerConfig) -> "NNTPConnection":
        """Connect and log in within `config.connect_timeout`."""
        try:
            with trio.fail_after(config.connect_timeout):
                transport = await cls._connect(config)
                conn = cls(config, transport)
                conn._set_tls_version()
                try:
                    await conn._handshake()
                except BaseException:
                    await conn._abort()
                    raise
                return conn
        except trio.TooSlowError:
            raise E.ConnectFailed(
                f"{config.describe()}: no ready answer within {config.connect_timeout:g} s"
            ) from None

    @staticmethod
    async def _connect(config: ServerConfig):
        try:
            stream = await trio.open_tcp_stream(config.host, config.port)
            # Whole articles per send/receive: with the default 16 KiB start the loop wakes
            # about twenty times per 700 KB article (the kernel caps this at wmem_max).
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise E.ConnectFailed(f"cannot connect to {config.describe()}: {reason}") from None
        if not config.tls:
            return _PlainTransport(stream)
        return await _start_tls(stream, config)

    async def _handshake(self) -> None:
        greeting = await self._read_response("greeting")
        self.greeting = greeting.line
        if greeting.code not in (200, 201):
            raise error_for(greeting.code, greeting.text, f"connecting to {self.config.describe()}")
        await self._load_capabilities()
        if self.config.starttls and not self.config.tls:
            await self._starttls()
        if self.config.user:
            await self._authenticate()
        if "MODE-READER" in self.capabilities and "READER" not in self.capabilities:
            response = await self._command(format_command("MODE", "READER"), "MODE READER")
            if response.code not in (200, 201):
                raise error_for(response.code, response.text, "MODE READER")
            await self._load_capabilities()

    async def _load_capabilities(self) -> None:
        response = await self._command(format_command("CAPABILITIES"), "CAPABILITIES")
        if response.code == 101:
            self.capabilities = [line.split(" ", 1)[0].upper() for line in response.lines() if line]
        else:
            self.capabilities = []  # a pre-RFC 3977 server: assume the basic reader commands

    async def _starttls(self) -> None:
        response = await self._command(format_command("STARTTLS"), "STARTTLS")
        if response.code != 382:
            raise E.TLSError(f"{self.config.describe()} refused STARTTLS: {response.line}",
                             response.code, response.text)
        if self._reader.buffered:
            raise E.ProtocolError("data after the 382 answer to STARTTLS")
        assert isinstance(self._transport, _PlainTransport)
        self._transport = await _start_tls(self._transport.stream, self.config)
        self._set_tls_version()
        await self._load_capabilities()  # must be asked again after TLS (RFC 4642 §2.2)

    def _set_tls_version(self) -> None:
        if isinstance(self._transport, _TLSTransport):
            self.tls_version = self._transport.stream.version()

    async def _authenticate(self) -> None:
        response = await self._command(format_command("AUTHINFO", "USER", self.config.user),
                                       "AUTHINFO USER")
        if response.code == 381:
            if self.config.password is None:
                raise E.AuthenticationRequired(
                    f"{self.config.describe()} wants a password and none was given")
            response = await self._command(
                format_command("AUTHINFO", "PASS", self.config.password), "AUTHINFO PASS")
        if response.code != 281:
            raise error_for(response.code, response.text, f"logging in to {self.config.describe()}")
        self.authenticated = True
        await self._load_capabilities()

    # --------------------------------------------------------------- commands
    async def post(self, article: bytes | memoryview, *, dot_free: bool = False) -> str | None:
        """POST a complete article (headers, blank line, body; CRLF lines).

        `dot_free`: the caller guarantees no line starts with '.' (see encode_block).
        Returns the Message-ID the server named in its 240 answer, or None if it named
        none. Raises PostRejected/DuplicateArticle (441), PostingNotAllowed (440), ...
        """
        block = encode_block(article, dot_free=dot_free)  # validate before anything is sent
        response = await self._command(format_command("POST"), "POST")
        if response.code != 340:
            raise error_for(response.code, response.text, "POST")
        response = await self._exchange(block, "POST article", timeout=self.config.body_timeout)
        if response.code != 240:
            raise error_for(response.code, response.text, "POST")
        return accepted_message_id(response.text)

    async def body(self, message_id: str) -> bytes:
        """The body of an article, un-stuffed, every line ending in CRLF."""
        response = await self._article_command("BODY", message_id, 222)
        assert response.data is not None
        return response.data

    async def head(self, message_id: str) -> bytes:
        response = await self._article_command("HEAD", message_id, 221)
        assert response.data is not None
        return response.data

    async def article(self, message_id: str) -> bytes:
        response = await self._article_command("ARTICLE", message_id, 220)
        assert response.data is not None
        return response.data

    async def stat(self, message_id: str) -> bool:
        """True if the server says it has the article (223), False for 430.

        STAT is not proof that BODY will work (protocol.md §1.10): verify with BODY.
        """
        try:
            await self._article_command("STAT", message_id, 223)
        except E.ArticleNotFound:
            return False
        return True

    async def group_exists(self, name: str) -> bool | None:
        """GROUP: True if the server carries newsgroup `name` (211), False if it says it
        has no such group (411), None for any other answer (some servers refuse GROUP to
        posting-only accounts: that says nothing about the group)."""
        if not name or any(c in name for c in " \t\r\n"):
            raise ValueError(f"invalid newsgroup name {name!r}")
        line = format_command("GROUP", name)
        response = await self._command(line, f"GROUP {name}")
        if response.code == 480 and self.config.user and not self.authenticated:
            await self._authenticate()
            response = await self._command(line, f"GROUP {name}")
        return {211: True, 411: False}.get(response.code)

    async def date(self) -> str:
        """DATE: a cheap round trip used as a health check of idle connections."""
        response = await self._command(format_command("DATE"), "DATE")
        if response.code != 111:
            raise error_for(response.code, response.text, "DATE")
        return response.text

    async def _article_command(self, verb: str, message_id: str, ok: int) -> Response:
        _check_message_id(message_id)
        doing = f"{verb} {message_id}"
        response = await self._command(format_command(verb, message_id), doing,
                                       timeout=self.config.body_timeout)
        if response.code == 480 and self.config.user and not self.authenticated:
            await self._authenticate()
            response = await self._command(format_command(verb, message_id), doing,
                                           timeout=self.config.body_timeout)
        if response.code != ok:
            raise error_for(response.code, response.text, doing)
        return response

    # ---------------------------------------------------------------- plumbing
    async def _command(self, line: bytes, doing: str, timeout: float | None = None) -> Response:
        return await self._exchange(line, doing, timeout=timeout)

    async def _exchange(self, data: bytes | list[bytes], doing: str,
                        timeout: float | None = None) -> Response:
        """Send `data` and read exactly one response. Anything that goes wrong in
        between leaves the stream in an unknown state, so the connection is dropped."""
        if self.broken or self.closed:
            raise E.ConnectionBroken(f"{doing}: connection already closed")
        try:
            await self._send(data, doing)
            response = await self._read_response(doing, timeout)
        except BaseException:
            await self._abort()
            raise
        self.last_used = trio.current_time()
        return response

    async def _send(self, data: bytes | list[bytes], doing: str) -> None:
        buffers = data if isinstance(data, list) else [data]
        try:
            with trio.fail_after(self.config.response_timeout):
                for buffer in buffers:
                    await self._transport.send_all(buffer)
        except trio.TooSlowError:
            raise E.ResponseTimeout(f"{doing}: sending timed out") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise E.ConnectionBroken(f"{doing}: connection lost while sending ({exc})") from None
        self.bytes_sent += sum(map(len, buffers))

    async def _read_response(self, doing: str, timeout: float | None = None) -> Response:
        """Read one response; `response_timeout` bounds each silence, `timeout` the whole."""
        reader = self._reader
        deadline = trio.current_time() + (timeout or self.config.response_timeout)
        while True:
            response = reader.next_response()
            if response is not None:
                return response
            silence = min(self.config.response_timeout, deadline - trio.current_time())
            if silence <= 0:
                raise E.ResponseTimeout(f"{doing}: the answer took too long")
            view = reader.writable(_RECEIVE_CHUNK)
            try:
                with trio.move_on_after(silence) as scope:
                    count = await self._transport.receive_into(view)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise E.ConnectionBroken(f"{doing}: connection lost ({exc})") from None
            finally:
                view.release()
            if scope.cancelled_caught:
                raise E.ResponseTimeout(f"{doing}: no answer within {silence:.0f} s")
            if count == 0:
                raise E.ConnectionBroken(f"{doing}: the server closed the connection")
            reader.commit(count)
            self.bytes_received += count

    async def _abort(self) -> None:
        """Close without QUIT: the stream may be out of step."""
        self.broken = True
        if not self.closed:
            self.closed = True
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1):
                    try:
                        await self._transport.aclose()
                    except Exception:
                        pass

    async def aclose(self) -> None:
        """QUIT politely (bounded by a second) and close."""
        if self.closed:
            return
        if not self.broken:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                try:
                    await self._transport.send_all(format_command("QUIT"))
                    view = self._reader.writable(512)
                    try:
                        await self._transport.receive_into(view)
                    finally:
                        view.release()
                except Exception:
                    pass
        await self._abort()
        self.broken = False  # closed cleanly, not because it broke

    async def __aenter__(self) -> "NNTPConnection":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()


async def _start_tls(stream: trio.SocketStream, config: ServerConfig):
    ssl_stream = trio.SSLStream(stream, tls_context(config), server_hostname=config.host)
    try:
        await ssl_stream.do_handshake()
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(stream)
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise E.TLSError(f"TLS certificate of {config.describe()} not trusted: "
                             f"{cause.verify_message}") from None
        raise E.TLSError(f"TLS handshake with {config.describe()} failed: {cause or exc}") from None
    except BaseException:  # timed out or cancelled mid-handshake: don't leak the socket
        await trio.aclose_forcefully(stream)
        raise
    return _TLSTransport(ssl_stream)


def _check_message_id(message_id: str) -> None:
    if not (message_id.startswith("<") and message_id.endswith(">") and 3 <= len(message_id) <= 250):
        raise ValueError(f"not a Message-ID: {message_id!r}")
