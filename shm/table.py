"""Open-addressing hash tables in shared memory, and the numba kernels that use them.

One table per segment (contacts, dialogs). A record is a fixed-size row: a common prefix
(key, group, version, expires, state, origin), a table-specific numeric part, u16 string
lengths and a string blob -- together the row *body*, which is what replication and sync
carry -- behind a 16-byte slot head of per-node data (the slot's seqlock word and 8 bytes
a node keeps for itself, e.g. NAT ping state), so the head shares a cache line with the
key and version. A dense uint64 key column mirrors the keys so a
probe touches 8 keys per cache line. The home slot comes from the record's *group* hash
(the AOR of a contact, the Call-ID of a dialog), so all records of a group sit in one
probe run: "all contacts of an AOR" is one short scan.

Concurrency:
- Writers lock the striped region of the home slot and every further region their
  probe crosses, always in ascending order (no wrap-around: the table has an overflow
  tail), so they cannot deadlock. A lock word holds (pid << 32 | process slot).
- Every row change goes through the writer's undo area: saved old key (and old body if
  the slot held a record), seq odd, write, seq even, ring push, undo cleared. A writer
  killed at any point leaves at most one slot in flight; `table_repair`, run by the
  master after reaping it, restores or re-pushes that slot, frees its locks and
  recounts. Publishing a key or freeing a slot is a single aligned store.
- Readers take no lock: the slot's sequence number (seqlock) tells them to retry.
Kernels work on `unmanaged` aliases of their buffers (no refcounting), read input rows
with shm.raw's byte helpers (no per-field array views) and copy only the used part of a
body: a batched insert costs a few hundred nanoseconds, mostly cache misses, which batch
kernels overlap by prefetching.

Keys: 0 = EMPTY (ends a probe), 1 = FREE (was used; probes go on), >= 2 = a record.
Records are LIVE or TOMB (a deleted record kept for tombstone_ttl so late replicas of
an older version cannot bring it back). Expired LIVE records and old tombstones become
FREE; a FREE slot followed by an EMPTY one becomes EMPTY.

Segment layout (little-endian; W = 8-byte word of the header):

    offset        size              field
    0             8                 magic b"FCTABLE2"
    W1            8                 layout version (TABLE_LAYOUT_VERSION)
    W2            8                 kind: 1 contacts, 2 dialogs (also the wire table id)
    W3            8                 nslots: home positions + overflow tail
    W4            8                 nhome: home = (group >> 32) * nhome >> 32
    W5            8                 row_size (bytes, multiple of 8): ROW_HEAD + body
    W6            8                 fixed_size: bytes before the string blob
    W7            8                 region_shift: a lock region is 1 << region_shift slots
    W8            8                 nregions
    W9            8                 nprocs: undo areas (one per process slot)
    W10..W13      4x8               offsets of keys, locks, undo, rows
    W14           8                 capacity: most records (LIVE + TOMB)
    W15           8                 lens_off: offset in a row of the u16 string lengths
    W16           8                 nlens: number of strings in the blob
    W17           8                 node_id written into local rows as origin
    W18           8                 undo_size: bytes per undo area
    W19           8                 offset of the range digests
    W20           8                 offset of the dirty marks
    W24, W32, W40 8 each            live, tomb, free counters (own cache lines)
    512           8 * nslots        keys: uint64
    ...           64 * nregions     locks: one int64 word per 64-byte line
    ...           undo_size*nprocs  undo areas: W0 state (0 idle, 1 in flight), W1 slot,
                                    W2 old key, W3 1 if the old body was saved, then the
                                    old body at +64
    ...           8 * NRANGES       range digests: per range of the group hash (its top
                                    RANGE_BITS bits), the wrapping sum of row_checksum
                                    over the LIVE and TOMB records of that range, kept by
                                    every write (anti-entropy compares them)
    ...           nslots + nregions dirty marks: a byte per slot, then a byte per lock
                                    region, set by every write; the persistence flusher
                                    takes them (table_take_dirty)
    ...           row_size*nslots   rows
    (each region starts on a 64-byte boundary)

Slot head (first ROW_HEAD bytes of every slot, never replicated); the body follows:

    0       4     seq: uint32, odd while a writer is inside the slot
    4       4     (padding)
    8       8     local: uint64 of per-node data (zeroed when a slot gets a new record)

Common row prefix (every table, offsets within the body; declared in shm.rows):

    offset  size  field
    0       8     key      uint64  record identity hash (>= 2)
    8       8     group    uint64  group hash (AOR / Call-ID): picks the home slot
    16      8     version  int64   hybrid logical clock: ms << 16 | counter
    24      4     expires  uint32  absolute unix seconds (TOMB: when it was deleted)
    28      1     state    uint8   1 LIVE, 2 TOMB
    29      1     aux      uint8   table-specific
    30      2     origin   uint16  node that made this version

Neighbours: shm.ring (pushes), shm.contacts / shm.dialogs (row layouts and their own
kernels), shm.hashing, shm.raw, workers.master (repair after a crash).
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

from fastcluster.shm.atomics import (
    atomic_add,
    atomic_cas,
    atomic_load,
    atomic_store,
    cpu_relax,
    fence,
    fence_acquire,
    fence_release,
    prefetch,
    sched_yield,
    unmanaged,
)
from fastcluster.shm.hashing import mix64
from fastcluster.shm.raw import ld16, ld32, ld64, ldu64, st16, st32, st64
from fastcluster.shm.ring import ENTRY_HEADER, ring_capacity, ring_push
from fastcluster.shm.rows import PREFIX_OFFSETS, ROW_HEAD

TABLE_MAGIC = int.from_bytes(b"FCTABLE2", "little")
TABLE_LAYOUT_VERSION = 4
HEADER_SIZE = 512
MAX_LOAD = 0.9  # records / home slots at capacity
TAIL_SLOTS = 4096  # overflow tail: probes never wrap around
REGION_SHIFT = 8  # 256 slots per lock region
LOCK_STRIDE = 8  # int64 words between lock words (one per cache line)
UNDO_ROW_AT = 64
PREFETCH_AHEAD = 16  # batch kernels prefetch the item this many iterations ahead
RANGE_BITS = 12  # anti-entropy ranges: the top bits of the group hash
NRANGES = 1 << RANGE_BITS
RANGE_SHIFT = np.uint64(64 - RANGE_BITS)

# header word indexes
(H_MAGIC, H_VERSION, H_KIND, H_NSLOTS, H_NHOME, H_ROW, H_FIXED, H_SHIFT, H_NREGIONS,
 H_NPROCS, H_OFF_KEYS, H_OFF_LOCKS, H_OFF_UNDO, H_OFF_ROWS, H_CAPACITY, H_LENS_OFF,
 H_NLENS, H_NODE_ID, H_UNDO_SIZE, H_OFF_DIGESTS, H_OFF_DIRTY) = range(21)
H_ORDER_OFF, H_ORDER_STR = 21, 22  # shm.rows RowLayout.order (0, 0: none)
H_LIVE, H_TOMB, H_FREE = 24, 32, 40

# common row prefix offsets, from the one declaration in shm.rows
R_KEY, R_GROUP, R_VERSION, R_EXPIRES, R_STATE, R_AUX, R_ORIGIN = (
    PREFIX_OFFSETS[n] for n in ("key", "group", "version", "expires", "state", "aux", "origin"))
ST_LIVE, ST_TOMB = 1, 2
K_EMPTY, K_FREE = np.uint64(0), np.uint64(1)

# kernel results (>= 0 is a slot or a count)
E_BUSY = -1  # a lock stayed taken past the spin budget: yield and call again
E_FULL = -2  # capacity reached, or the probe ran off the overflow tail
E_TOO_LONG = -3  # the strings do not fit the row's blob
E_COLLISION = -4  # same 64-bit key and group, different identity bytes
E_NOT_FOUND = -5
E_CORRUPT = -6  # a wire entry that cannot be a row of this table
E_STALE = -7  # a remote row not newer than ours

SPINS = 4096
READ_YIELDS = 1024  # a seqlock reader's yields to a writer inside the row (read_row)
REPAIR_LOCK_TRIES = 1000  # lock_region attempts per region while repairing (SPINS each)

# apply_entries accumulates into counts[APPLY_COUNTS] (int64), at these indexes:
(AC_APPLIED, AC_STALE, AC_TOO_LONG, AC_FULL, AC_BUSY, AC_ENTRIES, AC_CHECKSUM,
 AC_CORRUPT) = range(8)
APPLY_COUNTS = 8
# table_gather accumulates into counts[GATHER_COUNTS]: entries written, their checksum
GC_ENTRIES, GC_CHECKSUM = range(2)
GATHER_COUNTS = 2
HLC_SHIFT = 16  # a version is wall-clock ms << HLC_SHIFT | counter (shm.rows)
NO_SEEN = np.zeros(0, dtype=np.uint8)  # apply_entries without marking slots
NODE_IDS = 1 << 16  # horizons arrays are indexed by origin node id

Tbl = namedtuple("Tbl", "h keys locks undo8 undo64 rows8 rows16 rows32 rows64 nslots nhome "
                        "row body fixed shift lens_off nlens kind node_id capacity usz "
                        "digests dirty dirty_regions")


def _align(n: int, to: int = 64) -> int:
    return (n + to - 1) // to * to


def geometry(capacity: int, row_size: int, nprocs: int) -> dict[str, int]:
    """Slot counts and byte offsets of a table segment (pure; used by init and tests)."""
    nhome = max(16, int(np.ceil(capacity / MAX_LOAD)))
    nslots = nhome + min(TAIL_SLOTS, max(16, nhome))
    nregions = (nslots + (1 << REGION_SHIFT) - 1) >> REGION_SHIFT
    undo_size = _align(UNDO_ROW_AT + row_size)
    off = HEADER_SIZE
    layout = {"nhome": nhome, "nslots": nslots, "nregions": nregions, "undo_size": undo_size}
    for name, size in (("keys", 8 * nslots), ("locks", 8 * LOCK_STRIDE * nregions),
                       ("undo", undo_size * nprocs), ("digests", 8 * NRANGES),
                       ("dirty", nslots + nregions), ("rows", row_size * nslots)):
        layout["off_" + name] = off
        off = _align(off + size)
    layout["size"] = off
    return layout


def init_table(buf: np.ndarray, kind: int, capacity: int, row_size: int, fixed_size: int,
               lens_off: int, nlens: int, nprocs: int, node_id: int, order_off: int = 0,
               order_str: int = 0) -> None:
    """Write the header of a zero-filled table segment (keys all EMPTY already)."""
    if row_size % 8 or fixed_size % 8:
        raise ValueError("row and fixed sizes must be multiples of 8")
    g = geometry(capacity, row_size, nprocs)
    if buf.shape[0] < g["size"]:
        raise ValueError(f"segment too small: {buf.shape[0]} < {g['size']}")
    h = buf[:HEADER_SIZE].view(np.int64)
    values = {H_VERSION: TABLE_LAYOUT_VERSION, H_KIND: kind, H_NSLOTS: g["nslots"],
              H_NHOME: g["nhome"], H_ROW: row_size, H_FIXED: fixed_size,
              H_SHIFT: REGION_SHIFT, H_NREGIONS: g["nregions"], H_NPROCS: nprocs,
              H_OFF_KEYS: g["off_keys"], H_OFF_LOCKS: g["off_locks"],
              H_OFF_UNDO: g["off_undo"], H_OFF_ROWS: g["off_rows"], H_CAPACITY: capacity,
              H_LENS_OFF: lens_off, H_NLENS: nlens, H_NODE_ID: node_id,
              H_UNDO_SIZE: g["undo_size"], H_OFF_DIGESTS: g["off_digests"],
              H_OFF_DIRTY: g["off_dirty"], H_ORDER_OFF: order_off, H_ORDER_STR: order_str}
    for index, value in values.items():
        h[index] = value
    h[H_MAGIC] = TABLE_MAGIC


def check_header(buf: np.ndarray, kind: int) -> None:
    h = buf[:HEADER_SIZE].view(np.int64)
    if int(h[H_MAGIC]) != TABLE_MAGIC:
        raise ValueError("not a table segment (bad magic)")
    if int(h[H_VERSION]) != TABLE_LAYOUT_VERSION:
        raise ValueError(f"table layout {int(h[H_VERSION])}, expected {TABLE_LAYOUT_VERSION}")
    if int(h[H_KIND]) != kind:
        raise ValueError(f"table kind {int(h[H_KIND])}, expected {kind}")


# ---------------------------------------------------------------- views and helpers


@njit(cache=True, inline="always")
def views(arena):
    """Typed views of a table segment (no copy, no refcounting). arena: uint8[size]."""
    arena = unmanaged(arena)
    h = arena[:HEADER_SIZE].view(np.int64)
    nslots = h[H_NSLOTS]
    row = h[H_ROW]
    ok, olk, oud, orw = h[H_OFF_KEYS], h[H_OFF_LOCKS], h[H_OFF_UNDO], h[H_OFF_ROWS]
    rows8 = arena[orw:orw + row * nslots]
    undo8 = arena[oud:oud + h[H_UNDO_SIZE] * h[H_NPROCS]]
    return Tbl(h, arena[ok:ok + 8 * nslots].view(np.uint64),
               arena[olk:olk + 8 * LOCK_STRIDE * h[H_NREGIONS]].view(np.int64),
               undo8, undo8.view(np.int64),
               rows8, rows8.view(np.uint16), rows8.view(np.uint32), rows8.view(np.uint64),
               nslots, h[H_NHOME], row, row - ROW_HEAD, h[H_FIXED], h[H_SHIFT],
               h[H_LENS_OFF], h[H_NLENS], h[H_KIND], h[H_NODE_ID], h[H_CAPACITY],
               h[H_UNDO_SIZE],
               arena[h[H_OFF_DIGESTS]:h[H_OFF_DIGESTS] + 8 * NRANGES].view(np.int64),
               arena[h[H_OFF_DIRTY]:h[H_OFF_DIRTY] + nslots],
               arena[h[H_OFF_DIRTY] + nslots:h[H_OFF_DIRTY] + nslots + h[H_NREGIONS]])


@njit(cache=True, inline="always")
def home_of(t, group):
    return np.int64(((group >> np.uint64(32)) * np.uint64(t.nhome)) >> np.uint64(32))


@njit(cache=True, inline="always")
def r_key(t, s):
    return t.rows64[(rbase(t, s) + R_KEY) >> 3]


@njit(cache=True, inline="always")
def r_group(t, s):
    return t.rows64[(rbase(t, s) + R_GROUP) >> 3]


@njit(cache=True, inline="always")
def r_version(t, s):
    return np.int64(t.rows64[(rbase(t, s) + R_VERSION) >> 3])


@njit(cache=True, inline="always")
def r_expires(t, s):
    return np.int64(t.rows32[(rbase(t, s) + R_EXPIRES) >> 2])


@njit(cache=True, inline="always")
def r_state(t, s):
    return t.rows8[rbase(t, s) + R_STATE]


@njit(cache=True, inline="always")
def r_origin(t, s):
    return np.int64(t.rows16[(rbase(t, s) + R_ORIGIN) >> 1])


@njit(cache=True, inline="always")
def rbase(t, s):
    """Byte offset in rows8 of slot s's row body (after the slot head)."""
    return s * t.row + ROW_HEAD


