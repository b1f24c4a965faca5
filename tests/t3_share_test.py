"""Level 3: shares through the data and index APIs against a real INN: a volume's files
written through FileData and posted, a folder published (publish.py), subscribed from a
second home with nothing but the capability (subscribe.py: keyring, root, tree into a
mirror index), and read back through FileData over the mirror and a KeyedSegmentStore.
Damage is done as a server or an insider would: article files in INN's spool edited, and
authentic-looking articles posted under the share's ids with the wrong signature or bytes.
The command line and real mounts are in t4_share_cli_test and t5_share_test."""

from __future__ import annotations

import hashlib
import os
import stat
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from usenetfs.backup import articles as backup_articles
from usenetfs.backup.chunks import chunk_ident
from usenetfs.backup.manifest import manifest_ident
from usenetfs.codec.segment import SegmentCodec
from usenetfs.data import FileData
from usenetfs.errors import UserError
from usenetfs.home import Home
from usenetfs.index import ROOT_INODE, Index
from usenetfs.index.mirror import Mirror
from usenetfs.nntp.client import NNTPClient, PoolOptions
from usenetfs.nntp.config import ServerConfig
from usenetfs.nntp.posting import ArticlePoster, VerifyOptions
from usenetfs.nntp.retry import scaled_policies
from usenetfs.session import segment_store
from usenetfs.share.capability import make_hint
from usenetfs.share.documents import Keyring, Root
from usenetfs.share.mount import subscribe
from usenetfs.share.publish import publish
from usenetfs.share.state import ShareFiles
from usenetfs.share.subscribe import Access, Applier, Subscription, open_share
from usenetfs.store.base import segment_key
from usenetfs.store.keyed import KeyedSegmentStore
from usenetfs.volume import Volume

from t2_backup_test import corrupt_body, spool_file
from t3_filedata_test import FAST, SEG, mounted

GROUP = "alt.binaries.test"
PASSPHRASE = "correct horse battery staple"
SECRET_TEXT = b"the launch code is 0000-swordfish-1138\n"


def client_for(server) -> NNTPClient:
    return NNTPClient(ServerConfig(server.host, server.port), PoolOptions(max_connections=8),
                      policies=scaled_policies(0.01))


class Owner:
    """A volume in its own home; its files written and posted through FileData (as a mount
    does), its folders published."""

    def __init__(self, root: Path, server):
        self.server = server
        self.home = Home(root / "config", root / "data", root / "cache")
        self.volume = Volume.create(self.home, "vol", servers=[server.url], group=GROUP, passphrase=PASSPHRASE,
                                    log_n=10)
        self.settings = self.volume.load()
        self.keys = self.volume.unlock(PASSPHRASE)
        self.index = Index.create(self.volume.index_file, scope_id=bytes.fromhex(self.settings.volume_id))
        self.shares: dict[str, ShareFiles] = {}

    @asynccontextmanager
    async def running(self):
        async with client_for(self.server) as client:
            store = segment_store(client, self.keys, self.settings)
            async with mounted(self.index, store, self.volume.data_dir / "staging-cache") as fs:
                self.client, self.fs = client, fs
                yield fs

    def share(self, name: str, path: str, mode: str = "open", **kw) -> ShareFiles:
        files = ShareFiles(self.volume, name)
        files.create(path, mode, expires=kw.get("expires"), hint=make_hint(self.server.url, GROUP))
        self.shares[name] = files
        return files

    async def publish(self, name: str, **options):
        await self.fs.data.flush_all()
        files = self.shares[name]
        return await publish(files, files.load(), self.index, self.keys, self.settings, self.client,
                             is_dirty=lambda ino: self.fs.data.dirty_size(ino) is not None, **options)


class Reader:
    """A second machine: an empty home, the capability, the server."""

    def __init__(self, root: Path, server, cap):
        self.home = Home(root / "config", root / "data", root / "cache")
        self.server = server
        self.cap = cap
        self.sub = Subscription(self.home, cap.share_id)
        self.sub.ensure()

    async def subscribe(self, access: Access = Access()):
        config = ServerConfig(self.server.host, self.server.port)
        return await subscribe(self.sub, self.cap, access, config)

    @asynccontextmanager
    async def files(self):
        mirror = Mirror.open(self.sub.mirror_file)
        data_params = mirror.state()["data"]
        try:
            async with client_for(self.server) as client:
                store = KeyedSegmentStore(client, mirror.segment_secret, domain=data_params["domain"],
                                          cipher=data_params["cipher"], pad=data_params["pad"])
                data = FileData(mirror.ix, store, self.sub.data_dir / "reads", **FAST)
                yield mirror, data
                data.close()
            assert mirror.ix.fsck() == []
        finally:
            mirror.close()


