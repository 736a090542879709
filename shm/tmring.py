"""Timer rings: how a process tells the timer process "look at transaction S at time T".

Transactions (shm.transactions) carry their own timers; the timer process keeps a
private timer wheel (shm.tmwheel) so that it never scans the table to find what is due.
A SIP worker that gives a transaction an earlier due time than the one already armed
pushes (due, slot, key) into its own ring here; the timer process drains every ring into
its wheel each tick. One ring per process slot, single producer (the process of that
slot, from inside a kernel), single consumer (the timer process): no lock, and a
producer killed mid-push leaves no half entry (the head moves only after the entry is
written). A full ring drops the entry and counts it: the row keeps its due time and the
timer's sweep (shm.tmwheel.tm_sweep) re-arms rows whose entry went missing.
Neighbours: shm.transactions (pushes), shm.tmwheel (drains), shm.node (owns the segment).

Segment layout (int64 words, little-endian):

    offset  size          field
    0       8             magic b"FCTMRNG1"
    8       8             layout version (TMRING_LAYOUT_VERSION)
    16      8             number of rings
    24      8             entries per ring (a power of two)
    32      224           reserved
    256     ...           rings, one per process slot, each:

    ring
    0       8             head: entries ever pushed (producer; release-store after the entry)
    64      8             tail: entries ever taken (consumer)
    128     8             drops: entries not pushed because the ring was full
    192     64            reserved
    256     24 * entries  entries: due (monotonic ms), slot, key (as int64)
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastcluster.shm.atomics import atomic_load, atomic_store

TMRING_MAGIC = int.from_bytes(b"FCTMRNG1", "little")
TMRING_LAYOUT_VERSION = 1
SEGMENT_HEADER = 256
RING_HEADER = 256
ENTRY_WORDS = 3
DEFAULT_ENTRIES = 1 << 15
# int64 word indexes inside a ring
W_HEAD, W_TAIL, W_DROPS, W_ENTRIES = 0, 8, 16, 32


def ring_bytes(entries: int) -> int:
    return RING_HEADER + 8 * ENTRY_WORDS * entries


def segment_size(nrings: int, entries: int = DEFAULT_ENTRIES) -> int:
    if entries & (entries - 1):
        raise ValueError("timer ring entries must be a power of two")
    return SEGMENT_HEADER + nrings * ring_bytes(entries)


def init_segment(buf: np.ndarray, nrings: int, entries: int = DEFAULT_ENTRIES) -> None:
    w = buf[:SEGMENT_HEADER].view(np.int64)
    w[1], w[2], w[3] = TMRING_LAYOUT_VERSION, nrings, entries
    w[0] = TMRING_MAGIC


def _geometry(buf: np.ndarray) -> tuple[int, int]:
    w = buf[:SEGMENT_HEADER].view(np.int64)
    if int(w[0]) != TMRING_MAGIC or int(w[1]) != TMRING_LAYOUT_VERSION:
        raise ValueError("not a timer rings segment (bad magic or layout version)")
    return int(w[2]), int(w[3])


def ring(buf: np.ndarray, index: int) -> np.ndarray:
    """The ring of process slot `index`, as int64 words (what the kernels take)."""
    nrings, entries = _geometry(buf)
    if not 0 <= index < nrings:
        raise IndexError(f"timer ring {index} of {nrings}")
    start = SEGMENT_HEADER + index * ring_bytes(entries)
    return buf[start:start + ring_bytes(entries)].view(np.int64)


def all_rings(buf: np.ndarray) -> np.ndarray:
    """Every ring's words, shape (nrings, words per ring): the timer's drain input."""
    nrings, entries = _geometry(buf)
    words = ring_bytes(entries) // 8
    return buf[SEGMENT_HEADER:SEGMENT_HEADER + nrings * ring_bytes(entries)].view(
        np.int64).reshape(nrings, words)


def no_ring() -> np.ndarray:
    """A ring of capacity 0: pushes are dropped (tests, tools)."""
    return np.zeros(W_ENTRIES, dtype=np.int64)


def drops(buf: np.ndarray) -> int:
    return int(all_rings(buf)[:, W_DROPS].sum())


@njit(cache=True, inline="always")
def ring_entries(r):
    return (r.shape[0] - W_ENTRIES) // ENTRY_WORDS


@njit(cache=True, inline="always")
def tmr_push(r, due, slot, key):
    """Producer: queue (due, slot, key). False (and counted) when the ring is full."""
    cap = ring_entries(r)
    head = r[W_HEAD]
    if cap == 0 or head - atomic_load(r, W_TAIL) >= cap:
        r[W_DROPS] += 1
        return False
    i = W_ENTRIES + (head & (cap - 1)) * ENTRY_WORDS
    r[i] = due
    r[i + 1] = slot
    r[i + 2] = np.int64(key)
    atomic_store(r, W_HEAD, head + 1)
    return True