@njit(cache=True, inline="always")
def seq_index(t, s):
    """Index in rows32 of slot s's seqlock word (first word of the slot head)."""
    return (s * t.row) >> 2


@njit(cache=True, inline="always")
def local_index(t, s):
    """Index in rows64 of slot s's per-node word (second word of the slot head)."""
    return (s * t.row + 8) >> 3


@njit(cache=True, inline="always")
def blob_used(t, b8, base):
    """Sum of the string lengths of the row at byte `base` of uint8 array b8."""
    n = 0
    for i in range(t.nlens):
        n += ld16(b8, base + t.lens_off + 2 * i)
    return n


@njit(cache=True, inline="always")
def seg_span(t, b8, base, index):
    """(offset, length) of string `index` of the row at byte `base` of b8."""
    off = base + t.fixed
    for i in range(index):
        off += ld16(b8, base + t.lens_off + 2 * i)
    return off, ld16(b8, base + t.lens_off + 2 * index)


@njit(cache=True, inline="always")
def bytes_equal(a, ao, b, bo, n):
    for i in range(n):
        if a[ao + i] != b[bo + i]:
            return False
    return True


@njit(cache=True, inline="always")
def prefetch_slot(t, s):
    """Ask for slot s's key, lock word and the first cache lines of its row (head,
    fixed part, start of the strings) ahead of a write."""
    prefetch(t.keys, s)
    prefetch(t.locks, (s >> t.shift) * LOCK_STRIDE)
    for off in range((s * t.row) & ~63, s * t.row + ROW_HEAD + t.fixed + 128, 64):
        prefetch(t.rows8, off)


