"""`mount.usenetfs`, the helper mount(8) runs for type `usenetfs`, and `usenetfs install-mount-helper`.

mount(8) calls `/sbin/mount.usenetfs SPEC DIR [-sfnv] [-N NS] [-o OPTS] [-t TYPE]` (protocol.md
§4.1), in any order, with the environment it was given: systemd gives none (no PATH, no HOME).
SPEC is a volume name; the -o options are parsed by `mount_options` (the same parser as
`usenetfs mount -o`), and the mount itself is `volume_cmd.mount_volume`, which returns only once
the mount answers. Every failure is one line on stderr and exit 32; bad usage exits 1.

The flags follow mount(8): -s sloppy (ignore unknown options), -f fake (check the options and
the volume, mount nothing), -n no mtab (nothing to do), -v verbose. Foreground, for a systemd
service, is the option `foreground` (-f already means fake): the helper then serves the mount
itself and sends READY=1 to $NOTIFY_SOCKET once the mount answers.

`install-mount-helper` writes a small Python script to /sbin/mount.usenetfs whose first line
names, by absolute path, the interpreter usenetfs is installed in (normally a virtual
environment), so mount(8) finds it and it finds usenetfs without PATH.
"""

from __future__ import annotations

import getopt
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..errors import UserError, user_error_behind
from ..home import Home
from ..volume import Volume
from .mount_options import parse_mount_options, split_options
from .volume_cmd import EXIT_MOUNT_FAILED, mount_volume

PROG = "mount.usenetfs"
EXIT_USAGE = 1  # mount(8): "incorrect invocation or permissions"; 32 (EXIT_MOUNT_FAILED) is "mount failure"
DEFAULT_TARGET = "/sbin/mount.usenetfs"
# systemd's default PATH for services, for the programs the mount starts (the local INN server).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MARKER = "# mount.usenetfs: installed by 'usenetfs install-mount-helper'"

USAGE = f"""\
usage: {PROG} VOLUME DIR [-sfnv] [-o OPTIONS]
       {PROG} CAPFILE DIR [-sfnv] [-o OPTIONS]

Mount the usenetfs volume VOLUME at DIR; mount(8) runs this for 'mount -t usenetfs
VOLUME DIR' and for fstab lines of type usenetfs. Returns once the mount answers and
the server accepted the login; otherwise prints one line and exits 32. A path with a
slash (CAPFILE) is a share's capability file: the share is mounted read-only.

flags:
  -s                    sloppy: ignore unknown mount options
  -f                    fake: check the options and the volume, mount nothing
  -n                    no mtab (accepted; there is none to write)
  -v                    verbose
  -h, --help            show this help

options (-o, comma-separated):
  home=DIR              the usenetfs home holding the volume (default: $USENETFS_HOME,
                        else the XDG directories, else /var/lib/usenetfs for root)
  passphrase_file=FILE  read the passphrase from FILE (default: $USENETFS_PASSPHRASE_FILE,
                        else a prompt on the terminal)
  config=FILE           more options from FILE, one per line ('#' comments)
  foreground            serve in the foreground; READY=1 to $NOTIFY_SOCKET once mounted
  disk_cache=SIZE       keep up to SIZE (10G, 512M) of read segments on local disk, so files
                        read again do not come from the server (0: off, the default)
  identity=FILE         a share: your identity file (a share granted to you)
  share_password_file=FILE  a share: its password
  server=URL, server_password_file=FILE
                        a share: read it from this server, not the capability's
  poll=SECONDS          a share: look for a newer publish this often
  ro, rw                read-only or read-write
  uid=ID, gid=ID        owner of every file (a number or a name)
  umask=NNN             permission bits to clear on every file (octal)
  allow_other, allow_root, default_permissions, nosuid, suid, nodev, dev, noexec, exec,
  noatime, atime, sync, async, dirsync, max_read=N, auto_unmount
                        passed to FUSE
  _netdev, nofail, auto, noauto, user, users, nouser, owner, defaults, comment=..., x-*
                        for mount(8) and systemd: ignored

Secrets are never accepted as options: give passphrase_file=FILE.
Exit status: 0 mounted, 1 bad usage, 32 mount failed.
"""


class UsageError(Exception):
    """The command line itself is wrong (exit 1)."""


@dataclass
class Invocation:
    spec: str = ""
    directory: str = ""
    options: list[str] = field(default_factory=list)  # each -o argument
    sloppy: bool = False
    fake: bool = False
    verbose: bool = False
    help: bool = False
    version: bool = False


def parse_argv(argv: list[str]) -> Invocation:
    """mount(8)'s helper convention, flags and operands in any order."""
    call = Invocation()
    try:
        flags, operands = getopt.gnu_getopt(argv, "sfnvho:t:N:", ["help", "version"])
    except getopt.GetoptError as error:
        raise UsageError(str(error)) from None
    for flag, value in flags:
        if flag == "-s":
            call.sloppy = True
        elif flag == "-f":
            call.fake = True
        elif flag == "-v":
            call.verbose = True
        elif flag in ("-h", "--help"):
            call.help = True
        elif flag == "--version":
            call.version = True
        elif flag == "-o":
            call.options.append(value)
        elif flag == "-N":
            raise UsageError("mount namespaces (-N) are not supported")
        # -n (no mtab) and -t TYPE (we are the helper of that type) need nothing.
    if call.help or call.version:
        return call
    if len(operands) != 2:
        raise UsageError(f"expected VOLUME and DIR, got {len(operands)} operands")
    call.spec, call.directory = operands
    return call


