"""Where usenetfs keeps its state: one home directory, or the XDG directories.

`--home DIR` (or USENETFS_HOME) puts everything under DIR, so tests and several users
or volumes stay apart. Otherwise config, data and cache follow the XDG base directory
spec. Mount helpers run without HOME (systemd); root then uses /var/lib/usenetfs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Home:
    config_dir: Path  # volume configuration and wrapped keys
    data_dir: Path  # the index, the write-back staging area, the local INN server
    cache_dir: Path  # segment cache: may be deleted at any time

    @classmethod
    def resolve(cls, home: str | os.PathLike | None = None) -> "Home":
        home = home or os.environ.get("USENETFS_HOME")
        if home:
            base = Path(home).expanduser().absolute()
            return cls(base / "config", base / "data", base / "cache")
        user_home = os.environ.get("HOME")
        if not user_home:
            base = Path("/var/lib/usenetfs") if os.geteuid() == 0 else Path.cwd() / ".usenetfs"
            return cls(base / "config", base / "data", base / "cache")

        def xdg(variable: str, default: str) -> Path:
            value = os.environ.get(variable)
            return Path(value) / "usenetfs" if value else Path(user_home) / default / "usenetfs"

        return cls(xdg("XDG_CONFIG_HOME", ".config"), xdg("XDG_DATA_HOME", ".local/share"),
                   xdg("XDG_CACHE_HOME", ".cache"))

    def ensure(self) -> "Home":
        for path in (self.config_dir, self.data_dir, self.cache_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self

    @property
    def local_server_dir(self) -> Path:
        return self.data_dir / "local-inn"
