"""The NNTP article around a body: the four headers we post, and nothing that identifies us.

Owns `build_article` / `article_head` and the random `From`/`Subject` generators. An
article is `From`, `Newsgroups`, `Subject`, `Message-ID`, a blank line and the body, CRLF
throughout. Deliberately absent (protocol.md §6.6): `Date` (the server adds one), any
`User-Agent` or `X-` header, and our name anywhere. From and Subject are random by
default; callers that want one From per upload batch pass `poster=random_poster()` once.

The result is NOT dot-stuffed: that is the NNTP layer's job (our yEnc bodies never have a
line starting with '.', but the transport must not rely on it).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence

_CONSONANTS = "bcdfghjklmnprstvz"
_VOWELS = "aeiou"
_TLDS = ("com", "net", "org")

# RFC 3977 §3.6: message-ids are printable ASCII without spaces, at most 250 octets.
_MSGID_RE = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+>")
_GROUP_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9+_.-]*")
_HEADER_VALUE_RE = re.compile(r"[\x20-\x7e]+")


def pseudo_word(randbelow: Callable[[int], int], syllables: int) -> str:
    """A pronounceable lowercase word of consonant-vowel syllables, e.g. "kavori".

    `randbelow(n)` supplies the choices: `secrets.randbelow` for random words, a keyed
    deterministic source for words that must be recomputable (keys.py's domain).
    """
    return "".join(
        _CONSONANTS[randbelow(len(_CONSONANTS))] + _VOWELS[randbelow(len(_VOWELS))]
        for _ in range(syllables)
    )


def random_subject() -> str:
    """A Subject that is just a random token (32 lowercase hex digits), as obfuscating
    posters (ngPost) do."""
    return secrets.token_hex(16)


def _drawn_from(pool: bytes) -> Callable[[int], int]:
    """`randbelow` over random bytes drawn at once: ~30 draws per From header cost a
    getrandom() call each through `secrets` (30 µs on the trio thread per article). Two
    bytes a draw: the modulo bias, under n/65536, does not matter for a cover name."""
    numbers = iter(int.from_bytes(pool[i:i + 2], "big") for i in range(0, len(pool) - 1, 2))
    return lambda n: next(numbers) % n


def random_poster() -> str:
    """A From value like "Kavori Tesumu <kavori.tesumu47@lovenida.net>", all random."""
    randbelow = _drawn_from(secrets.token_bytes(80))  # at most 34 draws
    first = pseudo_word(randbelow, 2 + randbelow(2))
    last = pseudo_word(randbelow, 2 + randbelow(3))
    sep = (".", "_", "")[randbelow(3)]
    digits = str(randbelow(100)) if randbelow(2) else ""
    domain = pseudo_word(randbelow, 3 + randbelow(2)) + "." + _TLDS[randbelow(len(_TLDS))]
    return f"{first.capitalize()} {last.capitalize()} <{first}{sep}{last}{digits}@{domain}>"


def _header_value(name: str, value: str) -> str:
    # One line of printable ASCII: no CR/LF (header injection), no 8-bit (INN may refuse).
    if not _HEADER_VALUE_RE.fullmatch(value) or value != value.strip():
        raise ValueError(f"unusable {name} header value: {value!r}")
    return value


def article_head(
    message_id: str,
    newsgroups: str | Sequence[str],
    *,
    subject: str | None = None,
    poster: str | None = None,
) -> bytes:
    """The header block including the blank line; the body follows it directly.

    Separate from `build_article` so a transport can send head and body as two writes
    instead of joining 700 KB again.
    """
    if len(message_id) > 250 or not _MSGID_RE.fullmatch(message_id):
        raise ValueError(f"invalid Message-ID: {message_id!r}")
    groups = [newsgroups] if isinstance(newsgroups, str) else list(newsgroups)
    if not groups or not all(isinstance(g, str) and _GROUP_RE.fullmatch(g) for g in groups):
        raise ValueError(f"invalid newsgroups: {newsgroups!r}")
    sender = _header_value("From", poster if poster is not None else random_poster())
    subj = _header_value("Subject", subject if subject is not None else random_subject())
    head = (
        f"From: {sender}\r\n"
        f"Newsgroups: {','.join(groups)}\r\n"
        f"Subject: {subj}\r\n"
        f"Message-ID: {message_id}\r\n"
        "\r\n"
    )
    return head.encode("ascii")


def build_article(
    message_id: str,
    newsgroups: str | Sequence[str],
    body: bytes,
    *,
    subject: str | None = None,
    poster: str | None = None,
) -> bytes:
    """The complete article (headers, blank line, body), CRLF line endings, not
    dot-stuffed. `body` must end with CRLF; BODY on the server returns exactly it."""
    if not body.endswith(b"\r\n"):
        raise ValueError("article body must end with CRLF")
    head = article_head(message_id, newsgroups, subject=subject, poster=poster)
    return b"".join((head, body))


__all__ = ["build_article", "article_head", "random_subject", "random_poster", "pseudo_word"]
