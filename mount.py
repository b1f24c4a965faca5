#!/usr/bin/env python3
"""mount.usenetfs from a checkout: `python mount.py VOLUME DIR [-sfnv] [-o OPTIONS]`.

The thin entry point; the helper is usenetfs/cli/mount_helper.py. mount(8) runs the copy that
`usenetfs install-mount-helper` writes to /sbin/mount.usenetfs, which names its Python by
absolute path. Run this file with a Python that has usenetfs's dependencies (.venv/bin/python).
"""

import os
import sys

# The checkout's package, even under `python -I` (which leaves the script's directory off
# sys.path) or when this file is run from another directory through a symlink.
sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

from usenetfs.cli.mount_helper import main  # noqa: E402 - needs the path above

if __name__ == "__main__":
    sys.exit(main())
