"""Stable 64-bit hashes, identical on every node and every run.

Keys, groups (AOR / Call-ID) and ping partitions come from these, so they must never
depend on the process (Python's hash() is salted per process) and never change between
releases without a layout version bump. Eight bytes per step (an xxHash64-style
round: multiply, rotate, multiply; the last word overlaps the one before, or holds the
whole input zero-padded when it is shorter than 8 bytes; the length is mixed in),
then the splitmix64 finaliser so that every output bit depends on every input bit (the
home slot uses the high bits, the partition the low bits). A byte-at-a-time FNV-1a was
3x slower on 22-byte AORs (bench/test_bench_partitions.py). Neighbours: shm.table,
shm.contacts.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastcluster.shm.raw import ldu64

P1 = np.uint64(0x9E3779B185EBCA87)
P2 = np.uint64(0xC2B2AE3D27D4EB4F)
SEED_GROUP = np.uint64(0x67726F7570)  # "group"
MIN_KEY = np.uint64(2)  # 0 and 1 mark empty and free slots


@njit(cache=True, inline="always")
def mix64(x):
    """splitmix64 finaliser: a bijection on uint64 with full avalanche."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(cache=True, inline="always")
def _round(h, w):
    h = h + w * P2
    return ((h << np.uint64(31)) | (h >> np.uint64(33))) * P1


@njit(cache=True, inline="always")
def hash_bytes(buf, off, n, seed):
    """Hash of buf[off:off+n] (uint8 array) under a uint64 seed."""
    h = seed ^ P1
    if n >= 8:
        i = off
        end = off + n
        while i + 8 < end:
            h = _round(h, ldu64(buf, i))
            i += 8
        h = _round(h, ldu64(buf, end - 8))  # the last word, overlapping the one before
    else:
        w = np.uint64(0)
        for j in range(n):
            w |= np.uint64(buf[off + j]) << np.uint64(8 * j)
        h = _round(h, w)
    return mix64(h ^ np.uint64(n))


@njit(cache=True, inline="always")
def as_key(h):
    """A hash usable as a table key (never 0 or 1)."""
    return h if h >= MIN_KEY else h + MIN_KEY


@njit(cache=True, inline="always")
def group_hash(buf, off, n):
    return as_key(hash_bytes(buf, off, n, SEED_GROUP))


@njit(cache=True)
def _hash_seeded(buf, n, seed):
    return as_key(hash_bytes(buf, 0, n, seed[0]))


@njit(cache=True)
def _group_of(buf, n):
    return group_hash(buf, 0, n)


def _array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).copy() if data else np.zeros(1, np.uint8)


def group_hash_of(data: bytes) -> int:
    """Python entry point (MI lookups, tools, tests)."""
    return int(_group_of(_array(data), len(data)))


def key_hash_of(data: bytes, seed: int) -> int:
    """as_key(hash_bytes(data, seed)) from Python. The seed travels in an array: a
    uint64 scalar above 2**63 passed straight to a kernel can be mistyped as int64."""
    return int(_hash_seeded(_array(data), len(data), np.array([seed], dtype=np.uint64)))
