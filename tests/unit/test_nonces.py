"""The nonce replay table kernel (shm.nonces.nonce_use) against a plain reference, and
the cases that matter: a count must rise, expired nonces free their slot, a full
pair of buckets is reported, concurrent users of one nonce never both win the same count."""
from __future__ import annotations

import multiprocessing
import random

import numpy as np
import pytest

from fastcluster.shm import nonces as N


def table(slots: int = 64) -> N.NonceTable:
    buf = np.zeros(N.segment_size(slots), dtype=np.uint8)
    N.init_segment(buf, slots, bytes(range(32)))
    return N.NonceTable(buf)


def test_header_and_key() -> None:
    t = table(128)
    assert t.slots == 128 and t.key == bytes(range(32))
    with pytest.raises(ValueError):
        N.init_segment(np.zeros(N.segment_size(100), np.uint8), 100, bytes(32))


@pytest.mark.parametrize("uses, expected", [
    ([1], [N.USE_OK]),
    ([1, 1], [N.USE_OK, N.USE_REPLAY]),  # the same count twice: a replay
    ([1, 2, 3], [N.USE_OK] * 3),  # rising counts: a phone reusing its nonce
    ([3, 2], [N.USE_OK, N.USE_REPLAY]),  # lower than seen
    ([1, 5, 4, 6], [N.USE_OK, N.USE_OK, N.USE_REPLAY, N.USE_OK]),
    ([0], [N.USE_FULL]),  # nonce counts start at 1
    ([N.NC_MAX], [N.USE_OK]),
    ([N.NC_MAX + 1], [N.USE_FULL]),  # too many uses to track: a new nonce is due
])
def test_counts(uses: list[int], expected: list[int]) -> None:
    t = table()
    assert [t.use(0xABCDEF0123456789, nc, 1000, 1300) for nc in uses] == expected


def test_other_nonces_are_independent() -> None:
    t = table()
    assert t.use(0x1111_0000_0000_0008, 1, 1000, 1300) == N.USE_OK
    assert t.use(0x2222_0000_0000_0008, 1, 1000, 1300) == N.USE_OK  # same bucket
    assert t.use(0x1111_0000_0000_0008, 1, 1000, 1300) == N.USE_REPLAY


def same_buckets(slots: int, count: int) -> list[int]:
    """`count` nonce names whose two buckets are the same two (and differ)."""
    by_pair: dict[tuple[int, int], list[int]] = {}
    for k in range(1, 1 << 16):
        name = ((2 * k) << 32) | 8
        pair = tuple(int(b) for b in N.buckets(name, slots))
        if pair[0] != pair[1]:
            got = by_pair.setdefault(pair, [])
            got.append(name)
            if len(got) == count:
                return got
    raise AssertionError("no such names")


def test_full_buckets_then_expiry_frees_them() -> None:
    t = table(64)
    names = same_buckets(64, 2 * N.BUCKET + 1)
    live = 2 * N.BUCKET  # the first bucket, then the second
    assert [t.use(n, 1, 1000, 1300) for n in names[:live]] == [N.USE_OK] * live
    assert t.use(names[-1], 1, 1000, 1300) == N.USE_FULL
    # each is found again, in whichever bucket it went: a second use is a replay
    assert [t.use(n, 1, 1000, 1300) for n in names[:live]] == [N.USE_REPLAY] * live
    assert t.use(names[-1], 1, 1301, 1600) == N.USE_OK  # the others expired at 1300
    # an expired entry of the same nonce does not count as seen
    assert t.use(names[0], 1, 1301, 1600) == N.USE_OK


def test_a_nonce_moved_to_its_second_bucket_keeps_its_count_when_room_returns() -> None:
    """A nonce that went to its second bucket is found there even after its first
    bucket has room again: it must not get a fresh entry (a replay would pass)."""
    t = table(64)
    names = same_buckets(64, N.BUCKET + 1)
    for n in names[:N.BUCKET]:  # fills the first bucket; they expire at 1100
        assert t.use(n, 1, 1000, 1100) == N.USE_OK
    late = names[-1]
    assert t.use(late, 3, 1000, 1300) == N.USE_OK  # in the second bucket
    assert t.use(late, 3, 1200, 1300) == N.USE_REPLAY  # the first has room now
    assert t.use(late, 4, 1200, 1300) == N.USE_OK


