"""What can go wrong talking NNTP, sorted by what the caller should do about it.

`TemporaryError`s are worth retrying (after a delay, maybe on a new connection);
`PermanentError`s are not: retrying a bad password or a refused certificate only gets
an account locked. `ConnectionBroken` marks a connection that must not be reused.
"""

from __future__ import annotations

from ..errors import UsenetfsError


class NNTPError(UsenetfsError):
    """Base class; `code`/`text` are the server's answer when there was one."""

    def __init__(self, message: str, code: int | None = None, text: str = ""):
        super().__init__(message)
        self.code = code
        self.text = text


class ProtocolError(NNTPError):
    """The peer sent something that is not NNTP; the connection is unusable."""


class TemporaryError(NNTPError):
    """Worth retrying later."""


class PermanentError(NNTPError):
    """Not worth retrying: a configuration or account problem the user must fix."""


class ConnectionBroken(TemporaryError):
    """The connection died, timed out or got out of step; it is closed, not reused."""


class ResponseTimeout(ConnectionBroken):
    """No (complete) answer within the response timeout."""


class ServerUnavailable(TemporaryError):
    """400 or 502 at greeting without a connection-limit hint, or 400 later."""


class TooManyConnections(TemporaryError):
    """The provider says this account or address has too many connections."""


class ServerError(TemporaryError):
    """500/503/403 and other answers that a later try may not get."""


class PostRejected(TemporaryError):
    """441: the server did not take the article (may be transient, retried a few times)."""


class DuplicateArticle(PostRejected):
    """441 because an article with this Message-ID already exists."""


class ArticleNotFound(NNTPError):
    """430 (or 423/451): this server has no such article, at least not yet."""


class AuthenticationFailed(PermanentError):
    """481: the user name or password was refused."""


class AuthenticationRequired(PermanentError):
    """480 and no credentials were configured."""


class PostingNotAllowed(PermanentError):
    """440: this account may not post."""


class TLSError(PermanentError):
    """The TLS handshake failed, e.g. the certificate is not trusted."""


class ConnectFailed(TemporaryError):
    """The TCP connection could not be made (refused, unreachable, name not found)."""


class MessageIdRewritten(PermanentError):
    """The server stored the article under another id; derived ids cannot work there."""
