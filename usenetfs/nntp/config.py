"""Where and how to reach one NNTP server account: `ServerConfig` and its URL form.

URL: ``nntp://[user[:password]@]host[:port]`` (plain, port 119) or ``nntps://...``
(implicit TLS, port 563). ``?starttls=1`` upgrades a plain connection.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import UserError, read_user_file


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    tls: bool = False  # implicit TLS from the first byte (nntps, port 563)
    starttls: bool = False  # upgrade a plain connection with STARTTLS before AUTHINFO
    user: str | None = None
    password: str | None = None
    ca_file: str | None = None  # trust exactly this CA/certificate file instead of the system's
    verify_tls: bool = True
    connect_timeout: float = 30.0  # TCP connect + TLS handshake + greeting + login
    response_timeout: float = 60.0  # the longest silence while waiting for an answer
    body_timeout: float = 300.0  # the longest a single (large) response may take in all

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.starttls

    def describe(self) -> str:
        """The URL without the password, for messages and logs."""
        scheme = "nntps" if self.tls else "nntp"
        who = f"{self.user}@" if self.user else ""
        return f"{scheme}://{who}{self.host}:{self.port}"

    def with_password(self, password: str | None) -> "ServerConfig":
        return replace(self, password=password)


def parse_server_url(url: str, *, password_file: str | Path | None = None,
                     ca_file: str | None = None) -> ServerConfig:
    """Parse a server URL; raise UserError with one clear line if it is malformed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UserError(f"invalid server URL {url!r}: {exc}") from None
    if parts.scheme not in ("nntp", "nntps"):
        raise UserError(f"invalid server URL {url!r}: the scheme must be nntp:// or nntps://")
    if not parts.hostname:
        raise UserError(f"invalid server URL {url!r}: no host name")
    if parts.path not in ("", "/"):
        raise UserError(f"invalid server URL {url!r}: unexpected path {parts.path!r}")
    query = parse_qs(parts.query)
    unknown = set(query) - {"starttls"}
    if unknown:
        raise UserError(f"invalid server URL {url!r}: unknown parameter {sorted(unknown)[0]!r}")
    tls = parts.scheme == "nntps"
    starttls = query.get("starttls", ["0"])[-1] in ("1", "yes", "true")
    if tls and starttls:
        raise UserError("starttls makes no sense with nntps:// (TLS is already on)")
    password = unquote(parts.password) if parts.password is not None else None
    if password_file is not None:
        password = read_user_file(password_file, "password").rstrip("\r\n")
    return ServerConfig(
        host=parts.hostname,
        port=port or (563 if tls else 119),
        tls=tls,
        starttls=starttls,
        user=unquote(parts.username) if parts.username else None,
        password=password,
        ca_file=ca_file,
    )