@njit(cache=True, inline="always")
def hlc_version(now_ms):
    """The smallest version a write at wall-clock time now_ms may carry; a write that
    finds a version at least as high takes that version + 1 instead."""
    return np.int64(now_ms) << HLC_SHIFT


@njit(cache=True, inline="always")
def next_version(now_ms, stored):
    """Version of a local write over a record whose version is `stored` (0: none)."""
    v = hlc_version(now_ms)
    return v if v > stored else stored + 1


def version_ms(version: int) -> int:
    """Wall-clock ms a version was made at (its high bits)."""
    return int(version) >> HLC_SHIFT


@njit(cache=True, inline="always")
def row_checksum(key, version, origin):
    """Order-independent checksum term of one row (sync end marker, digests)."""
    return mix64(key ^ mix64(np.uint64(version) ^ (np.uint64(origin) << np.uint64(48))))


@njit(cache=True, inline="always")
def range_of(group):
    """Anti-entropy range of a group hash (its top RANGE_BITS bits)."""
    return np.int64(np.uint64(group) >> RANGE_SHIFT)


@njit(cache=True, inline="always")
def digest_slot(t, s, sign):
    """Add (sign 1) or remove (sign -1) slot s's record from its range digest."""
    term = np.int64(row_checksum(t.keys[s], r_version(t, s), r_origin(t, s)))
    atomic_add(t.digests, range_of(r_group(t, s)), term * sign)


@njit(cache=True, inline="always")
def entry_header(out, off, length, kind):
    st32(out, off, length)
    st16(out, off + 4, kind)
    st16(out, off + 6, 0)


# ---------------------------------------------------------------- locks


@njit(cache=True, inline="always")
def lock_region(t, r, me):
    i = r * LOCK_STRIDE
    for _ in range(SPINS):
        if atomic_load(t.locks, i) == 0 and atomic_cas(t.locks, i, 0, me) == 0:
            return True
        cpu_relax()
    return False


@njit(cache=True, inline="always")
def unlock_regions(t, lo, hi):
    for r in range(lo, hi + 1):
        atomic_store(t.locks, r * LOCK_STRIDE, 0)


@njit(cache=True, inline="always")
def scan_locked(t, home, key, group, me, hi):
    """Writer probe from `home` (its region already locked, regions up to `hi` held).

    Returns (found slot or -1, first FREE/EMPTY slot or -1, new hi, status 0/E_BUSY/
    E_FULL). On E_BUSY the regions up to the returned hi are still held: the caller
    unlocks them.
    """
    s = home
    free = -1
    while s < t.nslots:
        r = s >> t.shift
        if r > hi:
            if not lock_region(t, r, me):
                return -1, free, hi, E_BUSY
            hi = r
        k = t.keys[s]
        if k == K_EMPTY:
            if free < 0:
                free = s
            return -1, free, hi, 0
        if k == K_FREE:
            if free < 0:
                free = s
        elif k == key and r_group(t, s) == group:
            return s, free, hi, 0
        s += 1
    return -1, free, hi, E_FULL


# ---------------------------------------------------------------- undo protocol


@njit(cache=True, inline="always")
def undo_begin(t, proc, s):
    """Save slot s to this process's undo area and open the seqlock (seq odd)."""
    base = proc * t.usz
    w = base >> 3
    old = t.keys[s]
    t.undo64[w + 1] = s
    t.undo64[w + 2] = np.int64(old)
    if old > K_FREE:
        t.undo64[w + 3] = 1
        t.undo8[base + UNDO_ROW_AT:base + UNDO_ROW_AT + t.body] = \
            t.rows8[rbase(t, s):rbase(t, s) + t.body]
    else:
        t.undo64[w + 3] = 0
    atomic_store(t.undo64, w, 1)
    q = seq_index(t, s)
    atomic_store(t.rows32, q, t.rows32[q] + np.uint32(1))
    fence_release()


@njit(cache=True, inline="always")
def undo_commit(t, s):
    """Close the seqlock (seq even): the row is complete and visible."""
    q = seq_index(t, s)
    atomic_store(t.rows32, q, t.rows32[q] + np.uint32(1))


@njit(cache=True, inline="always")
def undo_end(t, proc):
    atomic_store(t.undo64, (proc * t.usz) >> 3, 0)