async def tree_of(index: Index, data: FileData, top: int) -> dict:
    """Every path under `top`: type, mode, size, mtime, xattrs, and content or target."""
    out = {}

    async def walk(ino: int, prefix: str) -> None:
        for _, name, row in index.readdir(ino, 0, 100_000):
            path = prefix + name.decode()
            xattrs = {n: index.get_xattr(row.id, n) for n in index.list_xattrs(row.id)}
            if row.is_dir:
                out[path] = ("dir", stat.S_IMODE(row.mode), row.mtime_ns, xattrs)
                await walk(row.id, path + "/")
            elif row.is_symlink:
                out[path] = ("link", index.get_symlink(row.id))
            else:
                content = await data.read(row.id, 0, row.size, row.size)
                out[path] = ("file", stat.S_IMODE(row.mode), row.size, row.mtime_ns, xattrs,
                             hashlib.sha256(content).hexdigest(), row.nlink)

    await walk(top, "")
    return out


def top_inode(index: Index, path: bytes) -> int:
    return index.lookup(ROOT_INODE, path)


async def make_tree(fs) -> None:
    docs = fs.mkdir(b"docs")
    deep = fs.mkdir(b"deeper", fs.mkdir(b"sub", docs))
    await fs.write_file(b"secret.txt", SECRET_TEXT, docs)
    await fs.write_file(b"empty", b"", docs)
    big = await fs.write_file(b"big.bin", os.urandom(70 * SEG + 123), deep)  # file maps (with INLINE 64)
    fs.index.link(docs, b"big-link.bin", big)  # a hard link in another folder
    for i in range(40):
        await fs.write_file(b"note%02d.txt" % i, b"small note %d\n" % i * (i + 1), docs)
    sparse = await fs.write_file(b"sparse.img", b"", docs)
    await fs.write(sparse, 3 * SEG, b"after a hole")
    fs.data.release(sparse, docs)
    fs.index.make_node(docs, b"link-to-secret", stat.S_IFLNK | 0o777, 0, 0, target=b"secret.txt")
    fs.index.set_xattr(fs.index.lookup(docs, b"secret.txt"), b"user.tag", b"classified")
    await fs.write_file(b"outside.txt", b"not in the share\n", ROOT_INODE)


async def test_publish_then_read_everything_from_an_empty_home(tmp_path, inn, monkeypatch):
    from usenetfs.share import tree
    monkeypatch.setattr(tree, "INLINE_SEGMENTS", 64)  # big.bin's 71 segments then go to a file map
    owner = Owner(tmp_path / "owner", inn)
    async with owner.running() as fs:
        await make_tree(fs)
        files = owner.share("docs", "/docs")
        result = await owner.publish("docs")
        assert (result.seq, result.epoch, result.keyring, result.dirs) == (1, 1, 1, 3)
        assert result.files == 45 and result.changed_dirs == 3
        expected = await tree_of(owner.index, fs.data, top_inode(owner.index, b"docs"))
    cap = files.load().capability()

    reader = Reader(tmp_path / "reader", inn, cap)
    opened, changes = await reader.subscribe()
    assert opened.root.name == "docs" and opened.root.stats == {"dirs": 3, "files": 45, "bytes": result.bytes}
    assert changes.dirs_visited == 3
    assert any(reader.sub.objects_dir.iterdir())
    kinds = [p.read_bytes()[0] for p in reader.sub.objects_dir.iterdir()]
    assert kinds.count(tree.FILE_MAP) == 1 and kinds.count(tree.DIRECTORY) == 3
    async with reader.files() as (mirror, data):
        got = await tree_of(mirror.ix, data, ROOT_INODE)
        assert "outside.txt" not in got
        assert got == expected  # names, modes, sizes, times, xattrs, contents, link counts
        assert got["big-link.bin"][-1] == 2  # the hard link is one inode with two names
        assert mirror.ix.lookup(ROOT_INODE, b"big-link.bin") == \
            mirror.ix.lookup(mirror.ix.lookup(mirror.ix.lookup(ROOT_INODE, b"sub"), b"deeper"), b"big.bin")


