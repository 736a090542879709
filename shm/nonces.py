"""The nonce replay table: the highest nonce count seen per live nonce, shared by every
SIP worker of a node, and the key nonces are signed with.

Digest nonces are stateless (core.digest), so replay protection needs a memory of
what was used: a phone reusing a nonce must raise its nonce count (RFC 7616 §3.4), a
replayed answer repeats one. Workers check and bump the count in one CAS, with no
lock: the whole entry is one 64-bit word. A retransmitted REGISTER whose 200 was lost
looks like a replay too and gets a stale challenge: the phone answers it at once.
The table is per node: a replay sent to another node within the nonce's life is
checked there against that node's own memory (the note in docs explains the bound).
Neighbours: core.digest (nonces), services.sip.auth (the caller), shm.node (owner).

Layout (little-endian):

    offset  size        field
    0       8           magic b"FCNONCE1"
    8       8           layout version (NONCE_LAYOUT_VERSION)
    16      8           slots (a power of two)
    24      8           reserved
    32      32          nonce key (HMAC-SHA-256), written by the master at start
    64      8 * slots   entries, BUCKET per bucket; a nonce lives in the first of its
                        two buckets (buckets()) with room; each word:
                        bits 32-63 tag (nonce name >> 32, low bit forced to 1; 0 = empty)
                        bits 12-31 expiry, unix seconds mod 2**20
                        bits 0-11  highest nonce count seen
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastcluster.shm.atomics import atomic_cas, atomic_load

NONCE_MAGIC = int.from_bytes(b"FCNONCE1", "little")
NONCE_LAYOUT_VERSION = 1
HEADER = 64
KEY_OFF, KEY_BYTES = 32, 32
BUCKET = 8  # entries probed per nonce: two cache lines
NC_BITS = 12
NC_MAX = (1 << NC_BITS) - 1  # a nonce used more often is replaced (stale challenge)
EXP_BITS = 20  # expiry modulo ~12 days; nonces live minutes
USE_OK, USE_REPLAY, USE_FULL = 0, 1, 2  # == core.digest USE_*
_NC_MASK = np.uint64(NC_MAX)
_EXP_MASK = np.uint64((1 << EXP_BITS) - 1)
_HALF = np.uint64(1 << (EXP_BITS - 1))
_SHIFT_EXP = np.uint64(NC_BITS)
_SHIFT_TAG = np.uint64(32)
_ONE = np.uint64(1)


def segment_size(slots: int) -> int:
    return HEADER + 8 * slots


def init_segment(buf: np.ndarray, slots: int, key: bytes) -> None:
    if slots & (slots - 1) or slots < BUCKET:
        raise ValueError(f"nonce slots must be a power of two >= {BUCKET}, not {slots}")
    if len(key) != KEY_BYTES:
        raise ValueError("the nonce key is 32 bytes")
    h = buf[:HEADER].view(np.int64)
    h[1], h[2] = NONCE_LAYOUT_VERSION, slots
    buf[KEY_OFF:KEY_OFF + KEY_BYTES] = np.frombuffer(key, dtype=np.uint8)
    h[0] = NONCE_MAGIC


@njit(cache=True, inline="always")
def _live(word, now):
    """The entry's nonce has not expired (expiry within half the clock ring ahead)."""
    return ((word >> _SHIFT_EXP) - now) & _EXP_MASK < _HALF


@njit(cache=True)
def buckets(name, slots):
    """The first entries of the two buckets nonce `name` may live in, in a table of
    `slots` entries: one from its low bits, one from its tag's bits mixed. With one
    bucket, a fifth of the slots live left ~1 bucket in 37,000 full (Poisson; 5
    nonces of 200,000 challenged again in bench.load_register --auth on); a nonce now
    finds no room only when both of its buckets are full."""
    n = np.uint64(slots)
    low = ~np.uint64(BUCKET - 1)
    first = np.uint64(name) & (n - _ONE) & low
    mixed = (np.uint64(name) >> _SHIFT_TAG) * np.uint64(0x9E3779B97F4A7C15)
    second = (mixed >> _SHIFT_TAG) & (n - _ONE) & low
    return np.int64(first), np.int64(second)


@njit(cache=True)
def nonce_use(words, name, nc, now_s, expires_s):
    """Record nonce count `nc` (1..NC_MAX) of the nonce called `name` (uint64), which
    expires at `expires_s`. USE_OK if nc is higher than any seen for it (or it is new),
    USE_REPLAY if not, USE_FULL if both its buckets hold BUCKET live nonces (or nc is
    too big to keep). words: the table's uint64 entries (a power of two of them)."""
    if nc < 1 or nc > NC_MAX:
        return USE_FULL
    tag = ((np.uint64(name) >> _SHIFT_TAG) | _ONE) << _SHIFT_TAG
    first, second = buckets(name, words.shape[0])
    now = np.uint64(now_s) & _EXP_MASK
    fresh = tag | ((np.uint64(expires_s) & _EXP_MASK) << _SHIFT_EXP) | np.uint64(nc)
    for _ in range(64):  # each round ends with a CAS; lost ones rescan the buckets
        free = -1
        free_word = np.uint64(0)
        retry = False
        for start in (first, second):  # the nonce first, wherever it is; room after
            for i in range(start, start + BUCKET):
                w = atomic_load(words, i)
                live = w != 0 and _live(w, now)
                if live and (w >> _SHIFT_TAG) << _SHIFT_TAG == tag:
                    if np.uint64(nc) <= w & _NC_MASK:
                        return USE_REPLAY
                    if atomic_cas(words, i, w, (w & ~_NC_MASK) | np.uint64(nc)) == w:
                        return USE_OK
                    retry = True
                    break
                if not live and free < 0:
                    free = i
                    free_word = w
            if retry:
                break
        if retry:
            continue
        if free < 0:
            return USE_FULL
        if atomic_cas(words, free, free_word, fresh) == free_word:
            return USE_OK
    return USE_FULL


class NonceTable:
    """The segment seen from Python: the key and the use() wrapper."""

    def __init__(self, buf: np.ndarray) -> None:
        h = buf[:HEADER].view(np.int64)
        if int(h[0]) != NONCE_MAGIC or int(h[1]) != NONCE_LAYOUT_VERSION:
            raise ValueError("not a nonce table of this layout version")
        self.slots = int(h[2])
        self.key = buf[KEY_OFF:KEY_OFF + KEY_BYTES].tobytes()
        self.words = buf[HEADER:HEADER + 8 * self.slots].view(np.uint64)

    def use(self, name: int, nc: int, now_s: int, expires_s: int) -> int:
        return int(nonce_use(self.words, np.uint64(name), nc, now_s, expires_s))