@njit(cache=True, inline="always")
def push_row(t, ring, s):
    if ring_capacity(ring) == 0:
        return 0
    base = rbase(t, s)
    return ring_push(ring, t.kind, t.rows8, base, t.fixed + blob_used(t, t.rows8, base),
                     r_version(t, s))


@njit(cache=True, inline="always")
def count_state(t, state, delta):
    if state == ST_LIVE:
        atomic_add(t.h, H_LIVE, delta)
    elif state == ST_TOMB:
        atomic_add(t.h, H_TOMB, delta)


@njit(cache=True, inline="always")
def publish_counts(t, d_live, d_tomb, d_free):
    """Add counter deltas to the shared header (batch kernels call it once per batch,
    so concurrent writers do not fight over the counters' cache line per record)."""
    if d_live:
        atomic_add(t.h, H_LIVE, d_live)
    if d_tomb:
        atomic_add(t.h, H_TOMB, d_tomb)
    if d_free:
        atomic_add(t.h, H_FREE, d_free)


@njit(cache=True, inline="always")
def write_row(t, ring, proc, s, src8, src_off, nbytes, key, version):
    """Copy a row body (nbytes <= body from src8[src_off:]) into slot s under the undo
    protocol and push it to `ring`; version > 0 stamps that version and this node as
    origin (a local write), 0 keeps the source's (a remote row). The caller holds the
    slot's region lock. Returns the (live, tomb, free) counter deltas to publish."""
    old_key = t.keys[s]
    old_state = r_state(t, s) if old_key > K_FREE else 0
    if old_key > K_FREE:
        digest_slot(t, s, -1)
    undo_begin(t, proc, s)
    base = rbase(t, s)
    t.rows8[base:base + nbytes] = src8[src_off:src_off + nbytes]
    if version > 0:
        st64(t.rows8, base + R_VERSION, version)
        st16(t.rows8, base + R_ORIGIN, t.node_id)
    if old_key != key:
        t.rows64[local_index(t, s)] = 0
        atomic_store(t.keys, s, key)
    undo_commit(t, s)
    digest_slot(t, s, 1)
    t.dirty[s] = 1  # for the persistence flusher: the slot first, then its region
    fence_release()
    t.dirty_regions[s >> t.shift] = 1
    new_state = t.rows8[base + R_STATE]
    d_live = (1 if new_state == ST_LIVE else 0) - (1 if old_state == ST_LIVE else 0)
    d_tomb = (1 if new_state == ST_TOMB else 0) - (1 if old_state == ST_TOMB else 0)
    d_free = -1 if old_key == K_FREE else 0
    push_row(t, ring, s)
    undo_end(t, proc)
    return d_live, d_tomb, d_free


# ---------------------------------------------------------------- public kernels


@njit(cache=True, inline="always")
def put_row(t, ring, row8, at, now_ms, me, proc, pending):
    """table_put on prepared views; the row is row8[at:at + body]. pending: records this
    batch added but has not published yet (for the capacity check). Returns (result,
    live, tomb, free deltas). Only the used part of the body is copied."""
    used = blob_used(t, row8, at)
    if used > t.body - t.fixed:
        return E_TOO_LONG, 0, 0, 0
    key = ldu64(row8, at + R_KEY)
    group = ldu64(row8, at + R_GROUP)
    home = home_of(t, group)
    lo = home >> t.shift
    if not lock_region(t, lo, me):
        return E_BUSY, 0, 0, 0
    found, free, hi, status = scan_locked(t, home, key, group, me, lo)
    result = status
    dl = dt = df = 0
    if status == 0:
        version = hlc_version(now_ms)
        if found >= 0:
            version = next_version(now_ms, r_version(t, found))
            target = found
        elif row8[at + R_STATE] == ST_TOMB:
            target = E_NOT_FOUND
        elif t.h[H_LIVE] + t.h[H_TOMB] + pending >= t.capacity or free < 0:
            target = E_FULL
        else:
            target = free
        if target >= 0:
            dl, dt, df = write_row(t, ring, proc, target, row8, at, t.fixed + used, key,
                                   version)
        result = target
    unlock_regions(t, lo, hi)
    return result, dl, dt, df


@njit(cache=True)
def table_put(arena, ring, row8, now_ms, me, proc):
    """Local write of one complete row (key, group, state, fields, lengths, strings).

    The version becomes max(now_ms << 16, stored version + 1) and the origin this node;
    the row is inserted or replaces the record with the same key and group, and is
    pushed to `ring`. A TOMB row for an absent record is E_NOT_FOUND. Returns the slot,
    or E_BUSY / E_FULL / E_TOO_LONG.
    row8: uint8[>= body], read only.
    """
    t = views(arena)
    r, dl, dt, df = put_row(t, unmanaged(ring), unmanaged(row8), 0, now_ms, me, proc, 0)
    publish_counts(t, dl, dt, df)
    return r


@njit(cache=True)
def table_put_batch(arena, ring, rows, n, now_ms, me, proc, out):
    """table_put for the rows at rows[i * row_size], i < n; out[i] = result.
    Stops early on E_BUSY (out[i] = E_BUSY); returns how many were processed.
    Counters are published once at the end, so while batches run in several processes
    at once the capacity check may be short by what the others have not published."""
    t = views(arena)
    ring = unmanaged(ring)
    rows = unmanaged(rows)
    live = tomb = free = 0
    done = n
    for i in range(n):
        ahead = i + PREFETCH_AHEAD
        if ahead < n:
            prefetch_slot(t, home_of(t, ldu64(rows, ahead * t.row + R_GROUP)))
        r, dl, dt, df = put_row(t, ring, rows, i * t.row, now_ms, me, proc, live + tomb)
        live += dl
        tomb += dt
        free += df
        out[i] = r
        if r == E_BUSY:
            done = i
            break
    publish_counts(t, live, tomb, free)
    return done


@njit(cache=True, inline="always")
def apply_entry(t, buf, off, length, now_s, tomb_ttl_s, me, proc, ring, seen, pending):
    """Apply one remote row (wire entry at buf[off:off+length], header included) if its
    (version, origin) is newer than ours. Returns (the slot, E_STALE, E_BUSY, E_FULL,
    E_TOO_LONG or E_CORRUPT; live, tomb, free deltas). Not pushed to a ring unless
    `ring` has capacity. pending: records added but not yet published. seen: uint8 per
    slot (or empty): the slot holding this record afterwards is marked 1 (mirror sync)."""
    rb = off + ENTRY_HEADER
    nbytes = length - ENTRY_HEADER
    if nbytes < t.fixed:
        return E_CORRUPT, 0, 0, 0
    used = blob_used(t, buf, rb)
    if t.fixed + used > nbytes:
        return E_CORRUPT, 0, 0, 0
    if used > t.body - t.fixed:
        return E_TOO_LONG, 0, 0, 0
    state = buf[rb + R_STATE]
    if state != ST_LIVE and state != ST_TOMB:
        return E_CORRUPT, 0, 0, 0
    key = ldu64(buf, rb + R_KEY)
    group = ldu64(buf, rb + R_GROUP)
    if key <= K_FREE:
        return E_CORRUPT, 0, 0, 0
    version = ld64(buf, rb + R_VERSION)
    origin = ld16(buf, rb + R_ORIGIN)
    expires = ld32(buf, rb + R_EXPIRES)
    home = home_of(t, group)
    lo = home >> t.shift
    if not lock_region(t, lo, me):
        return E_BUSY, 0, 0, 0
    found, free, hi, status = scan_locked(t, home, key, group, me, lo)
    result = status
    dl = dt = df = 0
    if status == 0:
        if found >= 0:
            sv = r_version(t, found)
            newer = version > sv or (version == sv and origin > r_origin(t, found))
            order = record_order(t, buf, rb, found)
            if order != 0:
                newer = order > 0
            result = found if newer else E_STALE
            if seen.shape[0]:
                seen[found] = 1
        elif (state == ST_LIVE and expires <= now_s) or (
                state == ST_TOMB and expires + tomb_ttl_s <= now_s):
            result = E_STALE  # already gone here: nothing to remember
        elif t.h[H_LIVE] + t.h[H_TOMB] + pending >= t.capacity or free < 0:
            result = E_FULL
        else:
            result = free
        if result >= 0:
            dl, dt, df = write_row(t, ring, proc, result, buf, rb, t.fixed + used, key, 0)
            if seen.shape[0]:
                seen[result] = 1
    unlock_regions(t, lo, hi)
    return result, dl, dt, df


