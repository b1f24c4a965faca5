"""One NNTP session: connect, TLS, login, and the commands usenetfs uses.

`NNTPConnection.open()` returns a ready session (greeting read, STARTTLS and AUTHINFO
done, MODE READER sent only when the server needs it). Commands are strictly one at a
time. Any failure that could leave the byte stream out of step (a timeout, a cut-off
body, a cancelled command, a malformed line) marks the connection broken and closes it:
it is never reused. Server answers are turned into the exceptions of `errors`.

The public API is async (trio), but each command's blocking work (send, receive, TLS,
framing) runs in a worker thread on a plain blocking-style stdlib socket (an
`ssl.SSLSocket` for TLS), so the trio thread only schedules: with 4 connections moving
~1 GB/s, socket receives, TLS and the terminator scan kept the trio thread ~85% busy.
Each connection has its own CapacityLimiter(1), so its I/O never waits behind the
codec's CPU threads, and one command at a time per connection stays the rule.

Cancellation: the thread is abandoned (`abandon_on_cancel=True`), the connection is
marked broken, and the socket is shut down, which wakes the thread from its poll. The
socket is closed exactly once, by whichever side sees it last under `_lock`: never
while a thread may still use its file descriptor (the number could be reused).
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time

import sabctools
import trio

from . import errors as E
from .config import ServerConfig
from .protocol import (
    Response,
    ResponseReader,
    accepted_message_id,
    encode_block,
    encode_parts,
    format_command,
    is_too_many_connections,
)

log = logging.getLogger(__name__)

_RECEIVE_CHUNK = 256 * 1024
_SOCKET_BUFFER = 4 * 1024 * 1024
_NOT_FOUND_CODES = (420, 423, 430, 451)
_QUIT_SECONDS = 1.0
# sabctools' SSL_read releases the GIL without CPython's per-call bookkeeping: ~18% faster
# TLS receives (baselines.md). Only when sabctools found the OpenSSL CPython uses.
_UNLOCKED_SSL = getattr(sabctools, "openssl_linked", False) and hasattr(sabctools, "unlocked_ssl_recv_into")


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


def _wait(sock, events: int, seconds: float) -> bool:
    """Block until `sock` is ready for `events` (or shut down); False after `seconds`."""
    poller = select.poll()
    poller.register(sock.fileno(), events)
    return bool(poller.poll(max(0.0, seconds) * 1000.0))


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
    """A logged-in NNTP session. Use `await NNTPConnection.open(config)`.

    Methods whose names start with `_` and do not await run in the connection's worker
    thread (see `_call`); everything else runs in trio.
    """

    def __init__(self, config: ServerConfig):
        self.config = config
        self._sock: socket.socket | None = None
        self._recv = None  # the receive function for the current socket (plain or TLS)
        self._reader = ResponseReader()
        self._limiter = trio.CapacityLimiter(1)
        # Guards _sock, _busy and _closing between the trio thread and the worker thread.
        self._lock = threading.Lock()
        self._busy = False  # a worker thread is using the socket
        self._closing = False  # closed (or being closed) from the trio side
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
        conn = cls(config)
        try:
            with trio.fail_after(config.connect_timeout):
                await conn._call(f"connecting to {config.describe()}", conn._open)
        except trio.TooSlowError:
            raise E.ConnectFailed(
                f"{config.describe()}: no ready answer within {config.connect_timeout:g} s"
            ) from None
        return conn

    def _open(self) -> None:
        try:
            self._connect()
            if self.config.tls:
                self._start_tls()
            self._handshake()
        except BaseException:
            self.broken = True  # a half-open session is never handed out
            raise

    def _connect(self) -> None:
        config = self.config
        try:
            addresses = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise _connect_failed(config, exc) from None
        error: OSError | None = None
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            self._adopt(sock)
            try:
                # Whole articles per send/receive: with the default 16 KiB start a 700 KB
                # article takes about twenty wake-ups (the kernel caps this at wmem_max).
                # Set before connect, so the window scale is negotiated for it.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
                if family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(config.connect_timeout)
                sock.connect(address)
                sock.setblocking(False)  # from here on, waits are explicit polls
            except OSError as exc:
                error = exc
                with self._lock:
                    self._close_socket_locked()
                continue
            self._recv = sock.recv_into
            return
        raise _connect_failed(config, error or OSError("no address"))

    def _adopt(self, sock: socket.socket) -> None:
        """Make `sock` the connection's socket, unless the trio side already gave up."""
        with self._lock:
            if self._closing:
                sock.close()
                raise E.ConnectionBroken("connection closed while being set up")
            self._sock = sock

    def _start_tls(self) -> None:
        config = self.config
        context = tls_context(config)
        with self._lock:
            if self._closing or self._sock is None:
                raise E.ConnectionBroken("connection closed while being set up")
            # No I/O here: the handshake follows, with explicit waits.
            sock = context.wrap_socket(self._sock, server_hostname=config.host,
                                       do_handshake_on_connect=False)
            self._sock = sock
        deadline = time.monotonic() + config.connect_timeout
        while True:
            try:
                sock.do_handshake()
                break
            except ssl.SSLWantReadError:
                ready = _wait(sock, select.POLLIN, deadline - time.monotonic())
            except ssl.SSLWantWriteError:
                ready = _wait(sock, select.POLLOUT, deadline - time.monotonic())
            except ssl.SSLCertVerificationError as exc:
                raise E.TLSError(f"TLS certificate of {config.describe()} not trusted: "
                                 f"{exc.verify_message}") from None
            except OSError as exc:
                raise E.TLSError(f"TLS handshake with {config.describe()} failed: {exc}") from None
            if not ready:
                raise E.ConnectFailed(f"{config.describe()}: TLS handshake timed out")
        self.tls_version = sock.version()
        if _UNLOCKED_SSL:
            self._recv = lambda view: sabctools.unlocked_ssl_recv_into(sock, view)
        else:
            self._recv = sock.recv_into

    def _handshake(self) -> None:
        greeting = self._read_response("greeting")
        self.greeting = greeting.line
        if greeting.code not in (200, 201):
            raise error_for(greeting.code, greeting.text, f"connecting to {self.config.describe()}")
        self._load_capabilities()
        if self.config.starttls and not self.config.tls:
            self._starttls()
        if self.config.user:
            self._authenticate()
        if "MODE-READER" in self.capabilities and "READER" not in self.capabilities:
            response = self._exchange(format_command("MODE", "READER"), "MODE READER")
            if response.code not in (200, 201):
                raise error_for(response.code, response.text, "MODE READER")
            self._load_capabilities()

    def _load_capabilities(self) -> None:
        response = self._exchange(format_command("CAPABILITIES"), "CAPABILITIES")
        if response.code == 101:
            self.capabilities = [line.split(" ", 1)[0].upper() for line in response.lines() if line]
        else:
            self.capabilities = []  # a pre-RFC 3977 server: assume the basic reader commands

    def _starttls(self) -> None:
        response = self._exchange(format_command("STARTTLS"), "STARTTLS")
        if response.code != 382:
            raise E.TLSError(f"{self.config.describe()} refused STARTTLS: {response.line}",
                             response.code, response.text)
        if self._reader.buffered:
            raise E.ProtocolError("data after the 382 answer to STARTTLS")
        self._start_tls()
        self._load_capabilities()  # must be asked again after TLS (RFC 4642 §2.2)

    def _authenticate(self) -> None:
        response = self._exchange(format_command("AUTHINFO", "USER", self.config.user),
                                  "AUTHINFO USER")
        if response.code == 381:
            if self.config.password is None:
                raise E.AuthenticationRequired(
                    f"{self.config.describe()} wants a password and none was given")
            response = self._exchange(
                format_command("AUTHINFO", "PASS", self.config.password), "AUTHINFO PASS")
        if response.code != 281:
            raise error_for(response.code, response.text, f"logging in to {self.config.describe()}")
        self.authenticated = True
        self._load_capabilities()

    # --------------------------------------------------------------- commands
    async def post(self, article, *, dot_free: bool = False) -> str | None:
        """POST a complete article (headers, blank line, body; CRLF lines): bytes, or a
        sequence of bytes sent one after another (no 740 KB join).

        `dot_free`: the caller guarantees no line starts with '.' (see encode_block).
        Returns the Message-ID the server named in its 240 answer, or None if it named
        none. Raises PostRejected/DuplicateArticle (441), PostingNotAllowed (440), ...
        """
        return await self._call("POST", self._post, article, dot_free)

    def _post(self, article, dot_free: bool) -> str | None:
        # Validated (and copied if it must be stuffed) here in the worker thread, before
        # anything is sent: a ValueError leaves the connection in step.
        if isinstance(article, (bytes, bytearray, memoryview)):
            block = encode_block(article, dot_free=dot_free)
        else:
            block = encode_parts(article, dot_free=dot_free)
        response = self._exchange(format_command("POST"), "POST")
        if response.code != 340:
            raise error_for(response.code, response.text, "POST")
        response = self._exchange(block, "POST article", timeout=self.config.body_timeout)
        if response.code != 240:
            raise error_for(response.code, response.text, "POST")
        return accepted_message_id(response.text)

    async def body(self, message_id: str, *, stuffed: bool = False, then=None):
        """The body of an article, un-stuffed, every line ending in CRLF. `stuffed=True`:
        as it came, dot-stuffing and all, for a consumer that un-stuffs by itself (yEnc
        through sabctools), which saves a scan of every byte (protocol.ResponseReader).

        `then(body)`, if given, runs in the worker thread that received the body, and its
        result (or exception) is what this returns: a decoder handed the body there saves
        a round trip through the trio thread and another worker thread per article."""
        return await self._article_data("BODY", message_id, 222, stuffed, then)

    async def head(self, message_id: str) -> bytes:
        return await self._article_data("HEAD", message_id, 221)

    async def article(self, message_id: str) -> bytes:
        return await self._article_data("ARTICLE", message_id, 220)

    async def stat(self, message_id: str) -> bool:
        """True if the server says it has the article (223), False for 430.

        STAT is not proof that BODY will work (protocol.md §1.10): verify with BODY.
        """
        try:
            await self._article_data("STAT", message_id, 223)
        except E.ArticleNotFound:
            return False
        return True

    async def group_exists(self, name: str) -> bool | None:
        """GROUP: True if the server carries newsgroup `name` (211), False if it says it
        has no such group (411), None for any other answer (some servers refuse GROUP to
        posting-only accounts: that says nothing about the group)."""
        if not name or any(c in name for c in " \t\r\n"):
            raise ValueError(f"invalid newsgroup name {name!r}")
        return await self._call(f"GROUP {name}", self._group_exists, name)

    def _group_exists(self, name: str) -> bool | None:
        line = format_command("GROUP", name)
        response = self._exchange(line, f"GROUP {name}")
        if response.code == 480 and self.config.user and not self.authenticated:
            self._authenticate()
            response = self._exchange(line, f"GROUP {name}")
        return {211: True, 411: False}.get(response.code)

    async def date(self) -> str:
        """DATE: a cheap round trip used as a health check of idle connections."""
        return await self._call("DATE", self._date)

    def _date(self) -> str:
        response = self._exchange(format_command("DATE"), "DATE")
        if response.code != 111:
            raise error_for(response.code, response.text, "DATE")
        return response.text

    async def _article_data(self, verb: str, message_id: str, ok: int, stuffed: bool = False, then=None):
        _check_message_id(message_id)
        doing = f"{verb} {message_id}"
        return await self._call(doing, self._article_command, verb, message_id, ok, doing, stuffed, then)

    def _article_command(self, verb: str, message_id: str, ok: int, doing: str, stuffed: bool, then=None):
        line = format_command(verb, message_id)
        # `then` runs here, before this connection receives again: it can be lent the
        # body where it lies in the receive buffer instead of a copy.
        lend = stuffed and then is not None
        response = self._exchange(line, doing, timeout=self.config.body_timeout, stuffed=stuffed, lend=lend)
        if response.code == 480 and self.config.user and not self.authenticated:
            self._authenticate()
            response = self._exchange(line, doing, timeout=self.config.body_timeout, stuffed=stuffed, lend=lend)
        if response.code != ok:
            raise error_for(response.code, response.text, doing)
        if then is None:
            return response.data
        try:
            return then(response.data)
        finally:
            if isinstance(response.data, memoryview):
                response.data.release()

    # ------------------------------------------------------- trio <-> thread
    async def _call(self, doing: str, fn, *args):
        """Run `fn(*args)` in a worker thread, one at a time on this connection.

        If it fails in a way that leaves the stream out of step (the thread set `broken`),
        or trio cancels the wait (the thread is abandoned, maybe mid-receive), the
        connection is closed for good.
        """
        if self.broken or self.closed:
            raise E.ConnectionBroken(f"{doing}: connection already closed")
        try:
            result = await trio.to_thread.run_sync(self._in_thread, fn, args, limiter=self._limiter,
                                                   abandon_on_cancel=True)
        except BaseException as exc:
            if self.broken or not isinstance(exc, Exception):
                self._break()
            raise
        self.last_used = trio.current_time()
        return result

    def _in_thread(self, fn, args):
        with self._lock:
            if self._closing:
                raise E.ConnectionBroken("connection closed")
            self._busy = True
        try:
            return fn(*args)
        finally:
            with self._lock:
                self._busy = False
                if self._closing:  # given up on while we ran: closing is ours to do
                    self._close_socket_locked()

    def _break(self) -> None:
        """Mark broken and close (trio side, never blocks)."""
        self.broken = True
        self._shut_down()

    def _shut_down(self) -> None:
        self.closed = True
        with self._lock:
            self._closing = True
            if not self._busy:
                self._close_socket_locked()
            elif self._sock is not None:
                # Wake the thread (its poll sees the hang-up, its receive gets EOF); it
                # closes the socket when it finishes. socket.socket's shutdown, not
                # SSLSocket's, which would drop the SSL object under the thread's feet.
                try:
                    socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
                except OSError:
                    pass

    def _close_socket_locked(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    # ------------------------------------------------ worker-thread plumbing
    def _exchange(self, data: bytes | list[bytes], doing: str,
                  timeout: float | None = None, stuffed: bool = False, lend: bool = False) -> Response:
        """Send `data` and read exactly one response. Anything that goes wrong in
        between leaves the stream in an unknown state, so the connection is dropped."""
        if self.broken:
            raise E.ConnectionBroken(f"{doing}: connection already closed")
        try:
            self._send(data, doing)
            return self._read_response(doing, timeout, stuffed, lend)
        except BaseException:
            self.broken = True
            raise

    def _send(self, data: bytes | list[bytes], doing: str) -> None:
        sock = self._sock
        if sock is None:
            raise E.ConnectionBroken(f"{doing}: connection closed")
        deadline = time.monotonic() + self.config.response_timeout
        for buffer in data if isinstance(data, list) else [data]:
            view = memoryview(buffer)
            try:
                while view.nbytes:
                    try:
                        sent = sock.send(view)
                    except (BlockingIOError, ssl.SSLWantWriteError):
                        ready = _wait(sock, select.POLLOUT, deadline - time.monotonic())
                    except ssl.SSLWantReadError:
                        ready = _wait(sock, select.POLLIN, deadline - time.monotonic())
                    else:
                        view = view[sent:]
                        self.bytes_sent += sent
                        continue
                    if not ready:
                        raise E.ResponseTimeout(f"{doing}: sending timed out")
            except OSError as exc:
                raise E.ConnectionBroken(f"{doing}: connection lost while sending ({exc})") from None
            finally:
                view.release()

    def _read_response(self, doing: str, timeout: float | None = None, stuffed: bool = False,
                       lend: bool = False) -> Response:
        """Read one response; `response_timeout` bounds each silence, `timeout` the whole."""
        reader, sock, recv = self._reader, self._sock, self._recv
        if sock is None:
            raise E.ConnectionBroken(f"{doing}: connection closed")
        response_timeout = self.config.response_timeout
        deadline = time.monotonic() + (timeout or response_timeout)
        while True:
            response = reader.next_response(stuffed=stuffed, lend=lend)
            if response is not None:
                return response
            view = reader.writable(_RECEIVE_CHUNK)
            try:
                while True:
                    try:
                        count = recv(view)
                        break
                    except (BlockingIOError, ssl.SSLWantReadError):
                        events = select.POLLIN
                    except ssl.SSLWantWriteError:  # TLS renegotiation / key update
                        events = select.POLLOUT
                    silence = min(response_timeout, deadline - time.monotonic())
                    if silence <= 0:
                        raise E.ResponseTimeout(f"{doing}: the answer took too long")
                    if not _wait(sock, events, silence):
                        raise E.ResponseTimeout(f"{doing}: no answer within {silence:.0f} s")
            except OSError as exc:
                raise E.ConnectionBroken(f"{doing}: connection lost ({exc})") from None
            finally:
                view.release()
            if count == 0:
                raise E.ConnectionBroken(f"{doing}: the server closed the connection")
            _ack_now(sock)
            reader.commit(count)
            self.bytes_received += count

    def _quit(self) -> None:
        self._exchange(format_command("QUIT"), "QUIT", timeout=_QUIT_SECONDS)

    # ---------------------------------------------------------------- closing
    async def _abort(self) -> None:
        """Close without QUIT: the stream may be out of step."""
        self._break()

    async def aclose(self) -> None:
        """QUIT politely (bounded by a second) and close."""
        if self.closed:
            return
        if not self.broken:
            with trio.CancelScope(shield=True), trio.move_on_after(_QUIT_SECONDS):
                try:
                    await self._call("QUIT", self._quit)
                except Exception:
                    pass
        self._shut_down()
        self.broken = False  # closed cleanly, not because it broke

    async def __aenter__(self) -> "NNTPConnection":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()


def _connect_failed(config: ServerConfig, exc: OSError) -> E.ConnectFailed:
    reason = exc.strerror or str(exc) or type(exc).__name__
    return E.ConnectFailed(f"cannot connect to {config.describe()}: {reason}")


def _check_message_id(message_id: str) -> None:
    if not (message_id.startswith("<") and message_id.endswith(">") and 3 <= len(message_id) <= 250):
        raise ValueError(f"not a Message-ID: {message_id!r}")