def test_expiry_wraps_with_the_clock_ring() -> None:
    t = table()
    base = (1 << N.EXP_BITS) - 10  # expiry crosses the 2**20 boundary
    assert t.use(77 << 32, 1, base, base + 300) == N.USE_OK
    assert t.use(77 << 32, 1, base + 200, base + 300) == N.USE_REPLAY  # still live
    assert t.use(77 << 32, 1, base + 301, base + 600) == N.USE_OK  # expired: new entry


def reference(ops: list[tuple[int, int, int]], slots: int) -> list[int]:
    """Plain model: per bucket, the live nonces and their highest count; a nonce is
    looked for in both its buckets and goes into the first with room."""
    live: dict[int, dict[int, tuple[int, int]]] = {}
    out = []
    for name, nc, now in ops:
        exp = now + 300
        if not 1 <= nc <= N.NC_MAX:
            out.append(N.USE_FULL)
            continue
        mixed = ((name >> 32) * 0x9E3779B97F4A7C15) & (2**64 - 1)
        starts = [(name & (slots - 1)) & ~(N.BUCKET - 1),
                  ((mixed >> 32) & (slots - 1)) & ~(N.BUCKET - 1)]
        pair = [live.setdefault(b, {}) for b in starts]
        for bucket in pair:
            for tag in [k for k, (e, _) in bucket.items() if e < now]:
                del bucket[tag]
        tag = (name >> 32) | 1
        home = next((b for b in pair if tag in b), None)
        if home is not None:
            if nc <= home[tag][1]:
                out.append(N.USE_REPLAY)
            else:
                home[tag] = (home[tag][0], nc)
                out.append(N.USE_OK)
            continue
        room = next((b for b in pair if len(b) < N.BUCKET), None)
        if room is None:
            out.append(N.USE_FULL)
        else:
            room[tag] = (exp, nc)
            out.append(N.USE_OK)
    return out


def test_kernel_matches_reference_on_random_traffic() -> None:
    rng = random.Random(13)
    slots = 64
    names = [rng.getrandbits(64) for _ in range(40)]
    ops, now = [], 5000
    for _ in range(5000):
        now += rng.choice((0, 0, 0, 1, 7))
        ops.append((rng.choice(names), rng.randint(0, 12), now))
    t = table(slots)
    got = [t.use(name, nc, now, now + 300) for name, nc, now in ops]
    assert got == reference(ops, slots)


def _hammer(buf_name: str, slots: int, name: int, wins) -> None:
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(buf_name)
    try:
        buf = np.ndarray((N.segment_size(slots),), dtype=np.uint8, buffer=shm.buf)
        t = N.NonceTable(buf)
        mine = [nc for nc in range(1, 2001) if t.use(name, nc, 1000, 1300) == N.USE_OK]
        wins.put(mine)
        del t, buf
    finally:
        shm.close()


def test_two_processes_never_both_accept_one_count() -> None:
    from multiprocessing import shared_memory

    slots = 64
    shm = shared_memory.SharedMemory(create=True, size=N.segment_size(slots))
    try:
        buf = np.ndarray((N.segment_size(slots),), dtype=np.uint8, buffer=shm.buf)
        N.init_segment(buf, slots, bytes(32))
        ctx = multiprocessing.get_context("fork")
        wins = ctx.Queue()
        procs = [ctx.Process(target=_hammer, args=(shm.name, slots, 99 << 32, wins))
                 for _ in range(2)]
        for p in procs:
            p.start()
        results = [wins.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        both = set(results[0]) & set(results[1])
        assert not both  # each count was accepted at most once
        assert len(results[0]) + len(results[1]) >= 2000 // 2
        del buf
    finally:
        shm.close()
        shm.unlink()