async def test_republishing_posts_only_what_changed_and_refresh_applies_it(tmp_path, inn):
    owner = Owner(tmp_path / "owner", inn)
    async with owner.running() as fs:
        await make_tree(fs)
        photos = fs.mkdir(b"photos", fs.index.lookup(ROOT_INODE, b"docs"))
        for i in range(400):
            await fs.write_file(b"IMG_%04d.jpg" % i, b"jpeg %d" % i, photos)
        files = owner.share("docs", "/docs")
        first = await owner.publish("docs")
        reader = Reader(tmp_path / "reader", inn, files.load().capability())
        await reader.subscribe()

        again = await owner.publish("docs")
        assert (again.seq, again.changed_dirs, again.objects_posted) == (2, 0, 0)

        await fs.write_file(b"IMG_0200b.jpg", b"one more", photos)  # one name in a 400-entry folder
        one_more = await owner.publish("docs")
        assert one_more.changed_dirs == 2  # photos and docs
        assert one_more.objects_posted <= 6 < first.objects_posted  # a piece (or two) and a folder, each

        docs = fs.index.lookup(ROOT_INODE, b"docs")
        sub = fs.index.lookup(docs, b"sub")
        fs.index.rename(docs, b"note00.txt", photos, b"moved-note.txt")
        fs.index.rename(sub, b"deeper", docs, b"deeper-moved")  # a folder moves up
        fs.delete(b"note01.txt", docs)
        fs.index.unlink(docs, b"big-link.bin")
        fs.index.set_xattr(fs.index.lookup(docs, b"secret.txt"), b"user.tag", b"declassified")
        note = fs.index.lookup(docs, b"note02.txt")
        await fs.data.open_for_write(note, fs.size(note), truncate=True)
        await fs.write(note, 0, b"rewritten")
        fs.index.update_inode(note, size=9)
        fs.data.release(note, docs)
        await owner.publish("docs")
        expected = await tree_of(owner.index, fs.data, docs)

    opened, changes = await reader.subscribe()
    assert opened.root_number == 4
    assert changes.dirs_visited == 4  # docs, photos, sub, the moved folder; not every folder
    async with reader.files() as (mirror, data):
        assert await tree_of(mirror.ix, data, ROOT_INODE) == expected
        assert mirror.ix.orphans() == []  # what went away is gone from the mirror too


async def test_forged_and_tampered_index_articles_are_rejected(tmp_path, inn):
    owner = Owner(tmp_path / "owner", inn)
    async with owner.running() as fs:
        await make_tree(fs)
        files = owner.share("docs", "/docs")
        await owner.publish("docs")
        await owner.publish("docs")
    state = files.load()
    cap = state.capability()
    epoch_keys, access_keys = state.epoch_keys(), state.access_keys()
    limiter = trio.CapacityLimiter(2)

    async with client_for(inn) as client:
        poster = ArticlePoster(client, VerifyOptions(delay=0.0, tries=3, interval=0.05))
        # An insider (any subscriber has the epoch key) posts root 3, signed by another key,
        # and keyring 2 handing out a key of their own: both are stepped over.
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        mallory = Ed25519PrivateKey.generate()
        genuine = await open_share(client, cap, Access(), limiter)
        fake_root = Root(**{**genuine.root.__dict__, "seq": 3, "name": "forged"})
        await backup_articles.post(poster, epoch_keys, manifest_ident(cap.share_id, 3), fake_root.sign(mallory),
                                   GROUP, limiter)
        fake_ring = Keyring(share=state.share_id, number=2, epoch=1,
                            stanzas=[{"type": "open", "key": "A" * 43 + "="}])
        await backup_articles.post(poster, access_keys, manifest_ident(cap.share_id, 2), fake_ring.sign(mallory),
                                   GROUP, limiter)
        opened = await open_share(client, cap, Access(), limiter)
        assert (opened.keyring.number, opened.root_number, opened.root.name) == (1, 2, "docs")

        # The top folder's object replaced in the spool by an authentic-looking article
        # with other bytes (encrypted under the epoch key, as an insider could): its digest
        # does not match.
        top = opened.root.tree_ref
        ident = chunk_ident(cap.share_id, top.digest)
        forged = SegmentCodec(segment_key(epoch_keys.index_key, ident)).encode(ident, b"\x01\x00").body
        path = spool_file(inn, epoch_keys.message_id(ident, top.generation))
        original = path.read_bytes()
        path.write_bytes(original[:original.index(b"\r\n\r\n") + 4] + forged + b".\r\n")
        reader = Reader(tmp_path / "reader", inn, cap)
        with pytest.raises(UserError, match="does not match its digest"):
            await reader.subscribe()
        # ... and corrupted the way a server damages articles: it does not decode.
        path.write_bytes(original)
        corrupt_body(path)
        with pytest.raises(UserError, match="does not decode"):
            await Reader(tmp_path / "reader2", inn, cap).subscribe()
        assert not Mirror.open(reader.sub.mirror_file).state()  # nothing was applied

        # A data segment's article tampered: the read fails (EIO), never wrong bytes.
        path.write_bytes(original)
        good = Reader(tmp_path / "reader3", inn, cap)
        await good.subscribe()
        async with good.files() as (mirror, data):
            ino = mirror.ix.lookup(ROOT_INODE, b"secret.txt")
            seg = mirror.ix.extents(ino)[0].segment
            key, locator = mirror.segment_secret(seg)
            corrupt_body(spool_file(inn, f"<{locator}@{mirror.state()['data']['domain']}>"))
            from usenetfs.data import DataUnavailable
            with pytest.raises(DataUnavailable):
                await data.read(ino, 0, 10, len(SECRET_TEXT))


