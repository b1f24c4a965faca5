"""The FUSE face of a volume: pyfuse3 operations over an inode/handle model.

    operations.py    `Operations(pyfuse3.Operations)`: handlers, attribute conversion,
                     statfs, the single FUSEError boundary
    model.py         `FsModel`: lookup counts, open handles, attribute cache, size/time
                     bookkeeping, unlinked-inode lifetime, ownership rules, xattr namespace
    refs.py          `KernelRefs`: the lookup counts of every inode the kernel holds, in
                     16 bytes each (millions of them after a `find`)
    mount_options.py `fuse_options()`: the option set for pyfuse3.init

Calls go one way (docs/filesystem-contracts.md): fs -> model -> Index / FileData.
Nothing here runs SQL or talks to the network.
"""

from .model import Caller, FsError, FsModel
from .mount_options import fuse_options
from .operations import Operations

__all__ = ["Caller", "FsError", "FsModel", "Operations", "fuse_options"]
