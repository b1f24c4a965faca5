"""The errors the article codec raises when a body cannot be turned back into a payload.

Decoding never returns wrong bytes: every failure is one of these, and the class says what
kind of failure it is, so callers can choose the reaction (try another server, re-post,
report a wrong key, raise an alarm about forgery):

- `NotOurArticle`    not yEnc, not parseable, or a structure we never produce.
- `TruncatedArticle` the body is cut short, or yEnc header/trailer/decoded sizes disagree.
- `CorruptArticle`   the yEnc CRC32 does not match, or the trailer carries no pcrc32.
- `WrongKey`         the per-article key check fails: encrypted under some other key.
- `TamperedArticle`  the key check passes but the AEAD tag does not: the article was
                     modified, or posted under another identity (swapped / replayed).
"""

from ..errors import UsenetfsError


class CodecError(UsenetfsError):
    """Base class: the article body could not be decoded into a payload."""


class NotOurArticle(CodecError):
    """Not yEnc, not parseable, or a structure our encoder never produces."""


class TruncatedArticle(CodecError):
    """Body cut short, or the yEnc header, trailer and decoded sizes disagree."""


class CorruptArticle(CodecError):
    """yEnc CRC32 mismatch, or no pcrc32 in the trailer."""


class WrongKey(CodecError):
    """The article was encrypted under a different key (or cipher)."""


class TamperedArticle(CodecError):
    """Right key, but authentication failed: modified, swapped or replayed article."""


__all__ = [
    "CodecError",
    "NotOurArticle",
    "TruncatedArticle",
    "CorruptArticle",
    "WrongKey",
    "TamperedArticle",
]
