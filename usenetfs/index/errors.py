"""The index's domain errors: each carries the errno the FUSE layer should answer with.

Owns `IndexError_` (the base) and its subclasses. They are raised *before* a method writes
anything, so catching one inside `Index.batch()` leaves the batch usable. Programming
errors (bad arguments, breaking an invariant the caller owns) are plain `ValueError`s.
"""

from __future__ import annotations

import errno as _errno

from ..errors import UsenetfsError


class IndexError_(UsenetfsError):  # noqa: N801 - the builtin IndexError is a different thing
    """Base of the index's domain errors. `errno` is what the fs layer should reply."""

    errno = _errno.EIO


class NotFound(IndexError_):
    """No such inode, directory entry, segment, symlink target or scope."""

    errno = _errno.ENOENT


class NoSuchAttribute(NotFound):
    """No such extended attribute (ENODATA, a.k.a. ENOATTR)."""

    errno = _errno.ENODATA


class Exists(IndexError_):
    """The name is taken (link, rename without replace, make_node)."""

    errno = _errno.EEXIST


class NotEmpty(IndexError_):
    """A directory that must be empty (unlink, rename over it) has entries."""

    errno = _errno.ENOTEMPTY


class NotADirectory(IndexError_):
    """A parent is not a directory, or a directory would replace a non-directory."""

    errno = _errno.ENOTDIR


class IsADirectory(IndexError_):
    """A non-directory would replace a directory."""

    errno = _errno.EISDIR


class NotPermitted(IndexError_):
    """A hard link to a directory."""

    errno = _errno.EPERM


class InvalidMove(IndexError_):
    """A directory would be moved into its own subtree."""

    errno = _errno.EINVAL


class FormatError(UsenetfsError):
    """The file is not a usenetfs index, or has a format this version cannot read."""


class BatchAborted(UsenetfsError):
    """An operation failed half-way inside `Index.batch()`: the whole batch was rolled back."""