async def test_the_spool_reveals_no_names_sizes_or_contents(tmp_path, make_inn):
    server = make_inn()
    owner = Owner(tmp_path / "owner", server)
    async with owner.running() as fs:
        await make_tree(fs)
        owner.share("docs", "/docs")
        await owner.publish("docs")
        sizes = {str(row.size).encode() for _, _, row in fs.index.readdir(fs.index.lookup(ROOT_INODE, b"docs"))
                 if row.size > 1000}
    articles = [p for p in (server.spool_dir / "articles").rglob("*") if p.is_file()]
    assert len(articles) > 10
    needles = [b"secret.txt", b"note07", b"docs", b"deeper", b"big.bin", b"classified", b"swordfish",
               b"usenetfs", b"docs"] + sorted(sizes)
    ours = (b"From:", b"Newsgroups:", b"Subject:", b"Message-ID:")  # INN adds Path (its own name), Xref, ...
    for path in articles:
        head, _, body = path.read_bytes().partition(b"\r\n\r\n")
        raw = b"\r\n".join(line for line in head.split(b"\r\n") if line.startswith(ours)) + body
        for needle in needles:
            assert needle not in raw, (needle, path)


async def test_a_password_share_and_a_wrong_password(tmp_path, inn):
    from usenetfs.share.stanzas import scrypt_stanza
    owner = Owner(tmp_path / "owner", inn)
    async with owner.running() as fs:
        await make_tree(fs)
        files = owner.share("docs", "/docs", mode="password")
        state = files.load()
        state.password_stanza = scrypt_stanza(state.epoch_bytes, "hunter2", state.share_bytes, 1, log_n=10)
        files.save(state)
        await owner.publish("docs")
    cap = files.load().capability()
    reader = Reader(tmp_path / "reader", inn, cap)
    with pytest.raises(UserError, match="wrong password for this share"):
        await reader.subscribe(Access(password="hunter3"))
    with pytest.raises(UserError, match="password-protected"):
        await reader.subscribe(Access())
    opened, _ = await reader.subscribe(Access(password="hunter2"))
    assert opened.root.stats["files"] == 45


async def test_applying_is_all_or_nothing(tmp_path, inn):
    """A refresh that fails half-way (an object gone from the server) leaves the mirror as
    it was, and the next one applies everything."""
    owner = Owner(tmp_path / "owner", inn)
    async with owner.running() as fs:
        await make_tree(fs)
        files = owner.share("docs", "/docs")
        await owner.publish("docs")
        reader = Reader(tmp_path / "reader", inn, files.load().capability())
        await reader.subscribe()
        before = Mirror.open(reader.sub.mirror_file)
        before_state = before.state()
        before.close()
        sub = fs.index.lookup(fs.index.lookup(ROOT_INODE, b"docs"), b"sub")
        await fs.write_file(b"late.txt", b"late\n", sub)
        await owner.publish("docs")
    state = files.load()
    keys = state.epoch_keys()
    async with client_for(inn) as client:
        opened = await open_share(client, state.capability(), Access(), trio.CapacityLimiter(2))
        # the new "sub" folder object is missing from the server
        mirror = Mirror.open(reader.sub.mirror_file)
        try:
            applier = Applier(mirror, client, state.capability(), opened.epoch_key, tmp_path / "empty-cache",
                              trio.CapacityLimiter(2))
            listing = await applier._listing(opened.root.tree_ref)
            sub_ref = next(e.child for e, _ in listing if e.name == b"sub")
            spool_file(inn, keys.message_id(chunk_ident(state.share_bytes, sub_ref.digest), 0)).unlink()
            with pytest.raises(UserError, match="is missing"):
                await Applier(mirror, client, state.capability(), opened.epoch_key, tmp_path / "empty-cache2",
                              trio.CapacityLimiter(2)).apply(opened)
            assert mirror.state() == before_state
            assert mirror.ix.lookup(ROOT_INODE, b"sub") is not None
            assert mirror.ix.fsck() == []
        finally:
            mirror.close()
