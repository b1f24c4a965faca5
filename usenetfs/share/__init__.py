"""Shares: a folder of a volume published to Usenet, mounted read-only elsewhere from a capability.

docs/shares.md is the design. Modules:

    capability.py  the one-line capability: encode, parse, read from a file/stdin/argument
    stanzas.py     wrapping the epoch key: open, scrypt (password), X25519 (recipients); identities
    documents.py   signed keyrings and roots
    tree.py        directory, piece and file-map objects (wire.py: their varint encoding)
    articles.py    posting and fetching documents and objects (on top of usenetfs.backup)
    state.py       the owner's share state on disk, finding shares, the audit log
    publish.py     walking the volume's index and posting what changed
    subscribe.py   opening a share and applying its tree to a mirror index (index/mirror.py)
    mount.py       the subscriber's mount: read-only, a keyed segment store, refresh
"""
