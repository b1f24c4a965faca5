"""usenetfs: a FUSE filesystem that keeps file data on Usenet, encrypted, compressed and verified.

Layers (calls go one way, top to bottom):
    fs (pyfuse3 operations) -> inode/handle model -> caches -> pack/codec -> store -> nntp pool -> protocol
The index (SQLAlchemy Core) sits beside them.
"""

__version__ = "0.1.0"
