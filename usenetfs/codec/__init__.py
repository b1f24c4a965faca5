"""The article codec: payload <-> encrypted, yEnc-framed article body, and the article
headers around it. Pure and synchronous; see segment.py, yenc.py, article.py, errors.py."""

from .article import article_head, build_article, random_poster, random_subject
from .errors import (
    CodecError,
    CorruptArticle,
    NotOurArticle,
    TamperedArticle,
    TruncatedArticle,
    WrongKey,
)
from .segment import (
    KIND_DATA,
    KIND_INDEX,
    KIND_INDEX_CHUNK,
    EncodedSegment,
    SegmentCodec,
    SegmentId,
    tune_malloc,
)

__all__ = [
    "article_head",
    "build_article",
    "random_poster",
    "random_subject",
    "CodecError",
    "CorruptArticle",
    "NotOurArticle",
    "TamperedArticle",
    "TruncatedArticle",
    "WrongKey",
    "KIND_DATA",
    "KIND_INDEX",
    "KIND_INDEX_CHUNK",
    "EncodedSegment",
    "SegmentCodec",
    "SegmentId",
    "tune_malloc",
]