def volume_name(spec: str) -> str:
    """The volume a SPEC names. (A SPEC with a slash is a capability file: `_run` mounts the
    share it names instead.)"""
    if "/" in spec:
        raise UserError(f"{spec}: a path is a share's capability file, not a volume name")
    return spec


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PATH", DEFAULT_PATH)
    try:
        call = parse_argv(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        print(f"{PROG}: {error} (usage: {PROG} VOLUME DIR [-sfnv] [-o OPTIONS])", file=sys.stderr)
        return EXIT_USAGE
    if call.help:
        sys.stdout.write(USAGE)
        return 0
    if call.version:
        print(f"{PROG} (usenetfs {__version__})")
        return 0
    try:
        return _run(call)
    except BaseException as raised:  # noqa: BLE001 - sorted below; bugs are re-raised
        error = user_error_behind(raised)
        if isinstance(error, KeyboardInterrupt):
            print(f"{PROG}: interrupted", file=sys.stderr)
            return EXIT_MOUNT_FAILED
        if error is None:
            raise
        print(f"{PROG}: {error}", file=sys.stderr)
        return EXIT_MOUNT_FAILED


def _run(call: Invocation) -> int:
    options = parse_mount_options(",".join(call.options), sloppy=call.sloppy)
    home = Home.resolve(options.home)
    if "/" in call.spec:
        return _run_share(call, options, home)
    name = volume_name(call.spec)
    volume = Volume(home, name)
    if not volume.exists():  # say where we looked: without HOME that is not obvious
        raise UserError(f"no volume named {name!r} in {home.config_dir} "
                        "(give home=DIR, or create it with 'usenetfs init')")
    level = logging.INFO if call.verbose or options.foreground else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if call.verbose:
        dropped = {item.removesuffix(" (unknown)") for item in options.ignored}
        used = [opt for opt in split_options(",".join(call.options)) if opt not in dropped]
        print(f"{PROG}: {'checking' if call.fake else 'mounting'} volume {name!r} of "
              f"{home.config_dir} at {call.directory} (options: {','.join(used) or 'none'}; "
              f"ignored: {','.join(options.ignored) or 'none'})", file=sys.stderr)
    if call.fake:
        if not os.path.isdir(call.directory):
            raise UserError(f"mountpoint {call.directory} is not a directory")
        return 0
    # The source in /proc/mounts is SPEC itself, so `mount -a` sees the line as mounted.
    return mount_volume(home, name, call.directory, options, fsname=call.spec)


def _run_share(call: Invocation, options, home: Home) -> int:
    """SPEC is a capability file: mount the share it names, read-only."""
    from .share_cmd import mount_capability
    if options.passphrase_file:
        raise UserError("a share takes share_password_file= or identity=, not a passphrase")
    level = logging.INFO if call.verbose or options.foreground else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if call.verbose:
        print(f"{PROG}: {'checking' if call.fake else 'mounting'} the share of capability file {call.spec} "
              f"at {call.directory} (home {home.config_dir})", file=sys.stderr)
    if call.fake:
        if not os.path.isdir(call.directory):
            raise UserError(f"mountpoint {call.directory} is not a directory")
        from ..share.capability import read_capability
        read_capability(call.spec)
        return 0
    return mount_capability(home, call.spec, call.directory, options, fsname=call.spec, **options.share_fields())


# --------------------------------------------------------------- installing it

def register(commands) -> None:
    install = commands.add_parser(
        "install-mount-helper", help="install mount.usenetfs where mount(8) finds it (as root)",
        description="Install /sbin/mount.usenetfs, so 'mount -t usenetfs VOLUME DIR' and fstab "
        "lines of type usenetfs work. It runs this Python, found by absolute path. Safe to repeat.")
    install.add_argument("--target", default=DEFAULT_TARGET, metavar="PATH",
                         help=f"where to install it (default {DEFAULT_TARGET})")
    install.add_argument("--force", action="store_true",
                         help="replace a file there that usenetfs did not install")
    install.set_defaults(handler=_install)


def helper_script(python: str) -> str:
    # -I: a root helper ignores PYTHON* variables and the user's site-packages.
    return (f"#!{python} -I\n"
            f"{MARKER}\n"
            "# mount(8) runs it for 'mount -t usenetfs' and fstab lines of type usenetfs. The\n"
            "# interpreter above has usenetfs installed, so no PATH is needed (systemd gives none).\n"
            "import sys\n"
            "from usenetfs.cli.mount_helper import main\n"
            "sys.exit(main())\n")


def install(target: Path, *, force: bool = False, python: str = sys.executable) -> str:
    """Install (or update) the helper at `target`; returns what was done, in words."""
    if not python or not os.path.isabs(python) or any(c.isspace() for c in python) or len(python) > 200:
        raise UserError(f"cannot name this Python ({python!r}) in a script's first line")
    # Import it as mount(8) will: isolated, from /, so a package found only through the
    # current directory or PYTHONPATH is caught here rather than at boot.
    check = subprocess.run([python, "-I", "-c", "import usenetfs.cli.mount_helper"], cwd="/",
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise UserError(f"usenetfs is not installed for {python}: install it there first (pip install .)")
    script = helper_script(python)
    try:
        current = target.read_text()
    except FileNotFoundError:
        current = None
    except (OSError, UnicodeDecodeError):
        current = ""  # unreadable or binary: not ours
    if current == script:
        return f"mount helper already installed: {target} (runs {python})"
    if current is not None and MARKER not in current and not force:
        raise UserError(f"{target} exists and was not installed by usenetfs: remove it or give --force")
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755)
        with os.fdopen(fd, "w") as out:
            out.write(script)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o755)  # whatever the umask
        os.replace(temporary, target)
    except OSError as exc:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise UserError(f"cannot install {target}: {exc.strerror} (run as root, or give --target)") from None
    return f"mount helper {'updated' if current is not None else 'installed'}: {target} (runs {python})"


def _install(args) -> int:
    print(install(Path(args.target), force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
