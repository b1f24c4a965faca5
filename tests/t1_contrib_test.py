"""Level 1: the examples in contrib/ are valid as shipped: the fstab lines and the config
file parse with the options parser the mount helper uses, and the systemd units pass
`systemd-analyze verify` without a warning (an unknown key or section is only a warning to
systemd, and the unit would then run without it)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from usenetfs.cli.mount_options import parse_mount_options, read_config_file

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
CONFIG_EXAMPLE = CONTRIB / "usenetfs-media.conf.example"
# The path every example names for the config file; the tests read the shipped example there.
CONFIG_PATH = "/etc/usenetfs/media.conf"


def fstab_lines() -> list[list[str]]:
    """Every fstab line of the example, the commented-out ones too (a user uncomments them)."""
    lines = []
    for line in (CONTRIB / "fstab.example").read_text().splitlines():
        fields = line.lstrip("#").split()
        if len(fields) == 6 and fields[2] == "usenetfs":
            lines.append(fields)
    return lines


def test_the_config_example_parses():
    options = parse_mount_options(f"config={CONFIG_EXAMPLE}")
    assert options.home == "/var/lib/usenetfs"
    assert options.passphrase_file == "/etc/usenetfs/media.passphrase"
    assert options.request_fields()["allow_other"] is True
    assert (options.uid, options.gid, options.umask) == (1000, 1000, 0o022)
    assert read_config_file(str(CONFIG_EXAMPLE))  # nothing but options and comments


def test_every_fstab_example_parses():
    lines = fstab_lines()
    assert len(lines) == 2, lines  # the automounted one and the one mounted at boot
    for volume, mountpoint, _type, options, dump, passno in lines:
        assert mountpoint.startswith("/") and (dump, passno) == ("0", "0"), volume
        parsed = parse_mount_options(options.replace(CONFIG_PATH, str(CONFIG_EXAMPLE)))
        # mount(8)'s and systemd's own options are accepted and left to them
        assert "_netdev" in parsed.ignored and "nofail" in parsed.ignored, volume


def test_the_mount_unit_options_parse():
    unit = (CONTRIB / "systemd" / "mnt-media.mount").read_text()
    (options,) = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("Options=")]
    parsed = parse_mount_options(options.replace(CONFIG_PATH, str(CONFIG_EXAMPLE)))
    assert parsed.config == str(CONFIG_EXAMPLE) and parsed.home == "/var/lib/usenetfs"


def systemd_verify(directory: Path, *units: str) -> subprocess.CompletedProcess:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (scripts/setup.sh installs systemd)"
    return subprocess.run([analyze, "verify", "--man=no", *units], cwd=directory,
                          capture_output=True, text=True, timeout=60)


def copy_units(tmp_path: Path) -> Path:
    """The units, with the commands they run pointed at this checkout's: verify checks that
    each command exists, and /sbin/mount.usenetfs and usenetfs on PATH are the installer's."""
    bin_dir = Path(sys.executable).parent
    units = tmp_path / "units"
    units.mkdir()
    for unit in (CONTRIB / "systemd").iterdir():
        text = unit.read_text()
        text = text.replace("ExecStart=/sbin/mount.usenetfs ", f"ExecStart={bin_dir / 'mount.usenetfs'} ")
        text = text.replace("ExecStop=usenetfs ", f"ExecStop={bin_dir / 'usenetfs'} ")
        (units / unit.name).write_text(text)
    return units


UNITS = ("usenetfs@.service", "mnt-media.mount", "mnt-media.automount")


def test_the_systemd_units_verify_cleanly(tmp_path):
    units = copy_units(tmp_path)
    assert sorted(p.name for p in units.iterdir()) == sorted(UNITS)
    result = systemd_verify(units, *(f"./{name}" for name in UNITS))
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr)


@pytest.mark.parametrize("unit, line, mistake", [
    ("usenetfs@.service", "TimeoutStopSec=30min", "TimeoutStopSecs=30min"),
    ("mnt-media.automount", "[Automount]", "[AutoMount]"),
])
def test_the_verify_check_sees_a_mistake(tmp_path, unit, line, mistake):
    """The check above can fail: systemd reports an unknown key or section, exit 0 or not."""
    units = copy_units(tmp_path)
    path = units / unit
    assert line in path.read_text()
    path.write_text(path.read_text().replace(line, mistake))
    result = systemd_verify(units, f"./{unit}")
    assert result.stdout.strip() or result.stderr.strip()