@njit(cache=True, inline="always")
def record_order(t, b8, base, s):
    """Where the row at byte `base` of b8 stands against slot s's row of the same record
    by the table's order field (shm.rows RowLayout.order): 1 later, -1 earlier, 0 not
    comparable (no order, other scope strings, or equal fields): (version, origin)
    decide."""
    oo = t.h[H_ORDER_OFF]
    if oo == 0:
        return 0
    si = t.h[H_ORDER_STR]
    sb = rbase(t, s)
    a, an = seg_span(t, b8, base, si)
    b, bn = seg_span(t, t.rows8, sb, si)
    if an == 0 or an != bn or not bytes_equal(b8, a, t.rows8, b, an):
        return 0
    x = ld32(b8, base + oo)
    y = ld32(t.rows8, sb + oo)
    return 1 if x > y else (-1 if x < y else 0)


@njit(cache=True, inline="always")
def _prefetch_entry(t, buf, at, nbytes):
    """Prefetch the slot of the entry at `at` (if it looks sane); return the next."""
    if at + ENTRY_HEADER + R_GROUP + 8 > nbytes:
        return nbytes
    length = ld32(buf, at)
    if length < ENTRY_HEADER:
        return nbytes
    prefetch_slot(t, home_of(t, ldu64(buf, at + ENTRY_HEADER + R_GROUP)))
    return at + length


@njit(cache=True, nogil=True)
def apply_entries(arena, buf, nbytes, now_s, tomb_ttl_s, me, proc, ring, seen, counts):
    """Apply a batch of wire entries (replication or sync chunk) of this table, each only
    if its (version, origin) is newer than ours. seen: see apply_entry (empty: none).
    counts: int64[APPLY_COUNTS]
    accumulates (indexes AC_*) applied, stale, too long, table full, busy, entries,
    checksum (wrapping sum of row_checksum), corrupt. Returns the byte offset reached:
    nbytes when done; less when an entry is corrupt or of another table (counts
    [AC_CORRUPT] = 1: drop the frame) or a lock stayed busy (counts[AC_BUSY] grew:
    yield, then call again from that offset). Releases the GIL."""
    t = views(arena)
    buf = unmanaged(buf)
    ring = unmanaged(ring)
    seen = unmanaged(seen)
    d_live = d_tomb = d_free = 0  # counter deltas, published on every return
    off = 0
    # a cursor PREFETCH_AHEAD entries ahead asks for the slots those entries will touch
    ahead = 0
    for _ in range(PREFETCH_AHEAD):
        ahead = _prefetch_entry(t, buf, ahead, nbytes)
    while off < nbytes:
        if nbytes - off < ENTRY_HEADER:
            counts[AC_CORRUPT] = 1
            break
        length = ld32(buf, off)
        if length < ENTRY_HEADER or length & 7 or off + length > nbytes or \
                ld16(buf, off + 4) != t.kind:
            counts[AC_CORRUPT] = 1
            break
        ahead = _prefetch_entry(t, buf, ahead, nbytes)
        r, dl, dt, df = apply_entry(t, buf, off, length, now_s, tomb_ttl_s, me, proc, ring,
                                    seen, d_live + d_tomb)
        if r == E_BUSY:
            counts[AC_BUSY] += 1
            break  # the caller yields, then calls again from `off`
        if r == E_CORRUPT:
            counts[AC_CORRUPT] = 1
            break
        d_live += dl
        d_tomb += dt
        d_free += df
        rb = off + ENTRY_HEADER
        counts[AC_ENTRIES] += 1
        counts[AC_CHECKSUM] += np.int64(row_checksum(ldu64(buf, rb + R_KEY),
                                                     ld64(buf, rb + R_VERSION),
                                                     ld16(buf, rb + R_ORIGIN)))
        if r >= 0:
            counts[AC_APPLIED] += 1
        elif r == E_STALE:
            counts[AC_STALE] += 1
        elif r == E_TOO_LONG:
            counts[AC_TOO_LONG] += 1
        elif r == E_FULL:
            counts[AC_FULL] += 1
        off += length
    publish_counts(t, d_live, d_tomb, d_free)
    return off


@njit(cache=True, inline="always")
def read_row(t, s, out8, out_off):
    """Copy slot s's row body into out8 consistently (seqlock). Returns its key
    (EMPTY/FREE if the slot holds no record any more, or stayed locked past the wait
    budget: a writer died inside it and the master has not repaired it yet). A writer
    inside the row is spun on, then yielded to (READ_YIELDS times): with more workers
    than cores it may be waiting for this very CPU, and a reader that gave up after the
    spins alone (~1 ms) read a busy row as no row at all (a BYE ended no dialog)."""
    q = seq_index(t, s)
    spins = 0
    yields = 0
    while True:
        s1 = atomic_load(t.rows32, q)
        spins += 1
        if spins > SPINS * 16:
            if yields >= READ_YIELDS:
                return K_FREE
            yields += 1
            spins = SPINS * 15  # SPINS more spins after each yield
            sched_yield()
        if s1 & 1:
            cpu_relax()
            continue
        k = atomic_load(t.keys, s)
        if k > K_FREE:
            base = rbase(t, s)
            n = t.fixed + blob_used(t, t.rows8, base)
            if n > t.body:  # a torn length under a concurrent writer: seq will differ
                n = t.body
            out8[out_off:out_off + n] = t.rows8[base:base + n]
        fence_acquire()
        if t.rows32[q] == s1:
            return k


@njit(cache=True)
def table_find(arena, key, group):
    """Slot of the record (LIVE or TOMB) with this key and group, or E_NOT_FOUND.
    Lock-free; the answer may be stale by the time the caller uses it."""
    t = views(arena)
    s = home_of(t, group)
    while s < t.nslots:
        k = atomic_load(t.keys, s)
        if k == K_EMPTY:
            return E_NOT_FOUND
        if k == key and r_group(t, s) == group:
            return s
        s += 1
    return E_NOT_FOUND


