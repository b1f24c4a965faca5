"""Segment stores: segment payloads <-> durable, verified, encrypted articles.

    base.py   the `SegmentStore` contract, `PutResult`, `SegmentUnavailable`, per-segment keys
    nntp.py   `NNTPSegmentStore`: articles on a Usenet server (post_verified, BODY)
    local.py  `LocalSegmentStore`: the same encoded bodies as files in a directory

Called by `data/` only. A store never touches the index: the caller commits the segment
row (pending) before `put` and records the returned generation/size/crc afterwards.
"""

from .base import (
    DEFAULT_PAD,
    PutResult,
    SegmentStore,
    SegmentUnavailable,
    make_codec,
    segment_key,
)
from .local import LocalSegmentStore
from .nntp import NNTPSegmentStore

__all__ = [
    "DEFAULT_PAD",
    "LocalSegmentStore",
    "NNTPSegmentStore",
    "PutResult",
    "SegmentStore",
    "SegmentUnavailable",
    "make_codec",
    "segment_key",
]
