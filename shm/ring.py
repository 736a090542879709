"""Replication rings: one bounded single-producer/single-consumer byte ring per process and
replicated table.

Every process that changes a shared table (SIP workers, the timer, the cluster process
for MI edits) pushes each changed row into its own ring of that table, from inside the
table kernel; the cluster process drains a table's rings in batches and sends them to
the other nodes.
A full ring never blocks the writer and never grows: the row stays in the table, the
ring records the lowest version it could not carry (`gap_version`) and counts it, and
the cluster process repairs the gap by re-sending the table's own rows from that
version on (services.replication). Neighbours: shm.table (pushes), workers.cluster
(drains).

Rings segment layout (all integers little-endian):

    offset  size  field
    0       8     magic  b"FCRINGS1"
    8       4     layout version (RING_LAYOUT_VERSION)
    12      4     number of rings (process slots x tables)
    16      8     bytes per ring region (RING_HEADER + capacity)
    24      4     tables: the ring of process slot p for table t is region p * tables + t
    28      228   reserved (zero)
    256     ...   ring regions, each:

    ring region
    0       8     head: bytes ever written (producer; release-store after the data)
    64      8     tail: bytes ever consumed (consumer)
    128     8     gap_version: lowest row version not pushed because the ring was full
                  (0: none); the consumer swaps it to 0 and repairs
    136     8     gaps: rows not pushed, ever (statistics)
    144     8     capacity: data bytes, a power of two (0: replication off)
    152     8     pushed: rows pushed, ever (statistics)
    160     96    reserved
    256     cap   data: entries, each 8-aligned and never straddling the end

    entry
    0       4     length of the whole entry in bytes, padding included
    4       2     table kind (shm.rows RowLayout.kind; 0 = padding to the end of the ring)
    6       2     reserved
    8       ...   row bytes: the fixed part and the used part of the string blob
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastcluster.shm.atomics import atomic_cas, atomic_load, atomic_store, unmanaged
from fastcluster.shm.raw import ld16, ld32, ld64, st16, st32
from fastcluster.shm.rows import PREFIX_OFFSETS

RING_MAGIC = int.from_bytes(b"FCRINGS1", "little")
RING_LAYOUT_VERSION = 2
SEGMENT_HEADER = 256
RING_HEADER = 256
ENTRY_HEADER = 8
# u64 word indexes inside a ring region
W_HEAD, W_TAIL, W_GAP_VERSION, W_GAPS, W_CAPACITY, W_PUSHED = 0, 8, 16, 17, 18, 19
ROW_VERSION = ENTRY_HEADER + PREFIX_OFFSETS["version"]  # an entry's row version


def segment_size(nprocs: int, capacity: int, ntables: int = 1) -> int:
    if capacity & (capacity - 1):
        raise ValueError("ring capacity must be a power of two")
    return SEGMENT_HEADER + nprocs * ntables * (RING_HEADER + capacity)


def init_segment(buf: np.ndarray, nprocs: int, capacity: int, ntables: int = 1) -> None:
    head = buf[:SEGMENT_HEADER].view(np.uint64)
    head[1] = 0
    nrings = nprocs * ntables
    buf[8:12].view(np.uint32)[0] = RING_LAYOUT_VERSION
    buf[12:16].view(np.uint32)[0] = nrings
    buf[24:28].view(np.uint32)[0] = ntables
    head[2] = RING_HEADER + capacity
    for i in range(nrings):
        start = SEGMENT_HEADER + i * (RING_HEADER + capacity)
        buf[start:start + RING_HEADER].view(np.int64)[W_CAPACITY] = capacity
    head[0] = RING_MAGIC  # last: a reader seeing the magic sees a complete header


def region(buf: np.ndarray, slot: int, table: int = 0) -> np.ndarray:
    """The ring region of process slot `slot` for table index `table` (a view; what the
    kernels take)."""
    header = buf[:SEGMENT_HEADER]
    if int(header.view(np.uint64)[0]) != RING_MAGIC:
        raise ValueError("not a rings segment (bad magic)")
    if int(header[8:12].view(np.uint32)[0]) != RING_LAYOUT_VERSION:
        raise ValueError("rings segment layout version mismatch")
    nrings = int(header[12:16].view(np.uint32)[0])
    ntables = int(header[24:28].view(np.uint32)[0])
    size = int(header.view(np.uint64)[2])
    index = slot * ntables + table
    if not 0 <= table < ntables or not 0 <= index < nrings:
        raise IndexError(f"ring of slot {slot}, table {table} outside the segment")
    start = SEGMENT_HEADER + index * size
    return buf[start:start + size]


def no_ring() -> np.ndarray:
    """A region with capacity 0: kernels given it replicate nothing."""
    return np.zeros(RING_HEADER, dtype=np.uint8)


@njit(cache=True, inline="always")
def ring_capacity(ring):
    """Data bytes of a ring region (0: replication off)."""
    return ld64(ring, 8 * W_CAPACITY)


@njit(cache=True, inline="always")
def ring_push(ring, kind, row8, row_off, nbytes, version):
    """Copy `nbytes` of a row into the ring as one entry. Returns 1 pushed, 0 no ring,
    -1 full (the gap is recorded: gap_version lowered to `version`, gaps += 1).

    ring: uint8[RING_HEADER + capacity] region of the calling process (single producer).
    row8: uint8 array holding the row at byte offset row_off. All arithmetic is int64.
    """
    ring = unmanaged(ring)
    w = ring[:RING_HEADER].view(np.int64)
    cap = w[W_CAPACITY]
    if cap == 0:
        return 0
    need = (ENTRY_HEADER + nbytes + 7) & ~7
    head = w[W_HEAD]
    tail = atomic_load(w, W_TAIL)
    pos = head & (cap - 1)
    pad = cap - pos if cap - pos < need else 0
    if head + pad + need - tail > cap:
        gap = atomic_load(w, W_GAP_VERSION)
        while gap == 0 or version < gap:
            seen = atomic_cas(w, W_GAP_VERSION, gap, version)
            if seen == gap:
                break
            gap = seen
        w[W_GAPS] += 1
        return -1
    data = ring[RING_HEADER:]
    if pad:
        st32(data, pos, pad)
        st16(data, pos + 4, 0)
        head += pad
        pos = 0
    st32(data, pos, need)
    st16(data, pos + 4, kind)
    st16(data, pos + 6, 0)
    start = pos + ENTRY_HEADER
    data[start:start + nbytes] = row8[row_off:row_off + nbytes]
    data[start + nbytes:pos + need] = 0
    w[W_PUSHED] += 1
    atomic_store(w, W_HEAD, head + need)
    return 1


@njit(cache=True, inline="always")
def ring_drain(ring, out, off):
    """Move whole entries from the ring into out[off:], padding skipped, until the ring
    is empty or the next entry does not fit (out must hold at least one entry). Returns
    the new offset. Single consumer (the cluster process)."""
    ring = unmanaged(ring)
    out = unmanaged(out)
    w = ring[:RING_HEADER].view(np.int64)
    cap = w[W_CAPACITY]
    if cap == 0:
        return off
    data = ring[RING_HEADER:]
    tail = w[W_TAIL]
    head = atomic_load(w, W_HEAD)
    while tail < head:
        pos = tail & (cap - 1)
        length = ld32(data, pos)
        if ld16(data, pos + 4) != 0:  # padding (kind 0) is just skipped
            if off + length > out.shape[0]:
                break
            out[off:off + length] = data[pos:pos + length]
            off += length
        tail += length
    atomic_store(w, W_TAIL, tail)
    return off


@njit(cache=True, inline="always")
def ring_take_gap(ring):
    """Swap gap_version to 0 and return what it was (0: no gap to repair)."""
    w = ring[:RING_HEADER].view(np.int64)
    gap = atomic_load(w, W_GAP_VERSION)
    while gap != 0:
        seen = atomic_cas(w, W_GAP_VERSION, gap, 0)
        if seen == gap:
            return gap
        gap = seen
    return 0


@njit(cache=True)
def rings_low_version(seg, table):
    """Lowest version among the entries still waiting in a table's rings and the gaps
    they recorded (int64 max: none): what a dead cluster process never sent."""
    seg = unmanaged(seg)
    nrings = ld32(seg, 12)
    size = ld64(seg, 16)
    ntables = ld32(seg, 24)
    low = np.int64(0x7FFFFFFFFFFFFFFF)
    for i in range(table, nrings, ntables):
        ring = seg[SEGMENT_HEADER + i * size:SEGMENT_HEADER + (i + 1) * size]
        w = ring[:RING_HEADER].view(np.int64)
        cap = w[W_CAPACITY]
        if cap == 0:
            continue
        gap = w[W_GAP_VERSION]
        if gap != 0 and gap < low:
            low = gap
        data = ring[RING_HEADER:]
        tail = w[W_TAIL]
        while tail < w[W_HEAD]:
            pos = tail & (cap - 1)
            length = ld32(data, pos)
            if length < ENTRY_HEADER:
                break
            if ld16(data, pos + 4) != 0:
                v = ld64(data, pos + ROW_VERSION)
                if v < low:
                    low = v
            tail += length
    return low


def stats(ring: np.ndarray) -> dict[str, int]:
    w = ring[:RING_HEADER].view(np.int64)
    return {"capacity": int(w[W_CAPACITY]), "pending_bytes": int(w[W_HEAD] - w[W_TAIL]),
            "pushed": int(w[W_PUSHED]), "gaps": int(w[W_GAPS]),
            "gap_version": int(w[W_GAP_VERSION])}


@njit(cache=True)
def rings_drain(seg, table, out, off):
    """ring_drain over the rings of one table (every process slot's). Returns (off,
    more): more is 1 when the output filled up before those rings were empty."""
    seg = unmanaged(seg)
    nrings = ld32(seg, 12)
    size = ld64(seg, 16)
    ntables = ld32(seg, 24)
    more = 0
    for i in range(table, nrings, ntables):
        ring = seg[SEGMENT_HEADER + i * size:SEGMENT_HEADER + (i + 1) * size]
        off = ring_drain(ring, out, off)
        w = ring[:RING_HEADER].view(np.int64)
        if w[W_TAIL] != atomic_load(w, W_HEAD):
            more = 1
    return off, more


@njit(cache=True)
def rings_take_gaps(seg, table):
    """Swap the gap_version of every ring of one table to 0; return the lowest one seen
    (0: no gap)."""
    seg = unmanaged(seg)
    nrings = ld32(seg, 12)
    size = ld64(seg, 16)
    ntables = ld32(seg, 24)
    low = 0
    for i in range(table, nrings, ntables):
        ring = seg[SEGMENT_HEADER + i * size:SEGMENT_HEADER + (i + 1) * size]
        gap = ring_take_gap(ring)
        if gap != 0 and (low == 0 or gap < low):
            low = gap
    return low