@njit(cache=True)
def table_find_batch(arena, keys, groups, out_versions):
    """Look up n records; out_versions[i] = version read under the seqlock, or -1.
    Returns how many were found."""
    t = views(arena)
    n = keys.shape[0]
    found = 0
    for i in range(n):
        if i + PREFETCH_AHEAD < n:
            h = home_of(t, groups[i + PREFETCH_AHEAD])
            prefetch(t.keys, h)
            prefetch(t.rows8, h * t.row)
            prefetch(t.rows8, h * t.row + 64)
        key, group = keys[i], groups[i]
        out_versions[i] = -1
        s = home_of(t, group)
        while s < t.nslots:
            k = t.keys[s]
            if k == K_EMPTY:
                break
            if k == key:
                q = seq_index(t, s)
                while True:
                    s1 = atomic_load(t.rows32, q)
                    g = r_group(t, s)
                    v = r_version(t, s)
                    kk = r_key(t, s)
                    fence_acquire()
                    if not s1 & 1 and t.rows32[q] == s1:
                        break
                    cpu_relax()
                if kk == key and g == group:
                    out_versions[i] = v
                    found += 1
                    break
            s += 1
    return found


@njit(cache=True)
def table_group(arena, group, ident, ident_len, live_only, out8, max_rows):
    """Copy the rows of a group (whose string 0 equals ident[:ident_len]) into out8
    (one record every row_size bytes), consistently. Returns how many (at most
    max_rows). Lock-free."""
    t = views(arena)
    ident = unmanaged(ident)
    out8 = unmanaged(out8)
    s = home_of(t, group)
    n = 0
    while s < t.nslots and n < max_rows:
        k = atomic_load(t.keys, s)
        if k == K_EMPTY:
            break
        if k > K_FREE and r_group(t, s) == group:
            at = n * t.row
            if read_row(t, s, out8, at) > K_FREE:
                off, ln = seg_span(t, out8, at, 0)
                same = (ln == ident_len and bytes_equal(out8, off, ident, 0, ln)
                        and ldu64(out8, at + R_KEY) == k)
                if same and (not live_only or out8[at + R_STATE] == ST_LIVE):
                    n += 1
        s += 1
    return n


@njit(cache=True, nogil=True)
def table_scan(arena, start, live_only, out8, soft_rows, max_rows, out_slots):
    """Copy records from slot `start` on, in slot order (one record every row_size bytes
    of out8): at least soft_rows, then on to the end of the probe run (so every record
    of a group is in one batch), at most max_rows. Returns (next start slot (nslots when
    done), rows)."""
    t = views(arena)
    out8 = unmanaged(out8)
    s = start
    n = 0
    while s < t.nslots and n < max_rows and (n < soft_rows or t.keys[s] != K_EMPTY):
        if t.keys[s] > K_FREE:
            at = n * t.row
            if read_row(t, s, out8, at) > K_FREE and (
                    not live_only or out8[at + R_STATE] == ST_LIVE):
                out_slots[n] = s
                n += 1
        s += 1
    return s, n


@njit(cache=True, inline="always")
def gather_one(t, s, out, off):
    """Write slot s as a wire entry at out[off:] if it holds a record; returns the
    entry's length (0 if not)."""
    rb = off + ENTRY_HEADER
    k = read_row(t, s, out, rb)
    if k <= K_FREE:
        return 0
    nbytes = t.fixed + blob_used(t, out, rb)
    length = (ENTRY_HEADER + nbytes + 7) & ~7
    entry_header(out, off, length, t.kind)
    out[rb + nbytes:off + length] = 0
    return length


@njit(cache=True, nogil=True)
def table_gather(arena, start, out, max_bytes, counts):
    """Sync donor: write records from slot `start` on as wire entries into out (at most
    max_bytes), whole probe runs at a time when possible. counts: int64[GATHER_COUNTS]
    += entries, checksum (indexes GC_*). Returns (next slot, bytes, covered): every record whose home
    slot is below `covered` has been written by now (covered only moves at EMPTY slots,
    since a run never crosses one; a single run larger than max_bytes is split and does
    not advance it). Releases the GIL."""
    t = views(arena)
    out = unmanaged(out)
    s = start
    off = 0
    covered = start
    need = (ENTRY_HEADER + t.body + 7) & ~7
    while s < t.nslots:
        if t.keys[s] == K_EMPTY:
            covered = s + 1
            s += 1
            continue
        # the run from s to the next EMPTY slot
        e = s
        while e < t.nslots and t.keys[e] != K_EMPTY:
            e += 1
        records = 0
        for p in range(s, e):
            if t.keys[p] > K_FREE:
                records += 1
        if off + records * need > max_bytes and off > 0:
            break  # the whole run in the next chunk
        while s < e:
            if t.keys[s] > K_FREE:
                if off + need > max_bytes:
                    return s, off, covered  # a run larger than a chunk: split it
                length = gather_one(t, s, out, off)
                if length:
                    rb = off + ENTRY_HEADER
                    counts[GC_ENTRIES] += 1
                    counts[GC_CHECKSUM] += np.int64(row_checksum(ldu64(out, rb + R_KEY),
                                                       ld64(out, rb + R_VERSION),
                                                       ld16(out, rb + R_ORIGIN)))
                    off += length
            s += 1
        covered = e
    if s >= t.nslots:
        covered = t.nslots
    return s, off, covered


@njit(cache=True, nogil=True)
def table_since(arena, start, min_version, origin, out, max_bytes):
    """Gap repair: like table_gather, but only rows of `origin` with version >=
    min_version. Returns (next slot, bytes)."""
    t = views(arena)
    out = unmanaged(out)
    s = start
    off = 0
    need = (ENTRY_HEADER + t.body + 7) & ~7
    while s < t.nslots:
        if t.keys[s] > K_FREE and r_version(t, s) >= min_version and r_origin(t, s) == origin:
            if off + need > max_bytes:
                break
            off += gather_one(t, s, out, off)
        s += 1
    return s, off


@njit(cache=True)
def table_expire(arena, first_region, nregions, now_s, tomb_min_s, tomb_max_s, horizons, me,
                 out):
    """Timer pass over lock regions [first_region, first_region + nregions): LIVE rows
    whose expiry passed become FREE (locally; not replicated: every node expires by the
    same absolute time). A tombstone becomes FREE once every node holding the table has
    it -- its version is below horizons[its origin], the version up to which that origin
    knows all nodes acknowledged its changes -- and it is at least tomb_min_s old, or in
    any case once it is tomb_max_s old. Then FREE slots followed by EMPTY become EMPTY.
    horizons: int64[65536] by origin node id. out: int64[3] += [expired, tombs purged,
    slots emptied]. Returns the next region (0 after the last), or E_BUSY with nothing
    half-done."""
    t = views(arena)
    nreg = t.h[H_NREGIONS]
    r = first_region
    end = min(nreg, first_region + nregions)
    while r < end:
        if not lock_region(t, r, me):
            return E_BUSY
        lo = r << t.shift
        hi = min(t.nslots, (r + 1) << t.shift)
        for s in range(lo, hi):
            k = t.keys[s]
            if k <= K_FREE:
                continue
            st = r_state(t, s)
            ex = r_expires(t, s)
            if st == ST_LIVE:
                gone = ex <= now_s
            else:
                gone = ex + tomb_max_s <= now_s or (
                    ex + tomb_min_s <= now_s and r_version(t, s) < horizons[r_origin(t, s)])
            if gone:
                digest_slot(t, s, -1)
                atomic_store(t.keys, s, K_FREE)
                atomic_add(t.h, H_FREE, 1)
                count_state(t, st, -1)
                if st == ST_LIVE:
                    out[0] += 1
                else:
                    out[1] += 1
        s = hi - 1
        while s >= lo:
            if t.keys[s] == K_FREE and (s + 1 == t.nslots or t.keys[s + 1] == K_EMPTY):
                atomic_store(t.keys, s, K_EMPTY)
                atomic_add(t.h, H_FREE, -1)
                out[2] += 1
            s -= 1
        unlock_regions(t, r, r)
        r += 1
    return 0 if r >= nreg else r


