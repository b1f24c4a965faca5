"""The index, backed up to Usenet incrementally, and a volume rebuilt from it on a new machine.

Three kinds of article, all ordinary-looking, encrypted and under derived Message-IDs
(docs/foundation.md, "Index backups"):

- **chunks** (`KIND_INDEX_CHUNK`): a page-for-page snapshot of the index cut into 256 KiB
  pieces, each named by a keyed hash of its bytes, so a chunk that did not change since
  the last backup is already on the server and is not posted again;
- **a manifest** per backup (`KIND_INDEX`, `MANIFEST_BASE | seq`): the snapshot's size and
  its chunk list (itself stored in chunks), posted last, once every chunk is read back;
- **the bootstrap** (`KIND_INDEX`, `BOOTSTRAP_NUMBER`, under passphrase-derived keys):
  the wrapped key envelope and the settings, so a new machine needs only the volume id
  and the passphrase.

Modules: chunks.py (cutting and hashing), record.py (which chunks the server has),
manifest.py, articles.py (one article, posted or fetched), bootstrap.py, post.py (a
backup, step by step), restore.py, bounded.py (a few chunks at a time).
"""

from .bootstrap import bootstrap_keys, bootstrap_secret, fetch_bootstrap, post_bootstrap
from .post import BackupRun, BackupStats, backup, post_backup
from .restore import newest_backup, restore

__all__ = [
    "BackupRun",
    "BackupStats",
    "backup",
    "bootstrap_keys",
    "bootstrap_secret",
    "fetch_bootstrap",
    "newest_backup",
    "post_backup",
    "post_bootstrap",
    "restore",
]
