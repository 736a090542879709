"""Stable 64-bit hashes, identical on every node and every run.

Keys, groups (AOR / Call-ID) and ping partitions come from these, so they must never
depend on the process (Python's hash() is salted per process) and never change between
releases without a layout version bump. FNV-1a over the bytes, then the splitmix64
finaliser so that every output bit depends on every input bit (the home slot uses the
high bits, the partition the low bits). Neighbours: shm.table, shm.contacts.
"""
from __future__ import annotations

import numpy as np
from numba import njit

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
SEED_GROUP = np.uint64(0x67726F7570)  # "group"
MIN_KEY = np.uint64(2)  # 0 and 1 mark empty and free slots


@njit(cache=True, inline="always")
def mix64(x):
    """splitmix64 finaliser: a bijection on uint64 with full avalanche."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(cache=True, inline="always")
def hash_bytes(buf, off, n, seed):
    """Hash of buf[off:off+n] (uint8 array) under a uint64 seed."""
    h = FNV_OFFSET ^ seed
    for i in range(off, off + n):
        h = (h ^ np.uint64(buf[i])) * FNV_PRIME
    return mix64(h ^ np.uint64(n))


@njit(cache=True, inline="always")
def as_key(h):
    """A hash usable as a table key (never 0 or 1)."""
    return h if h >= MIN_KEY else h + MIN_KEY


@njit(cache=True, inline="always")
def group_hash(buf, off, n):
    return as_key(hash_bytes(buf, off, n, SEED_GROUP))


def group_hash_of(data: bytes) -> int:
    """Python entry point (MI lookups, tests)."""
    arr = np.frombuffer(data, dtype=np.uint8).copy() if data else np.zeros(1, np.uint8)
    return int(group_hash(arr, 0, len(data)))
