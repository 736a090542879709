"""Little-endian loads and stores at byte offsets of uint8 arrays, for kernels.

`arr[a:b].view(np.uint64)[0]` costs a call to numba's dtype-change helper and an array
object per access; these build the value from bytes instead, which LLVM folds into a
single load or store. Offsets need no alignment. Neighbours: shm.table, shm.ring,
shm.contacts.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def ld16(b, o):
    return np.int64(b[o]) | (np.int64(b[o + 1]) << 8)


@njit(cache=True, inline="always")
def ld32(b, o):
    return (np.int64(b[o]) | (np.int64(b[o + 1]) << 8) | (np.int64(b[o + 2]) << 16)
            | (np.int64(b[o + 3]) << 24))


@njit(cache=True, inline="always")
def ldu64(b, o):
    v = np.uint64(0)
    for i in range(8):
        v |= np.uint64(b[o + i]) << np.uint64(8 * i)
    return v


@njit(cache=True, inline="always")
def ld64(b, o):
    return np.int64(ldu64(b, o))


@njit(cache=True, inline="always")
def st16(b, o, v):
    b[o] = v & 0xFF
    b[o + 1] = (v >> 8) & 0xFF


@njit(cache=True, inline="always")
def st32(b, o, v):
    for i in range(4):
        b[o + i] = (v >> (8 * i)) & 0xFF


@njit(cache=True, inline="always")
def stu64(b, o, v):
    for i in range(8):
        b[o + i] = (v >> np.uint64(8 * i)) & np.uint64(0xFF)


@njit(cache=True, inline="always")
def st64(b, o, v):
    stu64(b, o, np.uint64(v))


@njit(cache=True, inline="always")
def copy(dst, doff, src, soff, n):
    """dst[doff:doff+n] = src[soff:soff+n] for non-overlapping ranges."""
    for i in range(n):
        dst[doff + i] = src[soff + i]
