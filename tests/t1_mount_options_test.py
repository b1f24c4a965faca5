"""Level 1: the -o parser shared by `usenetfs mount` and `mount.usenetfs` (pure: no mounts)."""

import os

import pytest

from usenetfs.cli.mount_options import parse_mount_options, split_options
from usenetfs.errors import UserError


def test_each_kind_of_option_lands_where_it_belongs():
    options = parse_mount_options(
        "ro,allow_other,uid=1000,gid=100,umask=027,nosuid,noatime,max_read=131072,default_permissions,"
        "_netdev,nofail,noauto,auto,user,user=alice,users,defaults,comment=hello,x-systemd.automount,"
        "x-systemd.idle-timeout=600,x-gvfs-show,home=/srv/uf,passphrase_file=/etc/uf.pass,foreground")
    assert options.request_fields() == {
        "read_only": True, "allow_other": True, "uid": 1000, "gid": 100, "umask": 0o027,
        "fuse_extra": ["nosuid", "noatime", "max_read=131072", "default_permissions"], "disk_cache_bytes": None}
    assert (options.home, options.passphrase_file, options.foreground) == ("/srv/uf", "/etc/uf.pass", True)
    assert options.ignored == ["_netdev", "nofail", "noauto", "auto", "user", "user=alice", "users", "defaults",
                               "comment=hello", "x-systemd.automount", "x-systemd.idle-timeout=600",
                               "x-gvfs-show"]


@pytest.mark.parametrize("text, size", [("10G", 10 << 30), ("512M", 512 << 20), ("64KiB", 64 << 10),
                                        ("1.5g", 3 << 29), ("4096", 4096), ("0", 0)])
def test_disk_cache_takes_a_size(text, size):
    assert parse_mount_options(f"disk_cache={text}").request_fields()["disk_cache_bytes"] == size


def test_later_options_win_and_names_resolve():
    options = parse_mount_options("ro,rw,uid=root,gid=root,max_read=4096,max_read=8192")
    assert not options.read_only
    assert (options.uid, options.gid) == (0, 0)
    assert options.fuse_extra == ["max_read=8192"]


@pytest.mark.parametrize("text, message", [
    ("frobnicate", "unknown mount option 'frobnicate'"),
    ("uid=abc", "invalid mount option 'uid=abc': no user named 'abc'"),
    ("umask=999", "invalid mount option 'umask=999': umask takes an octal number up to 777"),
    ("ro=1", "invalid mount option 'ro=1': ro takes no value"),
    ("home", "invalid mount option 'home': home takes a value"),
    ("max_read=lots", "invalid mount option 'max_read=lots': max_read takes a number"),
    ("passphrase=hunter2", "mount option 'passphrase' refused: secrets must not be mount options "
     "(ps, logs and fstab show them); put it in a file and give passphrase_file=FILE"),
    ("password=x", "server passwords are kept with the volume"),
    ('comment="a,b', "unbalanced double quote"),
    ("disk_cache=lots", "invalid mount option 'disk_cache=lots': give a size such as 10G, 512M or 0"),
    ("disk_cache=-1G", "give a size such as 10G"),
    ("disk_cache", "invalid mount option 'disk_cache': disk_cache takes a value"),
])
def test_bad_options_are_one_line_errors(text, message):
    with pytest.raises(UserError) as raised:
        parse_mount_options(text)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_sloppy_ignores_unknown_options_but_not_malformed_ones_or_secrets():
    options = parse_mount_options("frobnicate,relatime=3,ro", sloppy=True)
    assert options.read_only and options.ignored == ["frobnicate (unknown)", "relatime=3 (unknown)"]
    for text in ("uid=abc", "passphrase=x", "ro=1"):
        with pytest.raises(UserError):
            parse_mount_options(text, sloppy=True)


def test_quoted_values_keep_their_commas():
    assert split_options('ro,comment="a,b",,uid=1') == ["ro", "comment=a,b", "uid=1"]


def test_config_file_comes_first_and_options_override_it(tmp_path):
    config = tmp_path / "vol.conf"
    config.write_text("# for the media volume\nhome=/srv/usenetfs\n\nallow_other\nuid=1000  # the user\nro\n")
    options = parse_mount_options(f"config={config},rw,uid=2000")
    assert options.config == str(config)
    assert (options.home, options.allow_other, options.uid, options.read_only) == ("/srv/usenetfs", True, 2000, False)


@pytest.mark.parametrize("content, message", [
    ("home=relative/dir\n", "the path must be absolute"),
    ("config=/etc/other.conf\n", "a config file cannot name another"),
    ("passphrase=x\n", "refused"),
    ("frobnicate\n", "unknown mount option 'frobnicate'"),
])
def test_config_file_errors(tmp_path, content, message):
    config = tmp_path / "vol.conf"
    config.write_text(content)
    with pytest.raises(UserError) as raised:
        parse_mount_options(f"config={config}")
    assert message in str(raised.value)


def test_missing_config_file_and_relative_paths_on_the_command_line(tmp_path):
    with pytest.raises(UserError, match="cannot read the config file"):
        parse_mount_options(f"config={tmp_path}/missing.conf")
    options = parse_mount_options("home=here,passphrase_file=pass")
    assert options.home == os.path.abspath("here") and options.passphrase_file == os.path.abspath("pass")
