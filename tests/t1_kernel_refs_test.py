"""KernelRefs: the lookup counts and packing groups of the inodes the kernel holds."""

from usenetfs.fs.refs import KernelRefs


def test_counts_groups_and_forgets():
    refs = KernelRefs()
    assert refs.count(7) == 0 and refs.group(7) is None and 7 not in refs and len(refs) == 0
    refs.add(7, 3)
    refs.add(7, 5)  # seen again, in another directory: packs with that one now
    assert refs.count(7) == 2 and refs.group(7) == 5 and 7 in refs and len(refs) == 1
    refs.regroup(7, 9)
    assert refs.group(7) == 9
    assert refs.drop(7, 1) == 1 and refs.group(7) == 9
    assert refs.drop(7, 1) == 0
    assert 7 not in refs and refs.group(7) is None and len(refs) == 0
    refs.regroup(7, 4)  # not held: nothing to move
    assert 7 not in refs


def test_forget_below_zero_and_of_unknown_inodes():
    refs = KernelRefs()
    refs.add(300, 1)
    assert refs.drop(300, 5) == 0 and 300 not in refs
    assert refs.drop(301, 1) == 0 and refs.drop(10**12, 1) == 0
    assert len(refs) == 0


def test_neighbours_share_a_block_that_goes_when_empty():
    refs = KernelRefs()
    for ino in range(2, 1002):
        refs.add(ino, 1)
    assert len(refs) == 1000
    dense = refs.nbytes()
    assert dense <= 17 * 1000 + 4096  # 16 bytes an id, in blocks of 256
    for ino in range(2, 1002, 2):
        refs.drop(ino, 1)
    assert len(refs) == 500 and refs.nbytes() == dense  # every block still holds some
    for ino in range(3, 1002, 2):
        refs.drop(ino, 1)
    assert len(refs) == 0 and refs.nbytes() == 0


def test_large_and_scattered_ids():
    refs = KernelRefs()
    big = (1 << 40) + 17
    refs.add(big, (1 << 40) + 1)
    refs.add(5, 1)
    assert refs.count(big) == 1 and refs.group(big) == (1 << 40) + 1 and refs.count(big - 1) == 0
    refs.clear()
    assert len(refs) == 0 and refs.count(5) == 0 and refs.nbytes() == 0