@njit(cache=True)
def table_mirror_drop(arena, seen, cutoff_version, now_s, me, proc, ring, row, out):
    """After a mirror sync: records the donor did not send (seen[slot] == 0) whose version
    is below cutoff_version become local tombstones (version + 1, deleted now: the
    cluster deleted them while this node was away and no tombstone is left to say so;
    a tombstone, not a free slot, so the persisted tables and anti-entropy say it too).
    ring: a ring region of capacity 0 (shm.ring.no_ring: not replicated). row:
    uint8[row_size] scratch. out: int64[1] += dropped. Returns 0, or E_BUSY (call again:
    nothing half-done in a region)."""
    t = views(arena)
    row = unmanaged(row)
    for r in range(t.h[H_NREGIONS]):
        if not lock_region(t, r, me):
            return E_BUSY
        for s in range(r << t.shift, min(t.nslots, (r + 1) << t.shift)):
            if t.keys[s] > K_FREE and seen[s] == 0 and r_state(t, s) == ST_LIVE and \
                    r_version(t, s) < cutoff_version:
                base = rbase(t, s)
                n = t.fixed + blob_used(t, t.rows8, base)
                row[:n] = t.rows8[base:base + n]
                row[R_STATE] = ST_TOMB
                st32(row, R_EXPIRES, now_s)
                st64(row, R_VERSION, r_version(t, s) + 1)
                dl, dt, df = write_row(t, ring, proc, s, row, 0, n, t.keys[s], 0)
                publish_counts(t, dl, dt, df)
                out[0] += 1
        unlock_regions(t, r, r)
    return 0


@njit(cache=True, nogil=True)
def table_gather_ranges(arena, wanted, first, out, max_bytes, counts):
    """Anti-entropy: write the records (LIVE and TOMB) of every range r >= first with
    wanted[r] != 0 as wire entries into out (at most max_bytes), whole ranges at a time.
    counts: int64[GATHER_COUNTS] += entries, checksum. Returns (next range to ask for,
    bytes); the next range is NRANGES when every wanted range was written. A range
    alone larger than max_bytes is cut short (the next round repairs the rest)."""
    t = views(arena)
    out = unmanaged(out)
    need = (ENTRY_HEADER + t.body + 7) & ~7
    off = 0
    r = first
    while r < NRANGES:
        if wanted[r] == 0:
            r += 1
            continue
        lo_group = np.uint64(r) << RANGE_SHIFT
        s = home_of(t, lo_group)
        last = home_of(t, lo_group | ((np.uint64(1) << RANGE_SHIFT) - np.uint64(1)))
        start_off = off
        while s < t.nslots and (s <= last or t.keys[s] != K_EMPTY):
            if t.keys[s] > K_FREE and range_of(r_group(t, s)) == r:
                if off + need > max_bytes:
                    if start_off > 0:
                        return r, start_off  # the whole range in the next call
                    return r + 1, off
                length = gather_one(t, s, out, off)
                if length:
                    rb = off + ENTRY_HEADER
                    counts[GC_ENTRIES] += 1
                    counts[GC_CHECKSUM] += np.int64(row_checksum(ldu64(out, rb + R_KEY),
                                                                 ld64(out, rb + R_VERSION),
                                                                 ld16(out, rb + R_ORIGIN)))
                    off += length
            s += 1
        r += 1
    return NRANGES, off


@njit(cache=True, nogil=True)
def table_take_dirty(arena, first_region, out, max_bytes, counts):
    """Persistence: write every record changed since it was last taken (its dirty mark
    set) as a wire entry into out (at most max_bytes), clearing the marks -- each
    region's mark before reading its slots', so a write racing the flusher is taken
    now or next time, never lost. A slot freed meanwhile yields nothing (expired rows
    are dropped by time, not by key). counts: int64[GATHER_COUNTS] += entries,
    checksum. Returns (next region (nregions when the table was covered), bytes)."""
    t = views(arena)
    out = unmanaged(out)
    need = (ENTRY_HEADER + t.body + 7) & ~7
    off = 0
    nreg = t.h[H_NREGIONS]
    r = first_region
    while r < nreg:
        if t.dirty_regions[r] == 0:
            r += 1
            continue
        t.dirty_regions[r] = 0
        fence()
        for s in range(r << t.shift, min(t.nslots, (r + 1) << t.shift)):
            if t.dirty[s] == 0:
                continue
            if off + need > max_bytes:
                t.dirty_regions[r] = 1  # the rest of this region next time
                return r, off
            t.dirty[s] = 0
            fence()
            length = gather_one(t, s, out, off)
            if length:
                rb = off + ENTRY_HEADER
                counts[GC_ENTRIES] += 1
                counts[GC_CHECKSUM] += np.int64(row_checksum(ldu64(out, rb + R_KEY),
                                                             ld64(out, rb + R_VERSION),
                                                             ld16(out, rb + R_ORIGIN)))
                off += length
        r += 1
    return nreg, off


@njit(cache=True)
def table_mark_all(arena):
    """Mark every record dirty (the flusher then writes the whole table: a database
    that was replaced, a first flush)."""
    t = views(arena)
    for s in range(t.nslots):
        if t.keys[s] > K_FREE:
            t.dirty[s] = 1
            t.dirty_regions[s >> t.shift] = 1


@njit(cache=True)
def entries_summary(buf, nbytes):
    """(entries, lowest version among them) of the wire entries in buf[:nbytes]; the
    version is int64 max when there is none."""
    low = np.int64(0x7FFFFFFFFFFFFFFF)
    n = 0
    off = 0
    while off + ENTRY_HEADER + R_VERSION + 8 <= nbytes:
        length = ld32(buf, off)
        if length < ENTRY_HEADER:
            break
        v = ld64(buf, off + ENTRY_HEADER + R_VERSION)
        if v < low:
            low = v
        n += 1
        off += length
    return n, low


def dirty_marks(buf: np.ndarray) -> np.ndarray:
    """The table's dirty marks (a view: uint8[nslots + nregions])."""
    h = buf[:HEADER_SIZE].view(np.int64)
    off = int(h[H_OFF_DIRTY])
    return buf[off:off + int(h[H_NSLOTS]) + int(h[H_NREGIONS])]


