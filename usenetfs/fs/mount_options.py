"""The libfuse mount options of a usenetfs mount (the set handed to `pyfuse3.init`).

Owns `fuse_options()` and the list of options never to pass. pyfuse3 3.5 with libfuse
3.14 rejects `max_write`, `max_readahead`, `big_writes`, `splice_*`, `async_read`,
`max_background` and `clone_fd`, and a rejected option can leave a dead mount behind
(docs: /work/shared/docs/baselines.md, FUSE section), so they raise ValueError here,
before anything is mounted. The writeback cache is not an option: it is
`Operations.enable_writeback_cache`.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyfuse3

# Refused by pyfuse3 3.5 / libfuse 3.14 as -o options.
REJECTED = frozenset({"max_write", "max_readahead", "big_writes", "async_read", "max_background", "clone_fd"})
REJECTED_PREFIXES = ("splice_",)
# Generic mount(8)/fstab options meaning nothing to libfuse: dropped, not passed on.
GENERIC = frozenset({"rw", "defaults", "auto", "noauto", "user", "users", "nouser", "_netdev", "nofail", "owner"})
# Set by fuse_options itself.
OWN = frozenset({"fsname", "subtype"})


def _escape(value: str) -> str:
    # libfuse splits -o arguments at commas; a backslash escapes the next character.
    return value.replace("\\", "\\\\").replace(",", "\\,")


def fuse_options(fsname: str, *, allow_other: bool = False, ro: bool = False, extra: Iterable[str] = ()) -> set[str]:
    """The option set for pyfuse3.init: fsname, subtype=usenetfs, default_permissions (the
    kernel checks permissions; we only enforce ownership for chown/chmod), plus `allow_other`,
    `ro` and `extra` (each "name" or "name=value"). ValueError for an option known to be
    rejected, one fuse_options owns, or a non-ASCII value (pyfuse3 encodes us-ascii)."""
    if not fsname:
        raise ValueError("fsname must not be empty")
    opts = set(pyfuse3.default_options)  # {'default_permissions'} in 3.5
    opts |= {f"fsname={_escape(fsname)}", "subtype=usenetfs", "default_permissions"}
    if allow_other:
        opts.add("allow_other")
    if ro:
        opts.add("ro")
    for opt in extra:
        key = opt.split("=", 1)[0]
        if key in GENERIC or key.startswith("x-"):
            continue
        if key in REJECTED or key.startswith(REJECTED_PREFIXES):
            raise ValueError(f"mount option {key!r} is rejected by pyfuse3 3.5 / libfuse 3.14")
        if key in OWN:
            raise ValueError(f"mount option {key!r} is set by usenetfs itself")
        opts.add(opt)
    for opt in opts:
        if not opt.isascii():
            raise ValueError(f"mount option {opt!r} is not ASCII")
    return opts
