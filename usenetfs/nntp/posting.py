"""Posting an article so that it is really there: post, read back by BODY, re-post if lost.

Rules (protocol.md §1.5, §1.10, §6.5):
- Message-IDs are derived from keys and a generation number, so a retry of the same
  generation carries the same id and can never create a duplicate: a server that already
  has it answers 441 "duplicate".
- A 240 is not proof (INN spools posts it cannot file; providers lose posts). An upload is
  done only when BODY returns exactly the body that was posted, after a propagation delay.
- A 441 "duplicate" for our own id counts as posted only once BODY confirms it.
- If a connection dies before the 240 arrives, the article may or may not have landed:
  the next attempt checks with STAT before posting again.
- Only when the current generation is verified missing (BODY 430 after every retry, or a
  body that differs) is the next generation posted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Callable

import trio

from . import errors as E
from .client import NNTPClient
from .connection import NNTPConnection

log = logging.getLogger(__name__)

# An article: bytes, or a sequence of bytes whose first item is the header block (ending
# with the blank line) and the rest the body in pieces, sent and compared without joining.
Article = bytes | Sequence[bytes]
# Builds the complete article for a generation: (message_id, article).
ArticleMaker = Callable[[int], tuple[str, Article]]


class ArticleLost(E.TemporaryError):
    """Every generation we tried was accepted or refused, yet none could be read back."""


@dataclass(frozen=True)
class VerifyOptions:
    delay: float = 0.5  # wait before the first BODY (propagation)
    tries: int = 5  # BODY attempts before an id counts as missing
    interval: float = 2.0  # base of the exponential wait between BODY attempts
    max_generations: int = 3  # ids tried before giving up on this article for now


@dataclass(frozen=True)
class PostResult:
    message_id: str  # the id the article can be fetched by
    generation: int
    reposts: int  # generations abandoned on the way
    already_there: bool  # it was found before we (re-)posted it


def article_body(article: Article) -> bytes | Sequence[bytes]:
    """The body part of a complete article (what BODY returns): bytes, or the body's
    pieces for an article given in pieces."""
    if not isinstance(article, (bytes, bytearray)):
        if not article or not bytes(article[0]).endswith(b"\r\n\r\n"):
            raise ValueError("an article needs headers, a blank line and a body")
        return tuple(article[1:])
    head_end = article.find(b"\r\n\r\n")
    if head_end < 0:
        raise ValueError("an article needs headers, a blank line and a body")
    return article[head_end + 4:]


def article_size(article: Article) -> int:
    return len(article) if isinstance(article, (bytes, bytearray)) else sum(map(len, article))


def same_body(body: bytes, expected: bytes | Sequence[bytes]) -> bool:
    """Is `body` exactly `expected` (bytes, or pieces laid end to end)? Pieces are
    compared in place (startswith at an offset is a memcmp), never joined."""
    if isinstance(expected, (bytes, bytearray)):
        return body == expected
    if len(body) != sum(map(len, expected)):
        return False
    offset = 0
    for piece in expected:
        if not body.startswith(piece, offset):
            return False
        offset += len(piece)
    return True


class ArticlePoster:
    def __init__(self, client: NNTPClient, options: VerifyOptions = VerifyOptions()):
        self.client = client
        self.options = options

    async def post_verified(self, make_article: ArticleMaker, *, generation: int = 0,
                            may_exist: bool = False, dot_free: bool = False) -> PostResult:
        """Post the article and return once BODY has read it back.

        `may_exist` is for resuming after a crash: the id is checked before posting, since
        an earlier run may have posted it already.
        """
        reposts = 0
        for gen in range(generation, generation + self.options.max_generations):
            message_id, article = make_article(gen)
            expected = article_body(article)
            found_first = may_exist and await self._has(message_id)
            if not found_first:
                try:
                    await self.post(message_id, article, dot_free=dot_free)
                except E.DuplicateArticle:
                    log.info("%s was already on the server; checking it by BODY", message_id)
            # A dot-free body reads back the same stuffed or not: skip the un-stuffing scan.
            if await self.verify(message_id, expected, stuffed=dot_free):
                return PostResult(message_id, gen, reposts, found_first)
            log.warning("%s did not appear on the server; posting it under a new id", message_id)
            reposts += 1
            may_exist = False
        raise ArticleLost(f"article not readable after {self.options.max_generations} ids")

    async def post(self, message_id: str, article: Article, *, dot_free: bool = False) -> None:
        """POST through the retry manager; after a connection died mid-post, look first."""
        maybe_landed = False

        async def attempt(conn: NNTPConnection) -> None:
            nonlocal maybe_landed
            if maybe_landed and await conn.stat(message_id):
                return  # the earlier attempt got through before its connection died
            try:
                accepted = await conn.post(article, dot_free=dot_free)
            except E.ConnectionBroken:
                maybe_landed = True
                raise
            if accepted is not None and accepted != message_id:
                # Some providers rewrite ids; our derived ids would then not find it.
                raise E.MessageIdRewritten(
                    f"the server stored {message_id} as {accepted}; this provider rewrites "
                    "Message-IDs, which usenetfs cannot use", 240, accepted)

        await self.client.run(attempt, what=f"POST {message_id}", kind="post",
                              nbytes=article_size(article), counts_as_article=True)

    async def _has(self, message_id: str) -> bool:
        return await self.client.stat(message_id)

    async def verify(self, message_id: str, expected_body: bytes | Sequence[bytes] | None = None, *,
                     stuffed: bool = False) -> bool:
        """True once BODY returns the article (equal to `expected_body` if given;
        `stuffed`: compare the body as it came, see NNTPConnection.body)."""
        body = await self.fetch_when_ready(message_id, stuffed=stuffed)
        if body is None:
            return False
        if expected_body is not None and not same_body(body, expected_body):
            log.warning("%s: the server returned a different body", message_id)
            return False
        return True

    async def fetch_when_ready(self, message_id: str, *, stuffed: bool = False) -> bytes | None:
        """BODY after the propagation delay, retried with backoff while it answers 430.

        None means missing after every try; network trouble raises instead, since it
        says nothing about the article.
        """
        options = self.options
        await trio.sleep(options.delay)
        for attempt in range(options.tries):
            try:
                return await self.client.body(message_id, stuffed=stuffed)
            except E.ArticleNotFound:
                if attempt + 1 < options.tries:
                    await trio.sleep(options.interval * (2 ** attempt))
        return None