def range_digests(buf: np.ndarray) -> np.ndarray:
    """The table's range digests (a view: int64[NRANGES], kept by every write)."""
    h = buf[:HEADER_SIZE].view(np.int64)
    off = int(h[H_OFF_DIGESTS])
    return buf[off:off + 8 * NRANGES].view(np.int64)


@njit(cache=True, nogil=True)
def table_digest(arena, live_only):
    """(records, digest): order-independent over (key, version, origin); equal on nodes
    holding the same data."""
    t = views(arena)
    n = 0
    d = np.uint64(0)
    for s in range(t.nslots):
        k = t.keys[s]
        if k > K_FREE and (not live_only or r_state(t, s) == ST_LIVE):
            n += 1
            d += row_checksum(k, r_version(t, s), r_origin(t, s))
    return n, d


@njit(cache=True, nogil=True)
def table_newest(arena):
    """Highest version among the records (0: none)."""
    t = views(arena)
    newest = np.int64(0)
    for s in range(t.nslots):
        if t.keys[s] > K_FREE:
            v = r_version(t, s)
            if v > newest:
                newest = v
    return newest


@njit(cache=True, nogil=True)
def table_count_groups(arena):
    """Distinct groups with at least one LIVE record (registered AORs)."""
    t = views(arena)
    n = 0
    for s in range(t.nslots):
        if t.keys[s] > K_FREE and r_state(t, s) == ST_LIVE:
            g = r_group(t, s)
            first = True
            p = home_of(t, g)
            while p < s:
                if t.keys[p] > K_FREE and r_state(t, p) == ST_LIVE and r_group(t, p) == g:
                    a, la = seg_span(t, t.rows8, rbase(t, p), 0)
                    b, lb = seg_span(t, t.rows8, rbase(t, s), 0)
                    if la == lb and bytes_equal(t.rows8, a, t.rows8, b, la):
                        first = False
                        break
                p += 1
            if first:
                n += 1
    return n


@njit(cache=True)
def table_recount(arena):
    """Recompute the live/tomb/free counters and the range digests from the slots
    (after a repair)."""
    t = views(arena)
    live = tomb = free = 0
    t.digests[:] = 0
    for s in range(t.nslots):
        k = t.keys[s]
        if k == K_FREE:
            free += 1
        elif k > K_FREE:
            st = r_state(t, s)
            t.digests[range_of(r_group(t, s))] += np.int64(
                row_checksum(k, r_version(t, s), r_origin(t, s)))
            if st == ST_LIVE:
                live += 1
            elif st == ST_TOMB:
                tomb += 1
    atomic_store(t.h, H_LIVE, live)
    atomic_store(t.h, H_TOMB, tomb)
    atomic_store(t.h, H_FREE, free)


@njit(cache=True)
def table_repair(arena, ring, pid, proc, me):
    """Undo what a dead process (pid, process slot proc) left in flight, free its locks
    and recount. Call only after the process was reaped. Returns
    (1 if a torn row was restored / 2 if a finished row was re-pushed / 0, locks freed).
    ring: the dead process's ring region (this caller becomes its producer); me: the
    caller's lock word (it holds every region while it recounts)."""
    t = views(arena)
    ring = unmanaged(ring)
    fixed = 0
    base = proc * t.usz
    w = base >> 3
    if t.undo64[w] == 1:
        s = t.undo64[w + 1]
        q = seq_index(t, s)
        if t.rows32[q] & 1:
            if t.undo64[w + 3] == 1:
                t.rows8[rbase(t, s):rbase(t, s) + t.body] = \
                    t.undo8[base + UNDO_ROW_AT:base + UNDO_ROW_AT + t.body]
            atomic_store(t.keys, s, np.uint64(t.undo64[w + 2]))
            atomic_store(t.rows32, q, t.rows32[q] + np.uint32(1))
            fixed = 1
        else:
            push_row(t, ring, s)
            fixed = 2
        atomic_store(t.undo64, w, 0)
    freed = 0
    for r in range(t.h[H_NREGIONS]):
        word = atomic_load(t.locks, r * LOCK_STRIDE)
        if word != 0 and (word >> 32) == pid:
            atomic_store(t.locks, r * LOCK_STRIDE, 0)
            freed += 1
    # Recount with every region held: the other writers go on (a worker died, not the
    # node), and a delta they added during an unlocked scan was lost or counted twice.
    # Writers that count under their region's lock (ul_register, table_put) are then
    # exact; a batch that publishes after unlocking (apply_entries) may still be off
    # by its own rows. A region not obtained after REPAIR_LOCK_TRIES (a stuck holder)
    # leaves the rest unlocked rather than the supervisor waiting on it.
    held = 0
    while held < t.h[H_NREGIONS]:
        tries = 0
        while tries < REPAIR_LOCK_TRIES and not lock_region(t, held, me):
            tries += 1
        if tries == REPAIR_LOCK_TRIES:
            break
        held += 1
    table_recount(arena)
    if held:
        unlock_regions(t, 0, held - 1)
    return fixed, freed


@njit(cache=True)
def table_salvage(arena):
    """Make a table whose every process is dead consistent again (a master killed with
    its children): restore or finish every row left in flight in any undo area, free
    every lock, recount. Rows finished but not pushed to a ring are left to the caller
    (it re-sends from watermarks)."""
    t = views(arena)
    for proc in range(t.h[H_NPROCS]):
        base = proc * t.usz
        w = base >> 3
        if t.undo64[w] == 1:
            s = t.undo64[w + 1]
            q = seq_index(t, s)
            if t.rows32[q] & 1:
                if t.undo64[w + 3] == 1:
                    t.rows8[rbase(t, s):rbase(t, s) + t.body] = \
                        t.undo8[base + UNDO_ROW_AT:base + UNDO_ROW_AT + t.body]
                atomic_store(t.keys, s, np.uint64(t.undo64[w + 2]))
                atomic_store(t.rows32, q, t.rows32[q] + np.uint32(1))
            atomic_store(t.undo64, w, 0)
    for r in range(t.h[H_NREGIONS]):
        atomic_store(t.locks, r * LOCK_STRIDE, 0)
    table_recount(arena)


def slot_of_position(nhome: int, position: int) -> int:
    """First home slot of a 32-bit hash-space position (group >> 32): where a sync
    resumes on any donor's table, whatever its size."""
    return (position * nhome) >> 32


def position_of_slot(nhome: int, slot: int) -> int:
    """Smallest hash-space position whose home slot is >= slot (1 << 32 past the end):
    a receiver that has every record whose home is below `slot` has every record below
    this position."""
    if slot >= nhome:
        return 1 << 32
    return -((-slot << 32) // nhome)


def lock_word(pid: int, proc: int) -> int:
    """The value a process writes into a lock word it holds."""
    return (pid << 32) | proc


def counters(buf: np.ndarray) -> dict[str, int]:
    h = buf[:HEADER_SIZE].view(np.int64)
    return {"live": int(h[H_LIVE]), "tomb": int(h[H_TOMB]), "free": int(h[H_FREE]),
            "capacity": int(h[H_CAPACITY]), "slots": int(h[H_NSLOTS])}
